"""Directory descriptors for deep trees: bounded in number, cheap per entry.

``FdChain`` keeps a logarithmic set of a path's directories open,
``DirCache`` reuses the previous entry's chain, ``remove_at`` empties a tree
of any depth under a low descriptor limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import stat
from typing import Any

import pytest

from freezer_rsyncv2.errors import RestoreError, UnsafePathError
from freezer_rsyncv2.fs import entry as E
from freezer_rsyncv2.fs import safepath
from freezer_rsyncv2.fs.dircache import CHAIN_FAN, DirCache, FdChain, is_kept
from freezer_rsyncv2.fs.removal import remove_at
from freezer_rsyncv2.fs.restore import RestoreTree
from freezer_rsyncv2.fs.safepath import open_dir
from tests.unprivileged import run_unprivileged
from tests.unit.fs import entrykit


def entry(path: bytes, kind: str = E.KIND_FILE, **kw: Any) -> E.Entry:
    return entrykit.entry(path, kind, **{"mode": 0o755, **kw})


@pytest.fixture(autouse=True)
def scrub(tmp_path):
    """Remove this test's deep trees: pytest's own clean-up of old temporary
    directories (shutil.rmtree, recursive) fails on 1,000 nested levels."""
    yield
    scrub_dir(tmp_path)


def scrub_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in os.listdir(fd):
            remove_at(fd, os.fsencode(name))
    finally:
        os.close(fd)


def open_fds() -> int:
    return len(os.listdir('/proc/self/fd'))


@contextlib.contextmanager
def fd_limit(extra: int):
    """RLIMIT_NOFILE lowered to what is open now plus ``extra``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Descriptors are allocated lowest first: the limit must clear the
    # highest one open, not only their count.
    highest = max(int(n) for n in os.listdir('/proc/self/fd'))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1 + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def make_chain(root, depth: int, name: bytes = b'd',
               files: bool = False) -> list[tuple[int, int]]:
    """mkdir ``name`` ``depth`` times nested (by descriptor: no path limit);
    the (dev, ino) of each level."""
    ids = []
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            if files:
                os.close(os.open(b'f', os.O_CREAT | os.O_WRONLY, 0o600,
                                 dir_fd=fd))
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
            st = os.fstat(fd)
            ids.append((st.st_dev, st.st_ino))
    finally:
        os.close(fd)
    return ids


def held(chain: FdChain) -> int:
    return sum(fd is not None for fd in chain._fds)


# -- which levels stay open --------------------------------------------------

@pytest.mark.parametrize('top', [1, 15, 16, 17, 255, 256, 257, 2047, 2048,
                                 4096, 70000])
def test_kept_levels_are_few_and_include_the_deepest(top):
    kept = [level for level in range(1, top + 1) if is_kept(level, top)]
    assert kept[-1] == top
    # at most CHAIN_FAN per power of CHAIN_FAN
    powers = 1
    while CHAIN_FAN ** powers <= top:
        powers += 1
    assert len(kept) <= CHAIN_FAN * powers
    if top <= 4096:
        assert len(kept) <= 48      # deepest path a record names: 2048


def test_kept_levels_shrink_with_the_chain():
    """What a chain keeps at some depth it still keeps higher up (going up
    never needs a level it closed on the way down, but re-opens)."""
    for top in range(1, 600):
        for level in range(1, top):
            if is_kept(level, top):
                assert all(is_kept(level, t) for t in range(level, top + 1))


# -- FdChain ---------------------------------------------------------------

def test_chain_holds_few_descriptors_and_reopens_the_right_ones(tmp_path):
    depth = 3000
    ids = make_chain(tmp_path, depth)
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    chain = FdChain(root)
    try:
        fd = root
        for level in range(1, depth + 1):
            nxt = os.open(b'd', safepath.DIR_WALK_FLAGS, dir_fd=fd)
            chain.push(b'd', nxt)
            fd = chain.fd()
            assert held(chain) <= 48
        opens = 0
        real_open = os.open

        def counting(*args, **kwargs):
            nonlocal opens
            opens += 1
            return real_open(*args, **kwargs)
        os.open = counting
        try:
            for level in range(depth, 0, -1):
                chain.truncate(level)
                st = os.fstat(chain.fd())
                assert (st.st_dev, st.st_ino) == ids[level - 1]
                assert held(chain) <= 48
        finally:
            os.open = real_open
        assert opens <= 3 * depth     # amortized O(1) per level going up
    finally:
        chain.close()
        os.close(root)


def test_chain_refuses_a_directory_replaced_while_closed(tmp_path):
    make_chain(tmp_path, 40)
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    chain = FdChain(root)
    try:
        fd = root
        for _ in range(40):
            chain.push(b'd', os.open(b'd', safepath.DIR_WALK_FLAGS,
                                     dir_fd=fd))
            fd = chain.fd()
        chain.truncate(20)          # level 20 was closed at level 32
        middle = os.path.join(tmp_path, *['d'] * 19)
        os.rename(os.path.join(middle, 'd'), tmp_path / 'moved')
        os.mkdir(os.path.join(middle, 'd'))
        with pytest.raises(RestoreError, match='replaced while in use'):
            chain.fd()
    finally:
        chain.close()
        os.close(root)


# -- DirCache ----------------------------------------------------------------

def test_cache_finds_what_open_dir_finds(tmp_path):
    for path in ('a/b/c', 'a/b/d', 'a/e', 'f/g/h/i'):
        os.makedirs(tmp_path / path)
    (tmp_path / 'a' / 'file').write_bytes(b'x')
    os.symlink('/', tmp_path / 'a' / 'b' / 'link')
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    cache = DirCache(root)
    try:
        for path in (b'a/b/c', b'a/b/d', b'a/b', b'a/e', b'f/g/h/i', b'a',
                     b'f/g', b'a/b/c', b'', b'missing/x', b'a/file/x',
                     b'a/b/c'):
            parts = path.split(b'/') if path else []
            got = cache.lookup(parts, path, create=False)
            want = open_dir(root, parts, path, create=False)
            if want is None:
                assert got is None
                continue
            try:
                assert os.fstat(got).st_ino == os.fstat(want).st_ino
            finally:
                os.close(want)
        for path in (b'a/b/link', b'a/b/link/x'):
            with pytest.raises(UnsafePathError, match='symlink'):
                cache.lookup(path.split(b'/'), path, create=False)
        with pytest.raises(RestoreError, match='not a directory'):
            cache.lookup([b'a', b'file', b'x'], b'a/file/x/y', create=True)
        made = cache.lookup([b'a', b'new', b'deeper'], b'a/new/deeper/f',
                            create=True)
        assert stat.S_IMODE(os.fstat(made).st_mode) == 0o700
    finally:
        cache.close()
        os.close(root)


def test_cache_forgets_a_removed_directory(tmp_path):
    os.makedirs(tmp_path / 'a' / 'b' / 'c')
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    cache = DirCache(root)
    try:
        cache.lookup([b'a', b'b', b'c'], b'a/b/c/f', create=False)
        cache.invalidate([b'a', b'b'])
        os.rename(tmp_path / 'a' / 'b', tmp_path / 'elsewhere')
        os.symlink('/', tmp_path / 'a' / 'b')
        with pytest.raises(UnsafePathError):
            cache.lookup([b'a', b'b', b'c'], b'a/b/c/f', create=False)
        assert cache.lookup([b'a'], b'a/f', create=False) is not None
    finally:
        cache.close()
        os.close(root)


# -- remove_at -----------------------------------------------------------------

def test_remove_a_very_deep_tree_under_a_low_descriptor_limit(tmp_path):
    base = tmp_path / 'base'
    base.mkdir()
    make_chain(base, 5000, files=True)
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        before = open_fds()
        with fd_limit(64):
            assert remove_at(fd, b'd') is True
        assert open_fds() == before
    finally:
        os.close(fd)
    assert os.listdir(base) == ['f']


def test_remove_a_wide_and_deep_tree(tmp_path):
    base = tmp_path / 'base'
    for i in range(20):
        os.makedirs(base / 't' / ('%02d' % i) / 'x' / 'y')
        (base / 't' / ('%02d' % i) / 'x' / 'f').write_bytes(b'f')
        os.symlink(tmp_path, base / 't' / ('%02d' % i) / 'x' / 'y' / 'l')
    make_chain(base / 't' / '07', 600, files=True)
    (tmp_path / 'keep').write_bytes(b'keep')
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with fd_limit(48):
            assert remove_at(fd, b't') is True
    finally:
        os.close(fd)
    assert os.listdir(base) == []
    assert (tmp_path / 'keep').read_bytes() == b'keep'


# -- RestoreTree over a deep tree --------------------------------------------

def test_restore_cost_per_entry_does_not_grow_with_depth(tmp_path,
                                                         monkeypatch):
    """A chain of directories with a file at each level: the descriptors
    opened per entry stay a small constant at any depth."""
    opened = {'n': 0}
    real_open = os.open

    def counting(*args, **kwargs):
        opened['n'] += 1
        return real_open(*args, **kwargs)

    per_entry = {}
    for depth in (250, 1000, 2000):
        root = tmp_path / str(depth)
        dirs = [b'/'.join([b'a'] * k) for k in range(1, depth + 1)]
        monkeypatch.setattr(os, 'open', counting)
        opened['n'] = 0
        with fd_limit(80), RestoreTree(root, on_warning=lambda p, m: None
                                       ) as tree:
            for d in dirs:
                tree.make_dir(entry(d, E.KIND_DIR, mode=0o750))
            for d in reversed(dirs):
                data = d[-16:]
                tree.write_file(entry(d + b'/f', size=len(data)), [data],
                                hashlib.sha256(data).digest())
            tree.remove(dirs[depth // 2] + b'/f')
        monkeypatch.setattr(os, 'open', real_open)
        per_entry[depth] = opened['n'] / (2 * depth)
        fd = real_open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            cur = fd
            for _ in range(depth):
                nxt = real_open(b'a', os.O_RDONLY | os.O_DIRECTORY,
                                dir_fd=cur)
                if cur != fd:
                    os.close(cur)
                cur = nxt
            st = os.fstat(cur)
            assert stat.S_IMODE(st.st_mode) == 0o750
            with open(real_open(b'f', os.O_RDONLY, dir_fd=cur), 'rb') as f:
                assert f.read() == b'/'.join([b'a'] * depth)[-16:]
            os.close(cur)
        finally:
            os.close(fd)
    assert per_entry[2000] <= 8
    assert per_entry[2000] <= per_entry[250] * 1.5


def test_tree_replaces_and_removes_deep_directories(tmp_path):
    depth = 2000
    dirs = [b'/'.join([b'a'] * k) for k in range(1, depth + 1)]
    root = tmp_path / 'r'
    with fd_limit(80), RestoreTree(root, on_warning=lambda p, m: None
                                   ) as tree:
        for d in dirs:
            tree.make_dir(entry(d, E.KIND_DIR))
        tree.write_file(entry(b'a', size=4), [b'file'],
                        hashlib.sha256(b'file').digest())
        assert (root / 'a').read_bytes() == b'file'
        for d in dirs:
            tree.make_dir(entry(d, E.KIND_DIR))
        tree.make_symlink(entry(b'a', E.KIND_SYMLINK, link_target=b'x'))
        assert os.readlink(root / 'a') == 'x'
        for d in dirs:
            tree.make_dir(entry(d, E.KIND_DIR))
        tree.remove(b'a')
    assert os.listdir(root) == []


def test_finish_sets_children_before_their_parents(tmp_path):
    """Reverse tree order: a directory that becomes unsearchable (0o000)
    is finished after everything below it, also without permission
    override, and siblings such as ``a.b`` do not get in between."""
    root = tmp_path / 'r'

    def restore() -> None:
        with RestoreTree(root, on_warning=lambda p, m: None) as tree:
            for path, mode in ((b'a', 0o000), (b'a/b', 0o700),
                               (b'a/b/c', 0o555), (b'a.b', 0o500),
                               (b'a/z', 0o000), (b'a/z/deep', 0o711)):
                tree.make_dir(entry(path, E.KIND_DIR, mode=mode,
                                    mtime_ns=len(path) * 10**9))
            tree.write_file(entry(b'a/b/c/f', size=1), [b'x'],
                            hashlib.sha256(b'x').digest())
    run_unprivileged(restore)
    os.chmod(root / 'a', 0o700)
    os.chmod(root / 'a' / 'z', 0o700)
    for path, mode in (('a/b', 0o700), ('a/b/c', 0o555), ('a.b', 0o500),
                       ('a/z/deep', 0o711)):
        st = os.lstat(root / path)
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == \
            (mode, len(path) * 10**9), path
