"""Small files carry no block signature: unchanged ones stay unchanged, changed ones go whole."""

import os

import pytest

from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2.engine import backup_pass, file_reader
from freezer_rsyncv2.stream import entrymap, records
from tests.functional import treeutil
from tests.functional.conftest import backup, restore


def _manifest_records(container, level):
    for root, _dirs, files in os.walk(os.path.join(container, "data")):
        if os.path.basename(root).startswith(f"{level}_"):
            return {r[1].path: r[2] for r in mf.read(os.path.join(root, "engine_metadata"))
                    if r[0] == records.MANIFEST}
    raise AssertionError(f"no level {level}")


def test_small_files_across_levels(make_engine, src, restore_dir):
    small, big = os.path.join(src, "small.txt"), os.path.join(src, "big.bin")
    treeutil.write(small, b"s" * (file_reader.SIGNED_MIN - 1))
    treeutil.write(big, os.urandom(file_reader.SIGNED_MIN * 4))
    backup(make_engine(), src)
    zero = _manifest_records(make_engine.container, 0)
    assert zero[b"small.txt"]["sg"] == entrymap.SIG_NONE and zero[b"big.bin"]["sg"] == entrymap.SIG_FULL
    # Unchanged: no record at all; touched: a change entry; rewritten: whole.
    engine = make_engine()
    backup(engine, src)
    assert engine.last_summary.files_unchanged == 2
    os.utime(small, ns=(1, 2_000_000_000_000_000_000))
    engine = make_engine()
    backup(engine, src)
    assert engine.last_summary.files_meta == 1 and engine.last_summary.literal_bytes == 0
    two = _manifest_records(make_engine.container, 2)[b"small.txt"]
    assert {"p", "k", "mt"} <= two["dm"] and "sg" not in two and "dg" not in two
    with open(small, "r+b") as f:
        f.write(b"edited")
    engine = make_engine()
    backup(engine, src)
    three = _manifest_records(make_engine.container, 3)[b"small.txt"]
    assert three["sg"] == entrymap.SIG_NONE and three["da"] == entrymap.DATA_FULL
    assert engine.last_summary.files_changed == 1
    dest = restore_dir()
    restore(make_engine(), dest)
    assert treeutil.snapshot(dest) == treeutil.snapshot(src)


@pytest.mark.parametrize("how", ["shrink", "grow", "unreadable"])
def test_a_small_file_changing_or_failing_while_read(make_engine, src, restore_dir, monkeypatch, how):
    p = os.path.join(src, "small.txt")
    treeutil.write(p, b"0123456789" * 100)
    treeutil.write(os.path.join(src, "steady.txt"), b"steady")
    original = file_reader.read_range

    def racing(fd, offset, length, step, path, warn):
        if path != b"small.txt":
            yield from original(fd, offset, length, step, path, warn)
            return
        if how == "unreadable":
            warn(path, "read error at byte 0: Input/output error")
            return
        yield from original(fd, offset, length, step, path, warn)
        if how == "shrink":
            os.truncate(p, 10)
        else:
            with open(p, "ab") as f:
                f.write(b"more")
    monkeypatch.setattr(file_reader, "read_range", racing)
    engine = make_engine()
    backup(engine, src)
    assert engine.last_summary.partial and engine.last_summary.warnings[0].path == b"small.txt"
    monkeypatch.undo()
    restore(make_engine(), restore_dir())       # what was read is consistent with its digest
    # the next level reads the file again (its stored mtime is -1) and gets its final state
    backup(make_engine(), src)
    dest = restore_dir()
    restore(make_engine(), dest)
    assert treeutil.snapshot(dest) == treeutil.snapshot(src)


def test_held_files_and_deletions_spill_to_disk(make_engine, src, restore_dir, monkeypatch):
    """Past SPILL_AFTER, the level's possible renames and deletions wait in temporary files."""
    monkeypatch.setattr(backup_pass, "SPILL_AFTER", 2)
    for i in range(7):
        treeutil.write(os.path.join(src, f"old/{i}.bin"), os.urandom(backup_pass.RENAME_MIN + i))
        treeutil.write(os.path.join(src, f"gone/{i}.txt"), b"deleted at level 1")
        treeutil.write(os.path.join(src, f"keep/{i}.txt"), b"kept")
    backup(make_engine(), src)
    for i in range(7):
        os.rename(os.path.join(src, f"old/{i}.bin"), os.path.join(src, f"keep/moved-{i}.bin"))
        os.remove(os.path.join(src, f"gone/{i}.txt"))
    os.utime(os.path.join(src, "keep"), ns=(1, 1_700_000_000 * 10**9))
    engine = make_engine()
    backup(engine, src)
    assert engine.last_summary.literal_bytes == 0       # seven renames, found through the spilled list
    dest = restore_dir()
    restore(make_engine(), dest)
    assert treeutil.snapshot(dest) == treeutil.snapshot(src)


def test_a_spilled_list_reads_back_in_order(monkeypatch):
    monkeypatch.setattr(backup_pass, "SPILL_AFTER", 3)
    items = backup_pass.Spilled(bytes, bytes)
    for i in range(10):
        items.append(b"p%d" % i)
    assert len(items) == 10
    assert list(items) == list(items) == [b"p%d" % i for i in range(10)]
    items.close()
