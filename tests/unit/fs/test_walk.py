"""Tests of the backup walk: order, kinds, excludes, dereference, errors."""

from __future__ import annotations

import errno
import os
import pwd
import socket
import stat
import struct

import pytest

from freezer_rsyncv2.errors import SourceError
from freezer_rsyncv2.fs import entry as E
from freezer_rsyncv2.fs.walk import sort_key, walk
from tests.unprivileged import run_unprivileged

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root")
#: What setxattr fails with where the file system lacks the feature: a skip;
#: any other error fails the test.
UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP)


class Warnings(list):
    """Collects on_warning calls."""

    def __call__(self, path: bytes, message: str) -> None:
        self.append((path, message))


def run(root, **kwargs):
    warnings = Warnings()
    entries = list(walk(root, on_warning=warnings, **kwargs))
    return {e.path: e for e in entries}, [e.path for e in entries], warnings


def touch(path, data=b''):
    with open(path, 'wb') as f:
        f.write(data)


@pytest.fixture
def src(tmp_path):
    root = tmp_path / 'src'
    root.mkdir()
    return root


def test_order_is_component_tuple_order(src):
    for d in ('a', 'a/x', 'B'):
        (src / d).mkdir()
    for f in ('a.b', 'a/x/1', 'a/y', 'b', 'A'):
        touch(src / f)
    touch(os.path.join(os.fsencode(src), b'\xff\xfe'))
    _, order, warnings = run(src)
    assert order == [b'A', b'B', b'a', b'a/x', b'a/x/1', b'a/y', b'a.b',
                     b'b', b'\xff\xfe']
    assert order == sorted(order, key=sort_key)
    assert order != sorted(order)  # plain bytes order would differ
    assert warnings == []


def test_sort_key():
    assert sort_key(b'a/b/c') == b'a\0b\0c'
    assert sort_key(b'a') < sort_key(b'a/x') < sort_key(b'a.b')


def test_regular_file_dir_and_metadata(src):
    touch(src / 'f', b'12345')
    os.chmod(src / 'f', 0o4751)
    os.utime(src / 'f', ns=(1_000_000_001, 2_000_000_002))
    (src / 'empty').mkdir()
    entries, _, _ = run(src)
    f = entries[b'f']
    st = os.lstat(src / 'f')
    assert f.kind == E.KIND_FILE and f.size == 5
    assert f.mode == 0o4751
    assert (f.atime_ns, f.mtime_ns) == (1_000_000_001, 2_000_000_002)
    assert (f.ino, f.dev, f.nlink, f.uid, f.gid) == (
        st.st_ino, st.st_dev, 1, st.st_uid, st.st_gid)
    assert f.uname == pwd.getpwuid(st.st_uid).pw_name
    assert f.ctime_ns == st.st_ctime_ns
    d = entries[b'empty']
    assert d.kind == E.KIND_DIR and d.size == 0 and d.link_target is None


def test_symlinks_stored_as_links(src):
    touch(src / 'f')
    (src / 'dir').mkdir()
    touch(src / 'dir' / 'inside')
    os.symlink('f', src / 'rel')
    os.symlink('/etc', src / 'abs')
    os.symlink('does/not/exist', src / 'dangling')
    os.symlink('dir', src / 'todir')
    entries, order, warnings = run(src)
    assert entries[b'rel'].kind == E.KIND_SYMLINK
    assert entries[b'rel'].link_target == b'f'
    assert entries[b'abs'].link_target == b'/etc'
    assert entries[b'dangling'].link_target == b'does/not/exist'
    assert entries[b'todir'].kind == E.KIND_SYMLINK
    assert b'todir/inside' not in entries  # links are never descended
    assert entries[b'rel'].size == 0
    assert warnings == []


def test_fifo_socket_and_non_utf8(src, monkeypatch):
    os.mkfifo(src / 'pipe')
    monkeypatch.chdir(src)  # AF_UNIX paths are limited to 108 bytes
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind('sock')
        touch(os.path.join(os.fsencode(src), b'caf\xe9'))
        entries, _, warnings = run(src)
    finally:
        sock.close()
    assert entries[b'pipe'].kind == E.KIND_FIFO
    assert b'sock' not in entries
    assert warnings == [(b'sock', 'socket skipped')]
    assert entries[b'caf\xe9'].kind == E.KIND_FILE


@needs_root
def test_char_device(src):
    os.mknod(src / 'null', 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    entries, _, _ = run(src)
    dev = entries[b'null']
    assert dev.kind == E.KIND_CHR
    assert dev.rdev == os.makedev(1, 3)
    assert dev.mode == 0o600 and dev.size == 0


def test_hardlink_group(src):
    touch(src / 'b', b'data')
    os.link(src / 'b', src / 'a')
    os.link(src / 'b', src / 'c')
    touch(src / 'single')
    entries, _, _ = run(src)
    assert entries[b'a'].kind == E.KIND_FILE
    assert entries[b'a'].hardlink_to is None
    for name in (b'b', b'c'):
        assert entries[name].kind == E.KIND_HARDLINK
        assert entries[name].hardlink_to == b'a'
        assert entries[name].nlink == 3
    assert entries[b'single'].kind == E.KIND_FILE


def test_hardlink_first_excluded_promotes_next(src):
    touch(src / 'a')
    os.link(src / 'a', src / 'b')
    entries, _, _ = run(src, exclude=['a'])
    assert entries[b'b'].kind == E.KIND_FILE
    assert entries[b'b'].hardlink_to is None


def test_user_xattrs(src):
    touch(src / 'f')
    try:
        os.setxattr(src / 'f', 'user.k', b'v\0v')
    except OSError as exc:
        if exc.errno not in UNSUPPORTED:
            raise
        pytest.skip(f"no user xattrs on this file system: {exc}")
    (src / 'd').mkdir()
    os.setxattr(src / 'd', 'user.dir', b'1')
    entries, _, _ = run(src)
    assert entries[b'f'].xattrs == {b'user.k': b'v\0v'}
    assert entries[b'd'].xattrs == {b'user.dir': b'1'}


@needs_root
def test_acl_xattrs_when_root(src):
    touch(src / 'f')
    acl = struct.pack('<I', 2) + b''.join(
        struct.pack('<HHI', tag, perm, ident) for tag, perm, ident in
        [(1, 6, 0xffffffff), (2, 4, 65534), (4, 4, 0xffffffff),
         (0x10, 4, 0xffffffff), (0x20, 0, 0xffffffff)])
    try:
        os.setxattr(src / 'f', 'system.posix_acl_access', acl)
    except OSError as exc:
        if exc.errno not in UNSUPPORTED:
            raise
        pytest.skip(f"no ACL support on this file system: {exc}")
    entries, _, _ = run(src)
    assert entries[b'f'].xattrs == {b'system.posix_acl_access': acl}


@needs_root
def test_unknown_owner_has_no_name(src):
    touch(src / 'f')
    uid = 54321
    while True:
        try:
            pwd.getpwuid(uid)
            uid += 1
        except KeyError:
            break
    os.chown(src / 'f', uid, uid)
    entries, _, _ = run(src)
    assert (entries[b'f'].uid, entries[b'f'].uname) == (uid, None)


def test_excludes(src):
    (src / 'cache').mkdir()
    touch(src / 'cache' / 'big')
    (src / 'a').mkdir()
    touch(src / 'a' / 'x.log')
    touch(src / 'a' / 'keep')
    touch(src / 'a' / 'skip')
    touch(src / 'skip')
    touch(src / 'tmp1')
    _, order, _ = run(src, exclude=['*.log', 'a/skip', './cache/', 'tmp?'])
    assert order == [b'a', b'a/keep', b'skip']


def test_excluded_directory_not_descended(src, monkeypatch):
    (src / 'cache').mkdir()
    listed = []
    real = os.listdir

    def spy(path='.'):
        listed.append(path)
        return real(path)

    monkeypatch.setattr(os, 'listdir', spy)
    run(src, exclude=['cache'])
    assert all(not os.fsencode(p).endswith(b'cache') for p in listed)


def test_dereference(src, tmp_path):
    outside = tmp_path / 'outside'
    outside.mkdir()
    touch(outside / 'o', b'outside data')
    touch(src / 'f', b'123')
    os.symlink('f', src / 'tofile')
    os.symlink(outside, src / 'todir')
    os.symlink('nowhere', src / 'dangling')
    os.symlink('loop2', src / 'loop1')
    os.symlink('loop1', src / 'loop2')
    entries, order, warnings = run(src, dereference=True)
    assert entries[b'tofile'].kind == E.KIND_FILE
    assert entries[b'tofile'].size == 3
    assert entries[b'todir'].kind == E.KIND_DIR
    assert entries[b'todir/o'].size == len(b'outside data')
    for name in (b'dangling', b'loop1', b'loop2'):
        assert name not in entries
    messages = dict(warnings)
    assert messages[b'dangling'] == 'dangling symlink skipped'
    assert messages[b'loop1'] == 'symlink loop skipped'


def test_dereference_directory_loop_terminates(src):
    (src / 'd').mkdir()
    os.symlink('..', src / 'd' / 'up')
    os.symlink('.', src / 'self')
    entries, order, warnings = run(src, dereference=True)
    assert order == [b'd']
    assert sorted(warnings) == [(b'd/up', 'file system loop skipped'),
                                (b'self', 'file system loop skipped')]


def test_single_file_root(tmp_path):
    touch(tmp_path / 'file.txt', b'abc')
    os.symlink('file.txt', tmp_path / 'link')
    entries, order, _ = run(tmp_path / 'file.txt')
    assert order == [b'file.txt'] and entries[b'file.txt'].size == 3
    entries, order, _ = run(os.fsencode(tmp_path / 'link'))
    assert order == [b'link']
    assert entries[b'link'].kind == E.KIND_SYMLINK
    entries, _, _ = run(tmp_path / 'link', dereference=True)
    assert entries[b'link'].kind == E.KIND_FILE
    assert entries[b'link'].size == 3


def test_symlink_root_with_trailing_slash_is_walked(tmp_path, src):
    touch(src / 'f')
    os.symlink(src, tmp_path / 'link')
    _, order, _ = run(str(tmp_path / 'link') + '/')
    assert order == [b'f']


def test_missing_root_raises_eagerly(tmp_path):
    with pytest.raises(SourceError, match='does not exist'):
        walk(tmp_path / 'missing')  # no iteration needed


def test_unreadable_root_raises(src, monkeypatch):
    def refuse(path='.'):
        raise PermissionError(13, 'Permission denied')

    monkeypatch.setattr(os, 'listdir', refuse)
    with pytest.raises(SourceError, match='cannot list'):
        walk(src)


def test_unreadable_directory_warns_and_continues(src, monkeypatch):
    (src / 'locked').mkdir()
    touch(src / 'locked' / 'secret')
    touch(src / 'z')
    real = os.listdir

    def listdir(path='.'):
        if os.fsencode(path).endswith(b'/locked'):
            raise PermissionError(13, 'Permission denied')
        return real(path)

    monkeypatch.setattr(os, 'listdir', listdir)
    _, order, warnings = run(src)
    assert order == [b'locked', b'z']
    assert warnings == [(b'locked', 'cannot list directory, contents '
                                    'skipped: Permission denied')]


def test_unreadable_directory_really_unreadable(src):
    (src / 'locked').mkdir()
    touch(src / 'locked' / 'secret')
    os.chmod(src / 'locked', 0)
    try:
        # As root too: the walk runs without root's permission override.
        order, warnings = run_unprivileged(lambda: run(src)[1:])
    finally:
        os.chmod(src / 'locked', 0o700)
    assert order == [b'locked']
    assert warnings == [(b'locked', 'cannot list directory, contents '
                                    'skipped: Permission denied')]


def test_vanished_entry_warns_and_continues(src, monkeypatch):
    touch(src / 'gone')
    touch(src / 'stays')
    real = os.lstat

    def lstat(path, *args, **kwargs):
        if os.fsencode(path).endswith(b'/gone'):
            raise FileNotFoundError(2, 'No such file or directory')
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, 'lstat', lstat)
    _, order, warnings = run(src)
    assert order == [b'stays']
    assert warnings == [(b'gone', 'vanished during backup, skipped')]
