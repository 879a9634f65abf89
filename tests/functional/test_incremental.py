"""What incremental levels store and read: sizes, renames, quick check, levels."""

import os
import random

import pytest

from freezer_rsyncv2 import errors
from freezer_rsyncv2.engine import backup_pass, file_reader
from tests.functional import treeutil
from tests.functional.conftest import backup, restore
from tests.unprivileged import run_unprivileged


def rnd(n, seed=0):
    return random.Random(seed).randbytes(n)


def test_insert_near_start_of_64mib_file_stores_under_1_percent(
        make_engine, src, restore_dir):
    p = os.path.join(src, "big.bin")
    data = rnd(64 << 20, 1)
    treeutil.write(p, data)
    backup(make_engine(compression="none"), src)
    treeutil.write(p, data[:100] + b"1234567" + data[100:])
    engine = make_engine(compression="none")
    assert backup(engine, src) == 1
    size = treeutil.stored_bytes(make_engine.container, 1)
    assert size < 0.01 * len(data), size
    assert engine.last_summary.literal_bytes < 64 * 1024
    dest = restore_dir()
    restore(make_engine(), dest)
    treeutil.assert_same_tree(treeutil.snapshot(src), treeutil.snapshot(dest))


def test_rename_of_20mib_file_stores_under_1_percent(make_engine, src,
                                                     restore_dir):
    data = rnd(20 << 20, 2)
    treeutil.write(os.path.join(src, "a/old-name.bin"), data)
    backup(make_engine(compression="none"), src)
    os.makedirs(os.path.join(src, "b"))
    os.rename(os.path.join(src, "a/old-name.bin"),
              os.path.join(src, "b/new-name.bin"))
    engine = make_engine(compression="none")
    backup(engine, src)
    size = treeutil.stored_bytes(make_engine.container, 1)
    assert size < 0.01 * len(data), size
    assert engine.last_summary.literal_bytes == 0
    dest = restore_dir()
    restore(make_engine(), dest)
    treeutil.assert_same_tree(treeutil.snapshot(src), treeutil.snapshot(dest))


def test_rename_with_edit_and_directory_rename(make_engine, src, restore_dir):
    treeutil.write(os.path.join(src, "olddir/x.bin"), rnd(300000, 3))
    treeutil.write(os.path.join(src, "olddir/y.bin"), rnd(300000, 4))
    backup(make_engine(compression="none"), src)
    os.rename(os.path.join(src, "olddir"), os.path.join(src, "newdir"))
    with open(os.path.join(src, "newdir/x.bin"), "r+b") as f:
        f.seek(1000)
        f.write(b"edited")
    engine = make_engine(compression="none")
    backup(engine, src)
    assert engine.last_summary.literal_bytes < 5000
    dest = restore_dir()
    restore(make_engine(), dest)
    treeutil.assert_same_tree(treeutil.snapshot(src), treeutil.snapshot(dest))


def test_a_renamed_tree_is_matched_in_batches(make_engine, src, restore_dir, monkeypatch):
    """Rename bases are looked up a few files at a time: every one is still found."""
    for i in range(7):
        treeutil.write(os.path.join(src, "old", "f%d.bin" % i), rnd(100000, 10 + i))
    backup(make_engine(compression="none"), src)
    os.rename(os.path.join(src, "old"), os.path.join(src, "new"))
    monkeypatch.setattr(backup_pass, "RENAME_BATCH", 2)
    lookups = []
    real = backup_pass.BackupPass._rename_batches

    def counted(self):
        for batch in real(self):
            lookups.append(len(batch))
            yield batch
    monkeypatch.setattr(backup_pass.BackupPass, "_rename_batches", counted)
    engine = make_engine(compression="none")
    backup(engine, src)
    assert lookups == [2, 2, 2, 1]
    assert engine.last_summary.literal_bytes == 0
    assert engine.last_summary.copied_bytes == 7 * 100000
    dest = restore_dir()
    restore(make_engine(), dest)
    treeutil.assert_same_tree(treeutil.snapshot(src), treeutil.snapshot(dest))


def test_renames_past_the_table_of_deleted_files_are_stored_whole(make_engine, src, restore_dir,
                                                                  monkeypatch, caplog):
    """A level remembers at most RENAME_TRACK_MAX deleted files as rename sources: the
    rest are sent whole, and the restore is the same."""
    for i in range(3):
        treeutil.write(os.path.join(src, "old", "f%d.bin" % i), rnd(100000, 20 + i))
    backup(make_engine(compression="none"), src)
    os.rename(os.path.join(src, "old"), os.path.join(src, "new"))
    monkeypatch.setattr(backup_pass, "RENAME_TRACK_MAX", 2)
    engine = make_engine(compression="none")
    with caplog.at_level("INFO"):
        backup(engine, src)
    assert engine.last_summary.copied_bytes == 2 * 100000
    assert engine.last_summary.literal_bytes == 100000
    assert sum("more than 2 deleted files" in r.getMessage() for r in caplog.records) == 1
    dest = restore_dir()
    restore(make_engine(), dest)
    treeutil.assert_same_tree(treeutil.snapshot(src), treeutil.snapshot(dest))


@pytest.fixture
def many_files(src):
    for i in range(10000):
        treeutil.write(os.path.join(src, "d%02d" % (i % 50), "f%05d" % i),
                       b"small file %d\n" % i)
    treeutil.write(os.path.join(src, "ten-k.txt"), rnd(10240, 5))
    return src


def test_10000_files_one_change_stores_under_64kib(
        make_engine, many_files, restore_dir):
    src = many_files
    backup(make_engine(), src)
    p = os.path.join(src, "ten-k.txt")
    data = bytearray(open(p, "rb").read())
    data[5000:5010] = b"0123456789"
    treeutil.write(p, bytes(data))
    engine = make_engine()
    backup(engine, src)
    assert engine.last_summary.files_changed == 1
    assert engine.last_summary.files_unchanged == 10000
    assert treeutil.stored_bytes(make_engine.container, 1) < 64 * 1024
    dest = restore_dir()
    restore(make_engine(), dest)
    treeutil.assert_same_tree(treeutil.snapshot(src), treeutil.snapshot(dest))


def test_level_without_change_reads_no_content(make_engine, many_files,
                                               monkeypatch):
    backup(make_engine(), many_files)

    def no_reads(*args, **kwargs):
        raise AssertionError("file content was read")
    monkeypatch.setattr(file_reader, "read_range", no_reads)
    engine = make_engine()
    backup(engine, many_files)
    assert engine.last_summary.bytes_read == 0
    assert engine.last_summary.files_unchanged == 10001
    assert treeutil.stored_bytes(make_engine.container, 1) < 4096


def test_touched_but_unchanged_file_stores_metadata_only(make_engine, src,
                                                         restore_dir):
    p = os.path.join(src, "f.bin")
    treeutil.write(p, rnd(500000, 6))
    backup(make_engine(compression="none"), src)
    os.utime(p, ns=(1, 1_500_000_000 * 10**9))
    engine = make_engine(compression="none")
    backup(engine, src)
    assert engine.last_summary.files_meta == 1
    assert treeutil.stored_bytes(make_engine.container, 1) < 2048
    dest = restore_dir()
    restore(make_engine(), dest)
    treeutil.assert_same_tree(treeutil.snapshot(src), treeutil.snapshot(dest))


def test_restore_from_date_picks_the_right_level(make_engine, src,
                                                 restore_dir, clock):
    p = os.path.join(src, "f.txt")
    stamps, contents = [], []
    for i in range(4):
        treeutil.write(p, b"version %d" % i, mtime_ns=(i + 1) * 10**18)
        backup(make_engine(), src)
        stamps.append(clock.last)
        contents.append(b"version %d" % i)
    engine = make_engine()
    for i, ts in enumerate(stamps):
        for date in (ts, ts + 50):
            dest = restore_dir()
            assert restore(engine, dest, date=date) == i
            assert open(os.path.join(dest, "f.txt"), "rb").read() == \
                contents[i]
    with pytest.raises(errors.BackupNotFoundError):
        restore(engine, restore_dir(), date=stamps[0] - 1)


def test_max_level_starts_a_new_chain(make_engine, src):
    treeutil.write(os.path.join(src, "f"), b"x")
    levels = [backup(make_engine(), src, max_level=2) for _ in range(5)]
    assert levels == [0, 1, 2, 0, 1]   # as freezer-agent: max_level is the top


def test_always_level_and_no_incremental(make_engine, src):
    treeutil.write(os.path.join(src, "f"), b"x")
    assert backup(make_engine(), src, always_level=1) == 0
    assert backup(make_engine(), src, always_level=1) == 1
    assert backup(make_engine(), src, always_level=1) == 1
    assert backup(make_engine(), src, incremental=False) == 0


def test_restart_always_level_expires(make_engine, src, clock):
    treeutil.write(os.path.join(src, "f"), b"x")
    assert backup(make_engine(), src, restart_always_level=1) == 0
    assert backup(make_engine(), src, restart_always_level=1) == 1
    for _ in range(900):        # 900 ticks of 100 s: more than a day
        clock()
    assert backup(make_engine(), src, restart_always_level=1) == 0


def test_failed_backup_leaves_no_visible_level(make_engine, src,
                                               restore_dir, monkeypatch):
    treeutil.write(os.path.join(src, "f"), b"first")
    backup(make_engine(), src)
    treeutil.write(os.path.join(src, "f"), b"second", mtime_ns=5 * 10**18)

    def boom(self, *args, **kwargs):
        raise OSError(28, "No space left on device")
    engine = make_engine()
    monkeypatch.setattr(type(engine.storage), "write_backup", boom)
    with pytest.raises(OSError):
        backup(engine, src)
    monkeypatch.undo()
    engine = make_engine()
    chains = engine.storage.get_latest_level_zero_increments(
        engine=engine, hostname_backup_name="host_test")
    assert sorted(chains) == [0]
    assert backup(make_engine(), src) == 1
    dest = restore_dir()
    restore(make_engine(), dest)
    assert open(os.path.join(dest, "f"), "rb").read() == b"second"


@pytest.mark.parametrize("how", ["shrink", "grow", "vanish", "rewrite"])
def test_file_changing_while_read(make_engine, src, restore_dir, monkeypatch,
                                  how):
    p = os.path.join(src, "moving.bin")
    treeutil.write(p, rnd(3 << 20, 7))
    treeutil.write(os.path.join(src, "steady.txt"), b"steady")
    original = file_reader.read_range
    done = []

    def racing(fd, offset, length, step, path, warn):
        for i, chunk in enumerate(original(fd, offset, length, step, path,
                                           warn)):
            yield chunk
            if i == 0 and not done and path == b"moving.bin":
                done.append(True)
                if how == "shrink":
                    os.truncate(p, 1 << 20)
                elif how == "grow":
                    with open(p, "ab") as f:
                        f.write(rnd(1 << 20, 8))
                elif how == "vanish":
                    os.unlink(p)
                else:
                    with open(p, "r+b") as f:
                        f.seek(2 << 20)
                        f.write(b"Z" * 4096)
    monkeypatch.setattr(file_reader, "read_range", racing)
    engine = make_engine()
    backup(engine, src)
    summary = engine.last_summary
    if how in ("shrink", "grow", "rewrite"):
        assert summary.partial and summary.warnings[0].path == b"moving.bin"
    monkeypatch.undo()
    dest = restore_dir()
    restore(make_engine(), dest)   # digests check out: consistent content
    assert open(os.path.join(dest, "steady.txt"), "rb").read() == b"steady"
    # the next level reads the file again and gets its final state
    backup(make_engine(), src)
    dest = restore_dir()
    restore(make_engine(), dest)
    treeutil.assert_same_tree(treeutil.snapshot(src), treeutil.snapshot(dest))


def test_unreadable_file_is_skipped_with_a_warning(make_engine, src,
                                                   restore_dir):
    treeutil.write(os.path.join(src, "secret"), b"no")
    os.link(os.path.join(src, "secret"), os.path.join(src, "secret-link"))
    treeutil.write(os.path.join(src, "open"), b"yes")
    os.chmod(os.path.join(src, "secret"), 0)

    def unprivileged_backup():
        engine = make_engine()
        backup(engine, src)
        return engine.last_summary.partial, engine.last_summary.warnings

    # As root too: the backup runs without root's permission override.
    partial, warnings = run_unprivileged(unprivileged_backup)
    assert partial
    assert any(w.path == b"secret" and "Permission denied" in w.message
               for w in warnings), warnings
    dest = restore_dir()
    restore(make_engine(), dest)
    assert sorted(os.listdir(dest)) == ["open"]


def test_unopenable_file_is_skipped_with_a_warning(make_engine, src,
                                                   restore_dir, monkeypatch):
    treeutil.write(os.path.join(src, "secret"), b"no")
    os.link(os.path.join(src, "secret"), os.path.join(src, "secret-link"))
    treeutil.write(os.path.join(src, "open"), b"yes")
    real_open = os.open

    def deny(path, flags, *args, **kwargs):
        if os.fsencode(path).endswith(b"/secret"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(file_reader.os, "open", deny)
    engine = make_engine()
    backup(engine, src)
    monkeypatch.undo()
    assert engine.last_summary.partial
    assert any(w.path == b"secret" for w in engine.last_summary.warnings)
    dest = restore_dir()
    restore(make_engine(), dest)
    assert sorted(os.listdir(dest)) == ["open"]


def test_always_level_restores_the_newest_duplicate(make_engine, src,
                                                    restore_dir, monkeypatch):
    p = os.path.join(src, "f")
    for i in range(4):
        treeutil.write(p, b"version %d" % i, mtime_ns=(i + 1) * 10**18)
        backup(make_engine(), src, always_level=1)
    engine = make_engine()
    # a storage that lists the level-1 entries oldest last (as Freezer's may)
    real_increments = type(engine.storage).get_latest_level_zero_increments

    def oldest_wins(self, **kw):
        chain = real_increments(self, **kw)
        names = sorted(self.listdir(chain[1].increments_metadata_path))
        first = [n for n in names if n.startswith("1_")][0]
        chain[1] = type(chain[1])(
            engine=chain[1].engine,
            hostname_backup_name=chain[1].hostname_backup_name,
            level_zero_timestamp=chain[1].level_zero_timestamp,
            timestamp=int(first.split("_")[1]), level=1, storage=self)
        return chain
    monkeypatch.setattr(type(engine.storage),
                        "get_latest_level_zero_increments", oldest_wins)
    dest = restore_dir()
    restore(engine, dest)
    assert open(os.path.join(dest, "f"), "rb").read() == b"version 3"
