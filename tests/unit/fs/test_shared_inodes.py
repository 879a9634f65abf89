"""Metadata only ever lands on inodes no name outside the restore reaches.

A restore over an existing directory may meet names that are hardlinks to
files elsewhere.  Their inode is never changed: a file is replaced by a
private copy first, anything else is refused; inodes the restore linked
itself keep being changed in place, through every name.
"""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from freezer_rsyncv2.errors import RestoreError
from freezer_rsyncv2.fs import entry as E
from freezer_rsyncv2.fs.meta import MetaApplier
from freezer_rsyncv2.fs.restore import RestoreTree
from tests.unit.fs.entrykit import entry

ROOT = os.geteuid() == 0
OWNER = 4321


def put(tree: RestoreTree, path: bytes, data: bytes, **kw) -> None:
    tree.write_file(entry(path, size=len(data), **kw), [data],
                    hashlib.sha256(data).digest())


def state(path) -> tuple:
    st = os.lstat(path)
    return (st.st_ino, st.st_uid, st.st_gid, st.st_mode, st.st_mtime_ns,
            st.st_atime_ns, st.st_nlink)


@pytest.fixture
def outside(tmp_path):
    top = tmp_path / 'outside'
    top.mkdir()
    (top / 'file').write_bytes(b'outside data')
    os.chmod(top / 'file', 0o640)
    os.utime(top / 'file', ns=(10**9, 2 * 10**9))
    return top


@pytest.fixture
def warnings():
    return []


@pytest.fixture
def target(tmp_path):
    return tmp_path / 'restore'


@pytest.fixture
def tree(target, warnings):
    with RestoreTree(target, on_warning=lambda p, m: warnings.append((p, m))
                     ) as t:
        yield t


def test_set_meta_on_a_hardlink_to_outside_restores_a_copy(
        tree, target, outside, warnings):
    before = state(outside / 'file')
    os.link(outside / 'file', target / 'f')
    tree.set_meta(entry(b'f', mode=0o600, mtime_ns=7 * 10**9,
                        atime_ns=7 * 10**9, xattrs={b'user.k': b'v'}))
    after = os.lstat(target / 'f')
    assert after.st_ino != before[0] and after.st_nlink == 1
    assert stat.S_IMODE(after.st_mode) == 0o600
    assert after.st_mtime_ns == 7 * 10**9
    assert (target / 'f').read_bytes() == b'outside data'
    assert state(outside / 'file') == before    # even atime: O_NOATIME
    assert [p for p, m in warnings if 'restored as a copy' in m] == [b'f']
    assert sorted(os.listdir(target)) == ['f']


def test_set_meta_on_a_single_link_applies_in_place(tree, target, warnings):
    (target / 'f').write_bytes(b'mine')
    ino = os.lstat(target / 'f').st_ino
    tree.set_meta(entry(b'f', mode=0o600))
    assert os.lstat(target / 'f').st_ino == ino
    assert stat.S_IMODE(os.lstat(target / 'f').st_mode) == 0o600
    assert warnings == []


def test_links_made_by_the_restore_are_changed_in_place(tree, target,
                                                        warnings):
    put(tree, b'a', b'shared', mode=0o600)
    tree.make_hardlink(entry(b'b', E.KIND_HARDLINK, hardlink_to=b'a',
                             mode=0o600))
    tree.make_hardlink(entry(b'c', E.KIND_HARDLINK, hardlink_to=b'b',
                             mode=0o600))
    tree.set_meta(entry(b'a', mode=0o640, mtime_ns=5 * 10**9))
    a, b, c = (os.lstat(target / n) for n in 'abc')
    assert a.st_ino == b.st_ino == c.st_ino and a.st_nlink == 3
    assert stat.S_IMODE(c.st_mode) == 0o640 and c.st_mtime_ns == 5 * 10**9
    assert warnings == []


def test_hardlink_to_a_hardlink_to_outside_links_a_copy(
        tree, target, outside, warnings):
    before = state(outside / 'file')
    os.link(outside / 'file', target / 'f')
    tree.make_hardlink(entry(b'h', E.KIND_HARDLINK, hardlink_to=b'f',
                             mode=0o604, mtime_ns=3 * 10**9))
    f, h = os.lstat(target / 'f'), os.lstat(target / 'h')
    assert f.st_ino == h.st_ino != before[0] and h.st_nlink == 2
    assert stat.S_IMODE(h.st_mode) == 0o604
    assert (target / 'h').read_bytes() == b'outside data'
    assert state(outside / 'file') == before
    assert [p for p, m in warnings if 'restored as a copy' in m] == [b'f']


def test_hardlink_to_a_pre_existing_single_link_is_linked(tree, target,
                                                          warnings):
    (target / 'f').write_bytes(b'mine')
    ino = os.lstat(target / 'f').st_ino
    tree.make_hardlink(entry(b'h', E.KIND_HARDLINK, hardlink_to=b'f',
                             mode=0o600))
    assert os.lstat(target / 'h').st_ino == ino
    assert warnings == []


def test_copy_keeps_holes(tree, target, outside):
    big = outside / 'sparse'
    with open(big, 'wb') as f:
        f.write(b'head')
        f.seek(64 << 20)
        f.write(b'tail')
    os.link(big, target / 's')
    tree.set_meta(entry(b's', mode=0o600))
    st = os.lstat(target / 's')
    assert st.st_size == (64 << 20) + 4
    if os.lstat(big).st_blocks < 1024:          # the fs keeps holes
        assert st.st_blocks < 1024
    with open(target / 's', 'rb') as f:
        assert f.read(4) == b'head'
        f.seek(64 << 20)
        assert f.read() == b'tail'


@pytest.mark.skipif(not ROOT, reason="chown needs root")
def test_copy_gets_the_entry_owner(tree, target, outside):
    before = state(outside / 'file')
    os.link(outside / 'file', target / 'f')
    tree.set_meta(entry(b'f', uid=OWNER, gid=OWNER, mode=0o4755))
    st = os.lstat(target / 'f')
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == \
        (OWNER, OWNER, 0o4755)
    assert state(outside / 'file') == before


@pytest.mark.parametrize('kind', [E.KIND_SYMLINK, E.KIND_FIFO])
def test_other_kinds_with_foreign_links_are_refused(tree, target, tmp_path,
                                                    kind):
    other = tmp_path / 'other'
    if kind == E.KIND_SYMLINK:
        os.symlink('somewhere', other)
    else:
        os.mkfifo(other, 0o600)
    before = state(other)
    os.link(other, target / 'x', follow_symlinks=False)
    with pytest.raises(RestoreError, match='hard links'):
        tree.set_meta(entry(b'x', kind, mode=0o777, mtime_ns=5,
                            link_target=b'somewhere'))
    os.unlink(target / 'x')
    assert state(other) == before


def test_apply_at_refuses_shared_inodes_unless_vouched_for(tmp_path):
    (tmp_path / 'a').write_bytes(b'x')
    os.link(tmp_path / 'a', tmp_path / 'b')
    ino = os.lstat(tmp_path / 'a').st_ino
    meta = MetaApplier(False, lambda p, m: None)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(RestoreError, match='2 hard links'):
            meta.apply_at(fd, b'b', entry(b'b', mode=0o600))
        assert stat.S_IMODE(os.lstat(tmp_path / 'a').st_mode) != 0o600
        meta.apply_at(fd, b'b', entry(b'b', mode=0o600),
                      shared=lambda st: st.st_ino == ino)
        assert stat.S_IMODE(os.lstat(tmp_path / 'a').st_mode) == 0o600
        # chmod_at (existing directories) never touches a shared file
        meta.chmod_at(fd, b'b', 0o777)
        assert stat.S_IMODE(os.lstat(tmp_path / 'a').st_mode) == 0o600
    finally:
        os.close(fd)


def test_directories_are_never_refused_for_their_link_count(tree, target):
    (target / 'd' / 'sub').mkdir(parents=True)     # nlink 3
    tree.make_dir(entry(b'd', E.KIND_DIR, mode=0o751))
    tree.finish()
    assert stat.S_IMODE(os.lstat(target / 'd').st_mode) == 0o751
