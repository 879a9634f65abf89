"""Tests of RestoreTree: each kind, metadata, sparse data, replacement."""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import stat
from typing import Any

import blake3
import pytest

from freezer_rsyncv2.errors import (
    CorruptRecordError, IntegrityError, RestoreError, UnsupportedVersionError)
from freezer_rsyncv2.fs import entry as E
from freezer_rsyncv2.fs.filedata import TMP_PREFIX
from freezer_rsyncv2.fs.restore import RestoreTree
from tests.unit.fs import entrykit

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root")
MIB = 1 << 20
MTIME = 1_234_567_890_123_456_789
ATIME = 1_111_111_111_222_222_222


def entry(path: bytes, kind: str = E.KIND_FILE, **kw: Any) -> E.Entry:
    return entrykit.entry(path, kind, **{"mtime_ns": MTIME, "atime_ns": ATIME, **kw})


def put(tree: RestoreTree, path: bytes, data: bytes, **kw) -> E.Entry:
    e = entry(path, size=len(data), **kw)
    tree.write_file(e, [data], hashlib.sha256(data).digest())
    return e


class Warnings(list):
    def __call__(self, path: bytes, message: str) -> None:
        self.append((path, message))


@pytest.fixture
def warnings():
    return Warnings()


@pytest.fixture
def target(tmp_path):
    return tmp_path / 'restore'


@pytest.fixture
def tree(target, warnings):
    with RestoreTree(str(target), on_warning=warnings) as t:
        yield t


def leftovers(root) -> list[str]:
    return [name for _, dirs, files in os.walk(root)
            for name in dirs + files if name.startswith(TMP_PREFIX.decode())]


def test_root_created_with_parents(tmp_path):
    root = tmp_path / 'a' / 'b' / 'c'
    with RestoreTree(root):
        pass
    assert root.is_dir()


def test_root_that_is_a_file_is_refused(tmp_path):
    (tmp_path / 'f').write_bytes(b'')
    with pytest.raises(RestoreError):
        RestoreTree(tmp_path / 'f')


def test_closed_tree_refuses_work(target):
    t = RestoreTree(target)
    t.close()
    t.close()
    with pytest.raises(RestoreError, match='closed'):
        t.make_dir(entry(b'd', E.KIND_DIR))


def test_make_dir_metadata_deferred_until_finish(tree, target):
    tree.make_dir(entry(b'ro', E.KIND_DIR, mode=0o555,
                        xattrs={b'user.d': b'1'}))
    tree.make_dir(entry(b'ro/sub', E.KIND_DIR, mode=0o751))
    put(tree, b'ro/sub/f', b'child data')
    put(tree, b'ro/g', b'more')
    assert stat.S_IMODE(os.lstat(target / 'ro').st_mode) == 0o700
    tree.finish()
    st = os.lstat(target / 'ro')
    assert stat.S_IMODE(st.st_mode) == 0o555
    assert st.st_mtime_ns == MTIME  # children did not disturb it
    assert stat.S_IMODE(os.lstat(target / 'ro' / 'sub').st_mode) == 0o751
    assert os.lstat(target / 'ro' / 'sub').st_mtime_ns == MTIME
    assert os.getxattr(target / 'ro', 'user.d') == b'1'
    os.chmod(target / 'ro', 0o755)  # let tmp_path cleanup in as non-root


def test_make_dir_keeps_existing_dir_contents(tree, target):
    tree.make_dir(entry(b'd', E.KIND_DIR))
    put(tree, b'd/f', b'x')
    tree.make_dir(entry(b'd', E.KIND_DIR, mode=0o700))
    assert (target / 'd' / 'f').read_bytes() == b'x'


def test_context_manager_runs_finish(target):
    with RestoreTree(target) as t:
        t.make_dir(entry(b'd', E.KIND_DIR, mode=0o711))
    assert stat.S_IMODE(os.lstat(target / 'd').st_mode) == 0o711


def test_write_file_round_trip_and_metadata(tree, target):
    e = put(tree, b'f', b'hello', mode=0o640,
            xattrs={b'user.k': b'v', b'user.e': b''})
    st = os.lstat(target / 'f')
    assert (target / 'f').read_bytes() == b'hello'
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_mtime_ns, st.st_atime_ns) == (MTIME, ATIME)
    assert os.getxattr(target / 'f', 'user.k') == b'v'
    assert os.getxattr(target / 'f', 'user.e') == b''
    assert e.size == 5
    assert leftovers(target) == []


def test_write_file_sparse_with_holes(tree, target):
    size = 10 * MIB
    head, middle = b'H' * 4096, b'M' * 4096
    pieces = [head, 5 * MIB - 4096, middle, size - 5 * MIB - 4096]
    logical = head + bytes(5 * MIB - 4096) + middle + \
        bytes(size - 5 * MIB - 4096)
    e = entry(b'sparse', size=size)
    written = tree.write_file(e, pieces, hashlib.sha256(logical).digest())
    assert written == 8192
    st = os.lstat(target / 'sparse')
    assert st.st_size == size
    assert st.st_blocks * 512 < MIB  # trailing and middle holes kept
    with open(target / 'sparse', 'rb') as f:
        assert f.read() == logical


def test_write_file_other_hash_and_small_pieces(tree, target):
    data = [b'a'] * 5000 + [b'b' * (2 * MIB)] + [b'c'] * 10
    blob = b''.join(data)
    e = entry(b'f', size=len(blob))
    tree.write_file(e, iter(data), blake3.blake3(blob).digest(),
                    hash_name='blake3')
    assert (target / 'f').read_bytes() == blob


def test_write_file_unknown_hash(tree, target):
    with pytest.raises(UnsupportedVersionError, match="blake2b"):
        tree.write_file(entry(b'f', size=1), [b'x'], b'', hash_name='blake2b')
    assert not (target / 'f').exists()


def test_digest_mismatch_keeps_previous_file(tree, target):
    put(tree, b'f', b'good')
    bad = entry(b'f', size=4)
    with pytest.raises(IntegrityError, match="'f'"):
        tree.write_file(bad, [b'evil'], hashlib.sha256(b'good').digest())
    assert (target / 'f').read_bytes() == b'good'
    assert leftovers(target) == []


def test_size_mismatch_is_integrity_error(tree, target):
    e = entry(b'f', size=10)
    with pytest.raises(IntegrityError, match='expected 10'):
        tree.write_file(e, [b'abc'], hashlib.sha256(b'abc').digest())
    assert not (target / 'f').exists()
    assert leftovers(target) == []


def test_exception_inside_pieces_propagates_unchanged(tree, target):
    put(tree, b'f', b'old')
    boom = ConnectionResetError(104, 'storage went away')

    def pieces():
        yield b'partial'
        yield 100
        raise boom

    with pytest.raises(ConnectionResetError) as info:
        tree.write_file(entry(b'f', size=200), pieces(), b'')
    assert info.value is boom
    assert (target / 'f').read_bytes() == b'old'
    assert leftovers(target) == []


def test_oversized_pieces_fail_early(tree, target):
    def pieces():
        yield 1 << 50  # a hostile hole: must not be hashed nor seeked
        raise AssertionError("iteration should have stopped")

    with pytest.raises(IntegrityError, match='more than the expected 3'):
        tree.write_file(entry(b'f', size=3), pieces(), b'')
    with pytest.raises(IntegrityError, match='more than the expected 3'):
        tree.write_file(entry(b'f', size=3), [b'ab', b'cd'], b'')
    assert leftovers(target) == []
    assert not (target / 'f').exists()


def test_negative_hole_is_corrupt(tree, target):
    with pytest.raises(CorruptRecordError):
        tree.write_file(entry(b'f', size=1), [-1], b'')
    assert leftovers(target) == []


def test_setuid_stripped_without_ownership(target):
    with RestoreTree(target, restore_owner=False) as t:
        put(t, b'su', b'#!', mode=0o6755)
        t.make_dir(entry(b'sg', E.KIND_DIR, mode=0o2775))
    assert stat.S_IMODE(os.lstat(target / 'su').st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(target / 'sg').st_mode) == 0o775


@needs_root
def test_owner_by_name_and_setuid_kept_when_root(target):
    nobody = pwd.getpwnam('nobody')
    group = grp.getgrgid(nobody.pw_gid)
    with RestoreTree(target) as t:
        # Stored ids are wrong on purpose: names must win.
        put(t, b'f', b'x', mode=0o4755, uid=40001, gid=40001,
            uname='nobody', gname=group.gr_name)
        put(t, b'g', b'y', uid=40002, gid=40003,
            uname='no-such-user-xyz', gname='no-such-group-xyz')
        t.make_dir(entry(b'd', E.KIND_DIR, uid=40004, gid=40005))
        t.make_symlink(entry(b'l', E.KIND_SYMLINK, link_target=b'f',
                             uname='nobody', gname=group.gr_name))
    st = os.lstat(target / 'f')
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert stat.S_IMODE(st.st_mode) == 0o4755
    st = os.lstat(target / 'g')
    assert (st.st_uid, st.st_gid) == (40002, 40003)
    st = os.lstat(target / 'd')
    assert (st.st_uid, st.st_gid) == (40004, 40005)
    assert os.lstat(target / 'l').st_uid == nobody.pw_uid


@needs_root
def test_acl_restored_when_root(tree, target):
    import struct
    acl = struct.pack('<I', 2) + b''.join(
        struct.pack('<HHI', tag, perm, ident) for tag, perm, ident in
        [(1, 6, 0xffffffff), (2, 4, 65534), (4, 4, 0xffffffff),
         (0x10, 4, 0xffffffff), (0x20, 0, 0xffffffff)])
    put(tree, b'f', b'x', mode=0o640,
        xattrs={b'system.posix_acl_access': acl})
    assert os.getxattr(target / 'f', 'system.posix_acl_access') == acl


def test_unmanaged_xattr_refused(tree, target, warnings):
    put(tree, b'f', b'x', xattrs={b'security.capability': b'\x01',
                                  b'trusted.x': b'1', b'user.ok': b'1'})
    assert os.listxattr(target / 'f') == ['user.ok']
    assert {path for path, _ in warnings} == {b'f'}
    assert len(warnings) == 2


def test_make_symlink(tree, target):
    tree.make_symlink(entry(b'rel', E.KIND_SYMLINK, link_target=b'../x'))
    tree.make_symlink(entry(b'abs', E.KIND_SYMLINK, link_target=b'/etc/p'))
    assert os.readlink(target / 'rel') == '../x'
    assert os.readlink(target / 'abs') == '/etc/p'
    assert os.lstat(target / 'rel').st_mtime_ns == MTIME
    with pytest.raises(CorruptRecordError):
        tree.make_symlink(entry(b'bad', E.KIND_SYMLINK, link_target=None))


def test_make_fifo(tree, target):
    tree.make_fifo(entry(b'p', E.KIND_FIFO, mode=0o620))
    st = os.lstat(target / 'p')
    assert stat.S_ISFIFO(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o620 and st.st_mtime_ns == MTIME


@needs_root
def test_make_device_as_root(tree, target):
    tree.make_device(entry(b'null', E.KIND_CHR, mode=0o666,
                           rdev=os.makedev(1, 3)))
    st = os.lstat(target / 'null')
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o666 and st.st_mtime_ns == MTIME


def test_make_device_without_root_warns(tree, target, warnings):
    tree.is_root = False
    tree.make_device(entry(b'null', E.KIND_CHR, rdev=os.makedev(1, 3)))
    assert not os.path.lexists(target / 'null')
    assert warnings == [(b'null', 'device not restored: needs root')]
    with pytest.raises(CorruptRecordError):
        tree.make_device(entry(b'x', E.KIND_FILE))


def test_make_hardlink(tree, target):
    put(tree, b'a', b'shared', mode=0o600)
    tree.make_dir(entry(b'd', E.KIND_DIR))
    tree.make_hardlink(entry(b'd/b', E.KIND_HARDLINK, hardlink_to=b'a',
                             mode=0o600))
    assert os.lstat(target / 'a').st_ino == os.lstat(target / 'd/b').st_ino
    assert os.lstat(target / 'a').st_nlink == 2


def test_type_replacement(tree, target):
    put(tree, b'x', b'file')
    tree.make_dir(entry(b'x', E.KIND_DIR))  # file -> dir
    put(tree, b'x/inner', b'data')
    assert (target / 'x').is_dir()
    put(tree, b'x', b'file again')  # dir (with content) -> file
    assert (target / 'x').read_bytes() == b'file again'
    tree.make_dir(entry(b'y', E.KIND_DIR))
    tree.make_dir(entry(b'y/z', E.KIND_DIR))
    tree.make_symlink(entry(b'y', E.KIND_SYMLINK, link_target=b'x'))
    assert os.readlink(target / 'y') == 'x'  # dir tree -> symlink
    tree.make_fifo(entry(b'y', E.KIND_FIFO))  # symlink -> fifo
    assert stat.S_ISFIFO(os.lstat(target / 'y').st_mode)
    put(tree, b'y', b'over fifo')  # fifo -> file
    assert (target / 'y').read_bytes() == b'over fifo'
    tree.finish()  # the replaced directories' deferred metadata is dropped
    assert (target / 'y').is_file()


def test_open_basis(tree, target):
    assert tree.open_basis(b'missing') is None
    assert tree.open_basis(b'no/such/dir') is None
    put(tree, b'f', b'basis data', mode=0o400)
    with tree.open_basis(b'f') as f:
        assert f.read() == b'basis data'
    tree.make_dir(entry(b'd', E.KIND_DIR))
    tree.make_fifo(entry(b'p', E.KIND_FIFO))
    tree.make_symlink(entry(b'l', E.KIND_SYMLINK, link_target=b'f'))
    for path in (b'd', b'p', b'l'):
        with pytest.raises(RestoreError, match='not a regular file'):
            tree.open_basis(path)
    assert tree.open_basis(b'f/below') is None


def test_remove(tree, target, tmp_path):
    outside = tmp_path / 'outside'
    outside.mkdir()
    (outside / 'keep').write_bytes(b'k')
    tree.make_dir(entry(b'd', E.KIND_DIR))
    tree.make_dir(entry(b'd/ro', E.KIND_DIR, mode=0o500))
    put(tree, b'd/ro/f', b'x', mode=0o400)
    tree.make_symlink(entry(b'd/out', E.KIND_SYMLINK,
                            link_target=os.fsencode(outside)))
    tree.finish()  # d/ro is now really read-only
    tree.remove(b'd')
    assert not os.path.lexists(target / 'd')
    assert (outside / 'keep').read_bytes() == b'k'
    tree.remove(b'd')  # missing is fine
    tree.remove(b'x/y/z')
    put(tree, b'f', b'x')
    tree.remove(b'f')
    assert os.listdir(target) == []


def test_set_meta(tree, target):
    put(tree, b'f', b'content', xattrs={b'user.old': b'1'})
    tree.set_meta(entry(b'f', mode=0o600, mtime_ns=5_000_000_000,
                        xattrs={b'user.new': b'2'}))
    st = os.lstat(target / 'f')
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_mtime_ns == 5_000_000_000
    assert os.listxattr(target / 'f') == ['user.new']
    assert (target / 'f').read_bytes() == b'content'
    tree.make_dir(entry(b'd', E.KIND_DIR))
    tree.set_meta(entry(b'd', E.KIND_DIR, mode=0o705))
    tree.finish()
    assert stat.S_IMODE(os.lstat(target / 'd').st_mode) == 0o705
    with pytest.raises(RestoreError):
        tree.set_meta(entry(b'd', E.KIND_FILE))
    with pytest.raises(RestoreError):
        tree.set_meta(entry(b'missing', E.KIND_FILE))
    with pytest.raises(CorruptRecordError):
        tree.set_meta(entry(b'f', 'z'))


def test_existing_temp_like_name_is_not_clobbered(tree, target):
    put(tree, TMP_PREFIX + b'user-file', b'mine')
    put(tree, b'f', b'x')
    assert (target / (TMP_PREFIX + b'user-file').decode()).read_bytes() \
        == b'mine'
