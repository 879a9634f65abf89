"""A restore of a long chain writes each big file once and patches it in place."""

from __future__ import annotations

import hashlib
import os
import random
import types

import pytest

from freezer_rsyncv2 import errors
from freezer_rsyncv2.engine import rsyncv2
from freezer_rsyncv2.fs import regular
from freezer_rsyncv2.fs.filedata import TMP_PREFIX
from freezer_rsyncv2.stream import records
from tests.functional import treeutil
from tests.functional.conftest import backup, restore
from tests.hostile import streamkit as sk

STAGE = 256 << 10


@pytest.fixture(autouse=True)
def small_stage(monkeypatch):
    monkeypatch.setattr(regular, "STAGE_MIN", STAGE)


@pytest.fixture
def in_place(monkeypatch):
    """Counts the in-place patches restores make."""
    calls = []
    real = regular.RegularFiles.patch_in_place

    def counting(self, entry, *args):
        calls.append(entry.path)
        return real(self, entry, *args)
    monkeypatch.setattr(regular.RegularFiles, "patch_in_place", counting)
    return calls


def leftovers(root: str) -> list[str]:
    return [f for _d, _s, files in os.walk(root) for f in files
            if f.encode().startswith(TMP_PREFIX)]


def test_chain_of_in_place_edits(make_engine, src, restore_dir, clock,
                                 in_place):
    rng = random.Random(7)
    data = bytearray(rng.randbytes(4 * STAGE))
    path = os.path.join(src, "disk.img")
    treeutil.write(path, bytes(data))
    treeutil.write(os.path.join(src, "small"), b"small file")
    backup(make_engine(compression="none"), src)
    states, stamps = [treeutil.snapshot(src)], [clock.last]
    for level in range(1, 5):
        for _ in range(5):
            at = rng.randrange(len(data) - 100)
            data[at:at + 100] = rng.randbytes(100)
        treeutil.write(path, bytes(data))
        assert backup(make_engine(compression="none"), src) == level
        states.append(treeutil.snapshot(src))
        stamps.append(clock.last)
    dest = restore_dir()
    assert restore(make_engine(), dest) == 4
    treeutil.assert_same_tree(states[-1], treeutil.snapshot(dest))
    assert in_place == [b"disk.img"] * 4
    assert leftovers(dest) == []
    # an older point of the chain restores the same way
    dest = restore_dir()
    assert restore(make_engine(), dest, date=stamps[2]) == 2
    treeutil.assert_same_tree(states[2], treeutil.snapshot(dest))


def test_moved_data_and_rename_in_a_chain(make_engine, src, restore_dir,
                                          in_place):
    rng = random.Random(8)
    data = rng.randbytes(3 * STAGE)
    treeutil.write(os.path.join(src, "a.bin"), data)
    backup(make_engine(compression="none"), src)
    data = data[:5000] + b"inserted" + data[5000:]          # level 1: moved
    treeutil.write(os.path.join(src, "a.bin"), data)
    backup(make_engine(compression="none"), src)
    os.rename(os.path.join(src, "a.bin"), os.path.join(src, "b.bin"))
    backup(make_engine(compression="none"), src)            # level 2: rename
    data = b"X" + data[1:]
    treeutil.write(os.path.join(src, "b.bin"), data)       # level 3: in place
    backup(make_engine(compression="none"), src)
    dest = restore_dir()
    assert restore(make_engine(), dest) == 3
    treeutil.assert_same_tree(treeutil.snapshot(src), treeutil.snapshot(dest))
    assert in_place == [b"b.bin"]
    assert leftovers(dest) == []


def _restore_crafted(dest: str, levels: list[bytes]) -> None:
    """Restore crafted level streams as one restore (one session)."""
    engine = rsyncv2.Rsyncv2Engine()
    with engine.restore_session(dest):
        for level, stream in enumerate(levels):
            backup_ = types.SimpleNamespace(level=level,
                                            hostname_backup_name="crafted")
            engine.restore_level(dest, sk.FakePipe(stream), backup_)


def _in_place_level(path: bytes, old: bytes, digest: bytes) -> bytes:
    """Level 1: overwrite the first block of ``path`` in place."""
    block = 4096
    new_first = b"N" * block
    return sk.encode([
        sk.entry(path, "f", s=len(old), data="delta", bl=block, bs=len(old)),
        [records.LITERAL, new_first],
        [records.COPY, 1, len(old) // block - 1],
        [records.END_FILE, len(old), digest]], level=1)


def test_tampered_in_place_level_keeps_the_old_file(tmp_path):
    dest = str(tmp_path / "out")
    os.makedirs(dest)
    treeutil.write(os.path.join(dest, "big"), b"the file that was here")
    old = os.urandom(2 * STAGE)
    levels = [sk.encode(sk.file_records(b"big", old)),
              _in_place_level(b"big", old, hashlib.sha256(b"lie").digest())]
    with pytest.raises(errors.IntegrityError,
                       match="digest mismatch after level 1 patched it"):
        _restore_crafted(dest, levels)
    with open(os.path.join(dest, "big"), "rb") as f:
        assert f.read() == b"the file that was here"
    assert leftovers(dest) == []


def test_honest_in_place_level(tmp_path, in_place):
    dest = str(tmp_path / "out")
    old = os.urandom(2 * STAGE)
    new = b"N" * 4096 + old[4096:]
    levels = [sk.encode(sk.file_records(b"big", old)),
              _in_place_level(b"big", old, hashlib.sha256(new).digest())]
    _restore_crafted(dest, levels)
    with open(os.path.join(dest, "big"), "rb") as f:
        assert f.read() == new
    assert in_place == [b"big"]


def test_truncated_level_after_staging_leaves_nothing_half_written(tmp_path):
    dest = str(tmp_path / "out")
    old = os.urandom(2 * STAGE)
    new = b"N" * 4096 + old[4096:]
    level1 = _in_place_level(b"big", old, hashlib.sha256(new).digest())
    levels = [sk.encode(sk.file_records(b"big", old)), level1[:-40]]
    with pytest.raises(errors.Rsyncv2Error, match="level 1"):
        _restore_crafted(dest, levels)
    assert os.listdir(dest) == []
