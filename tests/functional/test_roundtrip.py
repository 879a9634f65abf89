"""Backup -> restore round trips across levels, every entry kind and change kind."""

import os
import random
import shutil
import stat

import pytest

from freezer_rsyncv2.engine import rsyncv2
from freezer_rsyncv2.storage import base as storage_base
from freezer_rsyncv2.storage import local
from freezer_rsyncv2.stream import compression, encoder
from tests.functional import treeutil
from tests.functional.conftest import backup, restore

IS_ROOT = os.geteuid() == 0


def rnd(n, seed=0):
    return random.Random(seed).randbytes(n)


def build_level0(src):
    treeutil.write(os.path.join(src, "big.bin"), rnd(3 << 20, 1))
    treeutil.write(os.path.join(src, "small.txt"), b"hello\n")
    treeutil.write(os.path.join(src, "empty.txt"), b"")
    treeutil.write(os.path.join(src, "dir/nested/deep.txt"), b"deep\n" * 100)
    treeutil.write(os.path.join(src, "todir"), b"I become a directory")
    treeutil.write(os.path.join(src, "tofile/child"), b"child of a dir")
    treeutil.write(os.path.join(src, "tolink/inner"), b"inner")
    treeutil.write(os.path.join(src, "rename-me.bin"), rnd(1 << 20, 2))
    treeutil.write(os.path.join(src, "shrink.bin"), rnd(200000, 3))
    treeutil.write(os.path.join(src, "grow.bin"), rnd(100000, 4))
    treeutil.write(os.path.join(src, "delete-me"), b"bye")
    treeutil.write(os.path.join(src, "chmod-me"), b"mode")
    treeutil.write(os.path.join(src, "touch-me"), b"time")
    os.makedirs(os.path.join(src, "emptydir"))
    os.makedirs(os.path.join(src, "gone-dir/sub"))
    treeutil.write(os.path.join(src, "gone-dir/sub/f"), b"f")
    os.symlink("small.txt", os.path.join(src, "rel-link"))
    os.symlink("/etc/hostname", os.path.join(src, "abs-link"))
    os.symlink("does/not/exist", os.path.join(src, "dangling"))
    os.symlink("small.txt", os.path.join(src, "retarget"))
    os.mkfifo(os.path.join(src, "fifo"))
    os.link(os.path.join(src, "big.bin"), os.path.join(src, "hard-big"))
    os.link(os.path.join(src, "small.txt"), os.path.join(src, "dir/hard-small"))
    name = os.path.join(os.fsencode(src), b"caf\xe9-\xff.bin")
    with open(name, "wb") as f:
        f.write(b"latin-1 name")
    os.setxattr(os.path.join(src, "small.txt"), "user.color", b"blue")
    os.chmod(os.path.join(src, "dir/nested"), 0o750)
    if IS_ROOT:
        os.mknod(os.path.join(src, "null"), 0o600 | stat.S_IFCHR,
                 os.makedev(1, 3))
        os.chown(os.path.join(src, "chmod-me"), 1234, 5678)


def change_level1(src):
    p = os.path.join(src, "big.bin")
    data = open(p, "rb").read()
    # insert, overwrite and append in one file (also seen through hard-big)
    data = data[:100] + b"INSERT!" + data[100:]
    data = data[:2000000] + b"X" * 1024 + data[2001024:] + b"appended"
    with open(p, "r+b") as f:
        f.write(data)
    os.rename(os.path.join(src, "rename-me.bin"),
              os.path.join(src, "renamed.bin"))
    with open(os.path.join(src, "shrink.bin"), "r+b") as f:
        f.truncate(150000)
    with open(os.path.join(src, "grow.bin"), "ab") as f:
        f.write(rnd(50000, 5))
    os.unlink(os.path.join(src, "delete-me"))
    os.chmod(os.path.join(src, "chmod-me"), 0o600)
    os.utime(os.path.join(src, "touch-me"), ns=(1, 1_600_000_000 * 10**9))
    os.unlink(os.path.join(src, "todir"))
    treeutil.write(os.path.join(src, "todir/now-inside"), b"inside")
    shutil.rmtree(os.path.join(src, "tofile"))
    treeutil.write(os.path.join(src, "tofile"), b"now a file")
    shutil.rmtree(os.path.join(src, "tolink"))
    os.symlink("dir", os.path.join(src, "tolink"))
    os.unlink(os.path.join(src, "retarget"))
    os.symlink("empty.txt", os.path.join(src, "retarget"))
    shutil.rmtree(os.path.join(src, "gone-dir"))
    treeutil.write(os.path.join(src, "new/brand-new.txt"), b"new")
    os.setxattr(os.path.join(src, "small.txt"), "user.color", b"red")


def change_level2(src):
    p = os.path.join(src, "renamed.bin")
    with open(p, "r+b") as f:
        f.seek(5000)
        f.write(b"edit after rename")
    with open(os.path.join(src, "small.txt"), "ab") as f:
        f.write(b"more\n")       # also changes dir/hard-small
    os.unlink(os.path.join(src, "hard-big"))
    os.rename(os.path.join(src, "tolink"), os.path.join(src, "tolink2"))
    os.chmod(os.path.join(src, "emptydir"), 0o700)


@pytest.mark.parametrize("codec", ["zstd"])
def test_three_levels_every_kind(make_engine, src, restore_dir, codec):
    build_level0(src)
    snaps, dates = [], []
    for change in (None, change_level1, change_level2):
        if change:
            change(src)
        engine = make_engine(compression=codec)
        level = backup(engine, src)
        snaps.append(treeutil.snapshot(src))
        dates.append(engine.storage.get_latest_level_zero_increments(
            engine=engine, hostname_backup_name="host_test")[level].timestamp)
        assert level == len(snaps) - 1
    engine = make_engine()
    for level, (snap, date) in enumerate(zip(snaps, dates)):
        dest = restore_dir()
        assert restore(engine, dest, date=date) == level
        treeutil.assert_same_tree(snap, treeutil.snapshot(dest))
    # a restore without a date gives the newest level
    dest = restore_dir()
    assert restore(engine, dest) == 2
    treeutil.assert_same_tree(snaps[-1], treeutil.snapshot(dest))
    # hardlink groups restored as hardlinks
    st1 = os.stat(os.path.join(dest, "small.txt"))
    st2 = os.stat(os.path.join(dest, "dir/hard-small"))
    assert st1.st_ino == st2.st_ino


@pytest.mark.parametrize("codec", compression.NAMES)
def test_every_compression_round_trips(make_engine, src, restore_dir, codec):
    treeutil.write(os.path.join(src, "a.bin"), rnd(300000, 9) + bytes(300000))
    treeutil.write(os.path.join(src, "b.txt"), b"text " * 1000)
    backup(make_engine(compression=codec), src)
    with open(os.path.join(src, "a.bin"), "r+b") as f:
        f.seek(1000)
        f.write(b"changed")
    backup(make_engine(compression=codec), src)
    dest = restore_dir()
    # restore reads the compression from the backup, not from its engine
    restore(make_engine(compression="none"), dest)
    treeutil.assert_same_tree(treeutil.snapshot(src), treeutil.snapshot(dest))


def test_sparse_file_keeps_its_holes(make_engine, src, restore_dir):
    p = os.path.join(src, "sparse.img")
    with open(p, "wb") as f:
        f.truncate(64 << 20)
        f.seek(10 << 20)
        f.write(rnd(100000, 11))
    engine = make_engine(compression="none")
    backup(engine, src)
    assert engine.last_summary.stored_bytes < 1 << 20
    with open(p, "r+b") as f:
        f.seek(30 << 20)
        f.write(b"more data")
    backup(make_engine(compression="none"), src)
    dest = restore_dir()
    restore(make_engine(), dest)
    treeutil.assert_same_tree(treeutil.snapshot(src), treeutil.snapshot(dest))
    st = os.stat(os.path.join(dest, "sparse.img"))
    assert st.st_blocks * 512 < 8 << 20


def test_single_file_source(make_engine, tmp_path, restore_dir):
    f = tmp_path / "alone.bin"
    f.write_bytes(rnd(100000, 12))
    backup(make_engine(), str(f))
    dest = restore_dir()
    restore(make_engine(), dest)
    assert open(os.path.join(dest, "alone.bin"), "rb").read() == \
        f.read_bytes()


def test_empty_source_directory(make_engine, src, restore_dir):
    backup(make_engine(), src)
    backup(make_engine(), src)
    dest = restore_dir()
    assert restore(make_engine(), dest) == 1
    assert os.listdir(dest) == []


def test_excludes(make_engine, src, restore_dir):
    treeutil.write(os.path.join(src, "keep.txt"), b"k")
    treeutil.write(os.path.join(src, "skip.log"), b"s")
    treeutil.write(os.path.join(src, "cache/x"), b"x")
    backup(make_engine(exclude="*.log,cache"), src)
    dest = restore_dir()
    restore(make_engine(), dest)
    assert sorted(os.listdir(dest)) == ["keep.txt"]


def test_dereference_symlinks(make_engine, src, tmp_path, restore_dir):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"pointed to")
    os.symlink(str(outside), os.path.join(src, "link"))
    backup(make_engine(symlinks="soft"), src)
    dest = restore_dir()
    restore(make_engine(), dest)
    p = os.path.join(dest, "link")
    assert not os.path.islink(p)
    assert open(p, "rb").read() == b"pointed to"


def test_dereferenced_links_follow_their_targets_across_levels(make_engine, src, tmp_path, restore_dir):
    """What a followed link points to is what the quick check compares: a changed
    target, a link moved to another target, an unchanged one."""
    first, second, still = (tmp_path / n for n in ("first.txt", "second.txt", "still.txt"))
    first.write_bytes(b"one")
    second.write_bytes(b"two, longer")
    still.write_bytes(b"same")
    os.symlink(str(first), os.path.join(src, "moves"))
    os.symlink(str(still), os.path.join(src, "stays"))
    os.symlink(str(second), os.path.join(src, "edited"))
    backup(make_engine(symlinks="soft"), src)
    os.remove(os.path.join(src, "moves"))
    os.symlink(str(second), os.path.join(src, "moves"))
    os.utime(second, ns=(10**18, 10**18))
    with open(second, "r+b") as f:
        f.write(b"TWO")                       # same size
    os.utime(second, ns=(10**18, 10**18))     # and the same mtime: its ctime tells
    engine = make_engine(symlinks="soft")
    assert backup(engine, src) == 1
    assert engine.last_summary.files_unchanged == 1
    dest = restore_dir()
    restore(make_engine(), dest)
    assert {n: open(os.path.join(dest, n), "rb").read() for n in os.listdir(dest)} == {
        "moves": b"TWO, longer", "stays": b"same", "edited": b"TWO, longer"}


@pytest.mark.skipif(not IS_ROOT, reason="ownership needs root")
def test_ownership_by_name_and_number(make_engine, src, restore_dir):
    treeutil.write(os.path.join(src, "numeric"), b"n")
    os.chown(os.path.join(src, "numeric"), 4242, 4343)
    treeutil.write(os.path.join(src, "named"), b"n")
    os.chown(os.path.join(src, "named"), 0, 0)
    backup(make_engine(), src)
    dest = restore_dir()
    restore(make_engine(), dest)
    st = os.stat(os.path.join(dest, "numeric"))
    assert (st.st_uid, st.st_gid) == (4242, 4343)
    st = os.stat(os.path.join(dest, "named"))
    assert (st.st_uid, st.st_gid) == (0, 0)


def test_dereference_hard_stores_hardlinks_as_copies(make_engine, src,
                                                     restore_dir):
    treeutil.write(os.path.join(src, "a"), b"shared")
    os.link(os.path.join(src, "a"), os.path.join(src, "b"))
    backup(make_engine(symlinks="hard"), src)
    dest = restore_dir()
    restore(make_engine(), dest)
    sa = os.stat(os.path.join(dest, "a"))
    sb = os.stat(os.path.join(dest, "b"))
    assert sa.st_ino != sb.st_ino
    assert open(os.path.join(dest, "b"), "rb").read() == b"shared"


class _RecordingStorage(local.LocalStorage):
    """A local storage that notes the type of every segment it is given."""

    def __init__(self, *args, takes_segments, **kwargs):
        super().__init__(*args, **kwargs)
        if not takes_segments:
            self.message_form = encoder.BYTES
        self.kinds = set()
        self.sizes = []

    def write_backup(self, rich_queue, backup):
        kinds, sizes = self.kinds, self.sizes

        class Spy:
            def get_messages(self):
                for message in rich_queue.get_messages():
                    kinds.add(type(message))
                    sizes.append(len(message))
                    yield message

            def force_stop(self):
                rich_queue.force_stop()
        super().write_backup(Spy(), backup)


@pytest.mark.parametrize("takes", [True, False])
def test_segments_are_bytes_for_storages_that_need_them(tmp_path, src,
                                                        restore_dir, takes):
    """Freezer's S3 storage skips any segment that is not bytes."""
    treeutil.write(os.path.join(src, "f"), os.urandom(3 << 20))
    storage = _RecordingStorage(str(tmp_path / "c"), 1 << 20,
                                takes_segments=takes)
    engine = rsyncv2.Rsyncv2Engine(storage=storage, compression="none",
                                   max_segment_size=1 << 20)
    backup(engine, src)
    assert storage.kinds == ({encoder.Segment} if takes else {bytes})
    dest = restore_dir()
    restore(engine, dest)
    treeutil.assert_same_tree(treeutil.snapshot(src), treeutil.snapshot(dest))


def test_our_storages_get_small_segments_freezers_the_full_size(
        tmp_path, src, monkeypatch):
    """Segment size bounds the backup's memory; Freezer's storages store
    each segment as an object or part, so they get max_segment_size."""
    monkeypatch.setattr(storage_base, "IO_BLOCK", 256 << 10)
    treeutil.write(os.path.join(src, "f"), os.urandom(3 << 20))
    ours = _RecordingStorage(str(tmp_path / "a"), 1 << 20,
                             takes_segments=True)
    backup(rsyncv2.Rsyncv2Engine(storage=ours, compression="none",
                                 max_segment_size=1 << 20), src)
    assert max(ours.sizes) == 256 << 10

    class FreezerLike(_RecordingStorage):
        io_block_size = property(lambda self: 1 << 40)  # not ours
    theirs = FreezerLike(str(tmp_path / "b"), 1 << 20, takes_segments=False)
    backup(rsyncv2.Rsyncv2Engine(storage=theirs, compression="none",
                                 max_segment_size=1 << 20), src)
    assert max(theirs.sizes) == 1 << 20
