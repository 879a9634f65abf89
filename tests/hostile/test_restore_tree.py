"""Hostile storage, round 2: shared inodes in an existing restore directory,
and trees as deep as a record's path allows.

An existing restore directory (``--overwrite``) may hold names that are
hardlinks to files outside it.  A restore must never change such an inode:
not its content, owner, mode, times, xattrs, nor its link count once the
restore is done.  And a level may describe a chain of ~2,000 nested
directories: restoring and removing it must take time in proportion to the
stream and a bounded number of descriptors.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from freezer_rsyncv2 import errors
from freezer_rsyncv2.fs.removal import remove_at
from freezer_rsyncv2.stream import records
from tests.hostile import streamkit as sk

ROOT = os.getuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="chown and mknod need root")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

OWNER = 4321            # a uid/gid nobody has: changes are plain to see
MTIME = 1_500_000_000 * 10**9


@pytest.fixture(autouse=True)
def scrub(arena):
    """Empty the restore directory after each test: pytest's own clean-up
    of old temporary directories (shutil.rmtree, recursive) fails on 1,000
    nested levels."""
    yield
    fd = os.open(arena.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in os.listdir(fd):
            remove_at(fd, os.fsencode(name))
    finally:
        os.close(fd)


def restore(arena, recs, level=0):
    sk.restore_stream(arena.root, sk.encode(recs, level=level), level=level)


def xattrs_of(path: str) -> dict:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False)
            for n in sorted(names)}


def inode_state(path: str) -> tuple:
    """Everything a restore could change about the inode at ``path``."""
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            content = f.read()
    elif stat.S_ISLNK(st.st_mode):
        content = os.readlink(path)
    else:
        content = None
    return (st.st_ino, st.st_uid, st.st_gid, st.st_mode, st.st_mtime_ns,
            st.st_nlink, st.st_rdev, content, xattrs_of(path))


@pytest.fixture
def outside(tmp_path_factory):
    """Objects in a directory of their own, outside the arena, each of a
    kind a restore directory could hold a hardlink to."""
    top = tmp_path_factory.mktemp("outside")
    (top / "file").write_bytes(b"outside content\n" * 100)
    os.chmod(top / "file", 0o640)
    try:
        os.setxattr(top / "file", "user.origin", b"outside")
    except OSError:
        pass                        # no user xattrs here: still tested
    os.mkfifo(top / "fifo", 0o620)
    os.symlink("file", top / "link")
    if ROOT:
        os.mknod(top / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    for name in os.listdir(top):
        os.utime(top / name, ns=(10**9, 2 * 10**9), follow_symlinks=False)

    class Outside:
        dir = str(top)
        names = sorted(os.listdir(top))
        before = {n: inode_state(str(top / n)) for n in names}

        def path(self, name: str) -> str:
            return str(top / name)

        def link_into(self, arena, name: str, as_name: str) -> None:
            os.link(self.path(name), os.path.join(arena.root, as_name),
                    follow_symlinks=False)
            assert os.lstat(self.path(name)).st_nlink == 2

        def check(self) -> None:
            """Nothing changed, and no name in the restore shares an inode."""
            now = {n: inode_state(self.path(n)) for n in self.names}
            assert now == self.before
    return Outside()


# -- finding 2: metadata through a pre-existing hardlink ---------------------

@needs_root
def test_metadata_only_entry_on_a_hardlink_to_outside(arena, outside,
                                                      caplog):
    outside.link_into(arena, "file", "f")
    content = open(outside.path("file"), "rb").read()
    with caplog.at_level(logging.WARNING):
        restore(arena, [sk.entry(b"f", "f", data="meta", s=len(content),
                                 m=0o4755, u=OWNER, g=OWNER, mt=MTIME,
                                 at=MTIME, x={b"user.new": b"1"})])
    outside.check()
    arena.check_sentinel()
    restored = os.path.join(arena.root, "f")
    st = os.lstat(restored)
    assert st.st_ino != outside.before["file"][0] and st.st_nlink == 1
    assert (st.st_uid, st.st_gid) == (OWNER, OWNER)
    assert stat.S_IMODE(st.st_mode) == 0o4755
    assert st.st_mtime_ns == MTIME
    assert open(restored, "rb").read() == content
    if xattrs_of(outside.path("file")):
        assert xattrs_of(restored) == {"user.new": b"1"}
    assert "restored as a copy" in caplog.text
    assert not [n for n in os.listdir(arena.root)
                if n.startswith(".rsyncv2-tmp-")]


@needs_root
def test_hardlink_entry_to_a_hardlink_to_outside(arena, outside):
    outside.link_into(arena, "file", "f")
    restore(arena, [sk.entry(b"h", "h", h=b"f", m=0o600, u=OWNER, g=OWNER,
                             mt=MTIME, at=MTIME)])
    outside.check()
    arena.check_sentinel()
    f, h = (os.lstat(os.path.join(arena.root, n)) for n in ("f", "h"))
    assert f.st_ino == h.st_ino != outside.before["file"][0]
    assert h.st_nlink == 2
    assert (h.st_uid, stat.S_IMODE(h.st_mode), h.st_mtime_ns) == \
        (OWNER, 0o600, MTIME)
    assert open(os.path.join(arena.root, "h"), "rb").read() == \
        outside.before["file"][7]


@needs_root
@pytest.mark.parametrize("name,recs", [
    ("file", sk.file_records(b"x", b"new data", m=0o777, u=OWNER)),
    ("file", [[records.DELETE, b"x"]]),
    ("file", [sk.entry(b"x", "d", m=0o777, u=OWNER)]),
    ("fifo", [sk.entry(b"x", "p", m=0o666, u=OWNER, g=OWNER, mt=MTIME)]),
    ("link", [sk.entry(b"x", "l", l=b"elsewhere", u=OWNER, g=OWNER,
                       mt=MTIME)]),
    ("null", [sk.entry(b"x", "c", rd=os.makedev(1, 5), m=0o666, u=OWNER)]),
    ("fifo", [sk.entry(b"x", "f", data="meta", m=0o777, u=OWNER)]),
    ("link", [sk.entry(b"x", "f", data="meta", m=0o777, u=OWNER)]),
], ids=["file-full", "file-delete", "file-to-dir", "fifo", "symlink",
        "device", "meta-on-fifo", "meta-on-symlink"])
def test_other_records_over_a_hardlink_to_outside(arena, outside, name,
                                                  recs):
    outside.link_into(arena, name, "x")
    try:
        restore(arena, recs)
    except errors.RestoreError:
        # A metadata-only record for a file finds another kind: refused.
        assert recs[0][1].get("data") == "meta"
        os.unlink(os.path.join(arena.root, "x"))
    outside.check()
    arena.check_sentinel()


@needs_root
def test_hardlinks_made_by_the_restore_stay_one_inode(arena, outside):
    """The other half: a metadata-only change of a file this restore linked
    itself is applied in place, to every name (one restore session)."""
    from freezer_rsyncv2.engine import rsyncv2
    import types
    engine = rsyncv2.Rsyncv2Engine()
    level0 = sk.encode(sk.file_records(b"a", b"shared", m=0o600)
                       + [sk.entry(b"b", "h", h=b"a", m=0o600)])
    level1 = sk.encode([sk.entry(b"a", "f", data="meta", s=6, m=0o640,
                                 u=OWNER, g=OWNER, mt=MTIME, at=MTIME)],
                       level=1)
    with engine.restore_session(arena.root):
        for level, data in enumerate((level0, level1)):
            backup = types.SimpleNamespace(level=level,
                                           hostname_backup_name="crafted")
            engine.restore_level(arena.root, sk.FakePipe(data), backup)
    a, b = (os.lstat(os.path.join(arena.root, n)) for n in ("a", "b"))
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    assert (a.st_uid, stat.S_IMODE(a.st_mode)) == (OWNER, 0o640)
    outside.check()


# -- finding 6: deep trees ----------------------------------------------------

DEEP_SCRIPT = textwrap.dedent('''
    import os, resource, sys, time
    from tests.hostile import streamkit as sk
    from freezer_rsyncv2.stream import records

    dest, depth, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    fds_before = len(os.listdir("/proc/self/fd"))

    def chain(top):
        return [b"/".join([top] * k) for k in range(1, depth + 1)]

    def level(recs, n):
        start = time.monotonic()
        sk.restore_stream(dest, sk.encode(recs, level=n), level=n)
        return time.monotonic() - start

    # Level 0: two chains of nested one-letter directories, tree order
    # (each directory, then its subdirectory, then the files bottom-up),
    # a file at every level.
    recs = []
    for top in (b"a", b"b"):
        dirs = chain(top)
        recs += [sk.entry(d, "d", m=0o755) for d in dirs]
        for d in reversed(dirs):
            recs += sk.file_records(d + b"/f", d[-8:])
    took = [level(recs, 0)]
    deepest = b"/".join([b"a"] * depth) + b"/f"
    # Level 1: a metadata change at the bottom, a new file in the middle.
    middle = b"/".join([b"a"] * (depth // 2)) + b"/g"
    took.append(level([sk.entry(deepest, "f", data="meta", s=8, m=0o600)]
                      + sk.file_records(middle, b"middle"), 1))
    # Level 2: delete one chain, replace the other by a file.
    took.append(level([[records.DELETE, b"a"]]
                      + sk.file_records(b"b", b"now a file"), 2))
    fds_after = len(os.listdir("/proc/self/fd"))
    print(repr((took, fds_before, fds_after, sorted(os.listdir(dest)))))
''')


def test_deep_tree_restores_and_goes_away_with_few_descriptors(arena):
    """2,000 nested directories with a file at each level, under a
    descriptor limit of 256: restored, patched, deleted and replaced in
    bounded time (the limit is a hang guard, not a benchmark)."""
    depth = 2000    # 'a/' * 2000 + 'f': 4001 bytes, close to the 4096 limit
    proc = subprocess.run(
        [sys.executable, "-c", DEEP_SCRIPT, arena.root, str(depth), "256"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    took, fds_before, fds_after, listing = eval(proc.stdout.strip())
    assert sum(took) < 30, took
    assert fds_after <= fds_before + 2       # nothing left open
    assert listing == ["b"]
    with open(os.path.join(arena.root, "b"), "rb") as f:
        assert f.read() == b"now a file"
    arena.check_sentinel()


def test_deep_tree_contents_and_metadata(arena):
    """The same shape, smaller, checked entry by entry in this process."""
    depth = 300
    dirs = [b"/".join([b"d"] * k) for k in range(1, depth + 1)]
    recs = [sk.entry(d, "d", m=0o750, mt=MTIME + len(d), at=MTIME)
            for d in dirs]
    for d in reversed(dirs):
        recs += sk.file_records(d + b"/f", d, m=0o640, mt=MTIME, at=MTIME)
    restore(arena, recs)
    for d in dirs:
        path = os.path.join(arena.root, os.fsdecode(d))
        st = os.lstat(path)
        assert stat.S_IMODE(st.st_mode) == 0o750
        assert st.st_mtime_ns == MTIME + len(d)
        with open(os.path.join(path, "f"), "rb") as f:
            assert f.read() == d
    restore(arena, [[records.DELETE, b"d"]], level=1)
    assert os.listdir(arena.root) == []
    arena.check_sentinel()


def test_deep_symlink_planted_in_the_middle_is_still_refused(arena):
    """The descriptor cache must not outlive a level: a later level that
    turns a directory half-way down into a symlink stops the records
    below it, as at any depth."""
    depth = 100
    dirs = [b"/".join([b"d"] * k) for k in range(1, depth + 1)]
    restore(arena, [sk.entry(d, "d") for d in dirs])
    middle = dirs[depth // 2]
    restore(arena, [sk.entry(middle, "l", l=arena.sentinel_dir.encode())],
            level=1)
    below = middle + b"/precious.txt"
    with pytest.raises(errors.UnsafePathError):
        restore(arena, sk.file_records(below, b"owned"), level=2)
    with pytest.raises(errors.UnsafePathError):
        restore(arena, [sk.entry(below, "f", data="meta", m=0o777)],
                level=2)
    # In one level too: the symlink comes after records that cached the
    # directories below it.
    restore(arena, [sk.entry(d, "d") for d in dirs[depth // 2:]], level=3)
    with pytest.raises(errors.UnsafePathError):
        restore(arena, sk.file_records(dirs[-1] + b"/f", b"x")
                + [sk.entry(middle, "l", l=arena.sentinel_dir.encode())]
                + sk.file_records(below, b"owned"), level=4)
    arena.check_sentinel()


def test_hardlinks_across_two_deep_branches(arena):
    """Hardlink sources in another deep branch: each record costs its own
    paths' length, not a walk per component of every earlier one."""
    depth = 400
    left = b"/".join([b"l"] * depth)
    right = b"/".join([b"r"] * depth)
    recs = sk.file_records(left + b"/src", b"linked")
    recs += [sk.entry(right + b"/h%03d" % i, "h", h=left + b"/src")
             for i in range(200)]
    restore(arena, recs)
    st = os.lstat(os.path.join(arena.root, os.fsdecode(left), "src"))
    assert st.st_nlink == 201
    with open(os.path.join(arena.root, os.fsdecode(right), "h199"),
              "rb") as f:
        assert f.read() == b"linked"
    arena.check_sentinel()
