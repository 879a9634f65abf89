"""Tests that hostile paths and planted symlinks never escape the root."""

from __future__ import annotations

import hashlib
import os

import pytest

from freezer_rsyncv2.errors import (
    RestoreError, Rsyncv2Error, UnsafePathError)
from freezer_rsyncv2.fs import entry as E
from freezer_rsyncv2.fs.restore import RestoreTree
from freezer_rsyncv2.fs.removal import remove_at
from freezer_rsyncv2.fs.safepath import check_path
from tests.unit.fs.entrykit import entry

BAD_PATHS = [
    b'', b'/abs', b'/', b'..', b'../x', b'a/../../x', b'a/..', b'.', b'./a',
    b'a/./b', b'a//b', b'a/', b'a\0b', b'\0', b'x' * 256, b'a/' + b'y' * 256,
    b'a/' * 2048 + b'b',
]


def put(tree: RestoreTree, path: bytes, data: bytes) -> None:
    tree.write_file(entry(path, size=len(data)), [data],
                    hashlib.sha256(data).digest())


def snapshot(root) -> dict:
    """Everything observable under ``root``: names, types, modes, data."""
    result = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            data = None
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, 'rb') as f:
                    data = f.read()
            result[os.path.relpath(path, root)] = (
                st.st_mode, st.st_mtime_ns, st.st_nlink, data)
    st = os.lstat(root)
    result['.'] = (st.st_mode, st.st_mtime_ns, st.st_nlink, None)
    return result


@pytest.fixture
def target(tmp_path):
    return tmp_path / 'restore'


@pytest.fixture
def sentinel(tmp_path):
    """A directory beside the restore root that must never change."""
    outside = tmp_path / 'sentinel'
    outside.mkdir()
    (outside / 'x').write_bytes(b'precious')
    (outside / 'sub').mkdir()
    (outside / 'sub' / 'y').write_bytes(b'also precious')
    return outside


@pytest.fixture
def tree(target):
    with RestoreTree(target, on_warning=lambda p, m: None) as t:
        yield t


@pytest.mark.parametrize('path', BAD_PATHS)
def test_check_path_rejects(path):
    with pytest.raises(UnsafePathError):
        check_path(path)


def test_check_path_rejects_non_bytes():
    with pytest.raises(UnsafePathError):
        check_path('a/b')


@pytest.mark.parametrize('path', [
    b'a', b'a/b/c', b'\xff\xfe/caf\xe9', b'x' * 255, b'...', b'.a/..b',
    b'/'.join([b'd' * 255] * 16),
])
def test_check_path_accepts(path):
    assert check_path(path) == path.split(b'/')
    assert len(b'/'.join([b'd' * 255] * 16)) == 4095


@pytest.mark.parametrize('path', BAD_PATHS)
def test_every_operation_refuses_unsafe_paths(tree, target, path):
    before = snapshot(target)
    operations = [
        lambda: tree.make_dir(entry(path, E.KIND_DIR)),
        lambda: put(tree, path, b'x'),
        lambda: tree.make_symlink(entry(path, E.KIND_SYMLINK,
                                        link_target=b'/etc')),
        lambda: tree.make_fifo(entry(path, E.KIND_FIFO)),
        lambda: tree.make_device(entry(path, E.KIND_CHR, rdev=259)),
        lambda: tree.make_hardlink(entry(b'h', E.KIND_HARDLINK,
                                         hardlink_to=path)),
        lambda: tree.make_hardlink(entry(path, E.KIND_HARDLINK,
                                         hardlink_to=b'h')),
        lambda: tree.remove(path),
        lambda: tree.set_meta(entry(path)),
        lambda: tree.open_basis(path),
    ]
    for operation in operations:
        with pytest.raises(UnsafePathError):
            operation()
    assert snapshot(target) == before


@pytest.fixture
def evil(tree, target, sentinel):
    """``evil`` and ``d/evil``: symlinks inside the tree to the sentinel."""
    tree.make_symlink(entry(b'evil', E.KIND_SYMLINK,
                            link_target=os.fsencode(sentinel)))
    tree.make_dir(entry(b'd', E.KIND_DIR))
    tree.make_symlink(entry(b'd/evil', E.KIND_SYMLINK, link_target=b'../evil'))
    return snapshot(sentinel)


@pytest.mark.parametrize('base', [b'evil', b'd/evil'])
def test_symlink_component_is_never_followed(tree, sentinel, evil, base):
    paths = [base + b'/x', base + b'/new', base + b'/sub/y', base + b'/sub']
    for path in paths:
        operations = [
            lambda: tree.make_dir(entry(path, E.KIND_DIR)),
            lambda: put(tree, path, b'overwritten'),
            lambda: tree.make_symlink(entry(path, E.KIND_SYMLINK,
                                            link_target=b'/')),
            lambda: tree.make_fifo(entry(path, E.KIND_FIFO)),
            lambda: tree.make_device(entry(path, E.KIND_CHR, rdev=259)),
            lambda: tree.remove(path),
            lambda: tree.set_meta(entry(path, mode=0o777)),
            lambda: tree.open_basis(path),
            lambda: tree.make_hardlink(entry(b'h', E.KIND_HARDLINK,
                                             hardlink_to=path)),
        ]
        for operation in operations:
            with pytest.raises(UnsafePathError, match='symlink'):
                operation()
    tree.finish()
    assert snapshot(sentinel) == evil


def test_hardlink_into_symlinked_dir_refused(tree, sentinel, evil):
    put(tree, b'inside', b'data')
    with pytest.raises(UnsafePathError):
        tree.make_hardlink(entry(b'evil/link', E.KIND_HARDLINK,
                                 hardlink_to=b'inside'))
    assert snapshot(sentinel) == evil


def test_level_turning_dir_into_symlink(tree, target, sentinel):
    before = snapshot(sentinel)
    tree.make_dir(entry(b'd', E.KIND_DIR, mode=0o777))
    put(tree, b'd/x', b'first level')
    # A later level says d is now a symlink to the sentinel ...
    tree.make_symlink(entry(b'd', E.KIND_SYMLINK,
                            link_target=os.fsencode(sentinel)))
    # ... and then tries to write, delete and chmod through it.
    with pytest.raises(UnsafePathError):
        put(tree, b'd/x', b'through the link')
    with pytest.raises(UnsafePathError):
        tree.remove(b'd/sub')
    with pytest.raises(UnsafePathError):
        tree.make_dir(entry(b'd/sub', E.KIND_DIR, mode=0o777))
    tree.finish()  # the deferred metadata of the old d must not land there
    assert snapshot(sentinel) == before


def test_finish_skips_dirs_below_an_ancestor_now_a_symlink(
        tree, sentinel):
    before = snapshot(sentinel)
    tree.make_dir(entry(b'a', E.KIND_DIR))
    tree.make_dir(entry(b'a/sub', E.KIND_DIR, mode=0o777, mtime_ns=7))
    tree.make_symlink(entry(b'a', E.KIND_SYMLINK,
                            link_target=os.fsencode(sentinel)))
    tree.finish()  # a/sub would resolve to sentinel/sub: must be skipped
    assert snapshot(sentinel) == before


def test_replacing_a_symlink_does_not_touch_its_target(tree, sentinel):
    before = snapshot(sentinel)
    for kind_op in ('file', 'dir', 'fifo', 'remove'):
        tree.make_symlink(entry(b'l', E.KIND_SYMLINK,
                                link_target=os.fsencode(sentinel / 'x')))
        tree.make_symlink(entry(b'ld', E.KIND_SYMLINK,
                                link_target=os.fsencode(sentinel)))
        if kind_op == 'file':
            put(tree, b'l', b'replaced')
            put(tree, b'ld', b'replaced')
        elif kind_op == 'dir':
            tree.make_dir(entry(b'l', E.KIND_DIR, mode=0o777))
            tree.make_dir(entry(b'ld', E.KIND_DIR, mode=0o777))
        elif kind_op == 'fifo':
            tree.make_fifo(entry(b'l', E.KIND_FIFO))
            tree.make_fifo(entry(b'ld', E.KIND_FIFO))
        else:
            tree.remove(b'l')
            tree.remove(b'ld')
    tree.finish()
    assert snapshot(sentinel) == before


def test_set_meta_on_symlink_never_touches_target(tree, sentinel):
    before = snapshot(sentinel)
    tree.make_symlink(entry(b'l', E.KIND_SYMLINK,
                            link_target=os.fsencode(sentinel / 'x')))
    with pytest.raises(RestoreError):
        tree.set_meta(entry(b'l', E.KIND_FILE, mode=0o777))
    tree.set_meta(entry(b'l', E.KIND_SYMLINK, link_target=b'whatever',
                        mtime_ns=5))
    assert snapshot(sentinel) == before


def test_remove_tree_with_links_to_outside(tree, target, sentinel):
    before = snapshot(sentinel)
    tree.make_dir(entry(b'd', E.KIND_DIR))
    tree.make_dir(entry(b'd/e', E.KIND_DIR))
    tree.make_symlink(entry(b'd/e/out', E.KIND_SYMLINK,
                            link_target=os.fsencode(sentinel)))
    tree.make_symlink(entry(b'd/out', E.KIND_SYMLINK,
                            link_target=os.fsencode(sentinel / 'x')))
    put(tree, b'd/e/f', b'x')
    tree.remove(b'd')
    assert os.listdir(target) == []
    assert snapshot(sentinel) == before


def test_remove_at_survives_dir_swapped_for_link(tmp_path, sentinel):
    before = snapshot(sentinel)
    (tmp_path / 'victim').mkdir()
    os.symlink(sentinel, tmp_path / 'victim' / 'sub')
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert remove_at(fd, b'victim') is True
        assert remove_at(fd, b'victim') is False
    finally:
        os.close(fd)
    assert snapshot(sentinel) == before


def test_hardlink_targets_must_be_restored_regular_files(
        tree, target, sentinel, evil):
    tree.make_symlink(entry(b'tofile', E.KIND_SYMLINK,
                            link_target=os.fsencode(sentinel / 'x')))
    tree.make_dir(entry(b'adir', E.KIND_DIR))
    tree.make_fifo(entry(b'fifo', E.KIND_FIFO))
    for source in (b'never-restored', b'no/such', b'tofile', b'adir',
                   b'fifo'):
        with pytest.raises(RestoreError):
            tree.make_hardlink(entry(b'h', E.KIND_HARDLINK,
                                     hardlink_to=source))
    with pytest.raises(UnsafePathError):
        tree.make_hardlink(entry(b'h', E.KIND_HARDLINK,
                                 hardlink_to=b'../sentinel/x'))
    with pytest.raises(UnsafePathError):
        tree.make_hardlink(entry(b'h', E.KIND_HARDLINK,
                                 hardlink_to=os.fsencode(sentinel / 'x')))
    with pytest.raises(Rsyncv2Error):
        tree.make_hardlink(entry(b'h', E.KIND_HARDLINK, hardlink_to=None))
    put(tree, b'self', b'x')
    with pytest.raises(Rsyncv2Error):
        tree.make_hardlink(entry(b'self', E.KIND_HARDLINK,
                                 hardlink_to=b'self'))
    assert (target / 'self').read_bytes() == b'x'
    assert not os.path.lexists(target / 'h')
    assert snapshot(sentinel) == evil
    assert os.lstat(sentinel / 'x').st_nlink == 1


def test_file_in_the_middle_of_a_path(tree, target):
    put(tree, b'f', b'x')
    with pytest.raises(RestoreError, match='not a directory'):
        put(tree, b'f/child', b'y')
    tree.remove(b'f/child')  # nothing there: fine
    assert tree.open_basis(b'f/child') is None
    assert (target / 'f').read_bytes() == b'x'
