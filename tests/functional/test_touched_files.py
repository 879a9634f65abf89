"""A level of many touched files (new inode and mtime, the content below), with the digest helper.

The helper reads and hashes them in a process of its own, ahead of the pass;
what the level stores and what a restore gives must be exactly what the pass
alone stores and gives.
"""

import os
import shutil
import time

import pytest

from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2.engine import digest_helper, file_reader
from freezer_rsyncv2.stream import records
from tests.functional import treeutil
from tests.functional.conftest import backup, restore

FILES = 600
EDITED = {7, 300, 599}


def _write_tree(root, edited=()):
    for i in range(FILES):
        path = os.path.join(root, f"d{i % 7}", f"f{i:04d}.txt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        body = (b"line %d of file %d\n" % (i, i)) * (1 + i % 400)      # 20 B to 10 KB
        if i in edited:
            body = body[:len(body) // 2] + b"an edit\n" + body[len(body) // 2:]
        with open(path, "wb") as f:
            f.write(body)


def _touch_all(root, ns):
    for top, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            os.utime(os.path.join(top, name), ns=(ns, ns))
        os.utime(top, ns=(ns, ns))


def _manifest_maps(container, level):
    for top, _dirs, _files in os.walk(os.path.join(container, "data")):
        if os.path.basename(top).startswith(f"{level}_"):
            maps = {}
            for rec in mf.read(os.path.join(top, "engine_metadata")):
                if rec[0] == records.MANIFEST:
                    e, extra = rec[1], dict(rec[2])
                    extra.pop("o", None)        # where its records start: the data streams differ
                    if "dm" in extra:           # an inode number is reused or not, by chance
                        extra["dm"] = extra["dm"] - {"i"}
                    maps[e.path] = (e.kind, e.size, e.mtime_ns, e.mode, extra)
            return maps
    raise AssertionError(f"no level {level}")


def _two_levels(make_engine, src, counted):
    """Level 0 of the tree, then level 1 of a copy of it (every inode new) with three files edited."""
    _write_tree(src)
    _touch_all(src, 1_600_000_000 * 10**9)
    backup(make_engine(), src)
    shutil.rmtree(src)
    _write_tree(src, EDITED)
    _touch_all(src, 1_700_000_000 * 10**9)
    engine = make_engine()
    backup(engine, src)
    return engine.last_summary, counted


@pytest.fixture
def counted(monkeypatch):
    """The helper's answers used by the pass, counted; the pass waits for each (it never does
    otherwise: this level is over before the helper's process is up)."""
    real_answer = digest_helper.DigestHelper.answer

    def waited(self, ticket):
        deadline = time.monotonic() + 20
        while ticket is not None and self._proc is not None and not self._stopped \
                and not (self._answers and self._answers[-1][0] >= ticket) and time.monotonic() < deadline:
            self._send()
            self._receive()
            time.sleep(0.001)
        return real_answer(self, ticket)
    monkeypatch.setattr(digest_helper.DigestHelper, "answer", waited)
    used = []
    real = file_reader.FileReader.touched

    def touched(self, *args):
        found = real(self, *args)
        used.append(found is not None)
        return found
    monkeypatch.setattr(file_reader.FileReader, "touched", touched)
    return used


@pytest.mark.parametrize("helper", [True, False])
def test_a_level_of_touched_files(make_engine, src, restore_dir, monkeypatch, counted, helper):
    monkeypatch.setattr(digest_helper, "START_AFTER", 1 if helper else FILES * 2)
    monkeypatch.setattr(digest_helper, "SEND_BYTES", 1)
    summary, used = _two_levels(make_engine, src, counted)
    assert summary.files_meta == FILES - len(EDITED) and summary.files_changed == len(EDITED)
    assert summary.files_new == 0 and not summary.warnings
    assert summary.bytes_read == treeutil_bytes(src)
    if helper:
        assert sum(used) > FILES // 2       # answers came before the pass needed them
    else:
        assert not any(used)
    dest = restore_dir()
    restore(make_engine(), dest)
    assert treeutil.snapshot(dest) == treeutil.snapshot(src)


def test_the_helper_changes_nothing_stored(tmp_path, monkeypatch, counted, clock):
    """The same level with and without the helper: the same manifest entries."""
    from freezer_rsyncv2.engine import rsyncv2
    from freezer_rsyncv2.storage import local
    maps = {}
    for helper in (True, False):
        monkeypatch.setattr(digest_helper, "START_AFTER", 1 if helper else FILES * 2)
        monkeypatch.setattr(digest_helper, "SEND_BYTES", 1)
        container, src = str(tmp_path / f"c{helper}"), str(tmp_path / f"src{helper}")

        def make_engine():
            return rsyncv2.Rsyncv2Engine(storage=local.LocalStorage(container, 1 << 20), compression="zstd")
        make_engine.container = container
        _two_levels(make_engine, src, counted)
        maps[helper] = _manifest_maps(container, 1)
    assert maps[True] == maps[False] and len(maps[True]) == FILES + 7


def treeutil_bytes(root):
    return sum(os.path.getsize(os.path.join(top, name)) for top, _d, files in os.walk(root) for name in files)


def test_a_touched_file_the_helper_answers_is_decided_from_its_map(make_engine, src, monkeypatch, counted):
    """Only the edited files' entries below are checked and built: their signatures are the deltas' bases."""
    monkeypatch.setattr(digest_helper, "START_AFTER", 1)
    monkeypatch.setattr(digest_helper, "SEND_BYTES", 1)
    resolved = []
    real = mf.Prior.resolve

    def resolve(self):
        resolved.append(self.path)
        return real(self)
    monkeypatch.setattr(mf.Prior, "resolve", resolve)
    summary, used = _two_levels(make_engine, src, counted)
    assert summary.files_meta == FILES - len(EDITED) and sum(used) == FILES - len(EDITED)
    assert set(resolved) == {f"d{i % 7}/f{i:04d}.txt".encode() for i in EDITED}
