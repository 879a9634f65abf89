"""Recursive removal below a directory descriptor that never follows a symlink, at any depth."""

from __future__ import annotations

import errno
import os
import stat

from freezer_rsyncv2.fs.dircache import FdChain
from freezer_rsyncv2.fs.safepath import lstat_at

# Listing a directory (for recursive removal) needs a real descriptor.
DIR_LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _make_writable(fd: int, st: os.stat_result) -> None:
    """Give the owner rwx on a directory we are about to empty.

    Needed when not root: a directory restored read-only cannot have its
    entries unlinked otherwise.  Best effort (fails if not ours).
    """
    if st.st_mode & 0o700 != 0o700:
        try:
            os.chmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
        except OSError:
            pass


def _listdir_fd(fd: int) -> list[bytes]:
    return [os.fsencode(n) for n in os.listdir(fd)]


def _open_listing(dir_fd: int, name: bytes, st: os.stat_result) -> tuple[int, list[bytes]] | None:
    """Open directory ``name`` to empty it: (descriptor, its entries).

    None when it is gone; a symlink or file swapped in is unlinked
    (never followed) and also gives None.
    """
    try:
        fd = os.open(name, DIR_LIST_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):  # swapped: not a dir
            _unlink_quiet(dir_fd, name)
            return None
        if exc.errno == errno.ENOENT:
            return None
        raise
    try:
        _make_writable(fd, st)
        return fd, _listdir_fd(fd)
    except BaseException:
        os.close(fd)
        raise


def remove_at(dir_fd: int, name: bytes) -> bool:
    """Remove whatever ``name`` is in ``dir_fd``; directories recursively.

    Never follows a symlink: a symlink is unlinked, never descended, and
    subdirectories are entered by descriptor with O_NOFOLLOW, so a link
    swapped in mid-removal is removed rather than followed.  Iterative,
    with the directories being emptied held in an ``FdChain``: neither
    Python's recursion limit nor the descriptor limit bounds the depth
    (a few dozen descriptors at depth 2,000).  Returns True if something
    was removed, False if nothing was there.
    """
    st = lstat_at(dir_fd, name)
    if st is None:
        return False
    if not stat.S_ISDIR(st.st_mode):
        _unlink_quiet(dir_fd, name)
        return True
    opened = _open_listing(dir_fd, name, st)
    if opened is None:     # gone, or swapped for a non-directory (unlinked)
        return True
    chain = FdChain(dir_fd)
    chain.push(name, opened[0])
    # What is left to remove in each directory of the chain.
    pending: list[list[bytes]] = [opened[1]]
    try:
        while pending:
            children = pending[-1]
            if not children:
                own = chain.names[-1]
                pending.pop()
                chain.truncate(chain.depth - 1)
                try:
                    os.rmdir(own, dir_fd=chain.fd())
                except FileNotFoundError:
                    pass
                continue
            child = children.pop()
            fd = chain.fd()
            cst = lstat_at(fd, child)
            if cst is None:
                continue
            if not stat.S_ISDIR(cst.st_mode):
                _unlink_quiet(fd, child)
                continue
            opened = _open_listing(fd, child, cst)
            if opened is None:
                continue
            chain.push(child, opened[0])
            pending.append(opened[1])
    finally:
        chain.close()
    return True


def _unlink_quiet(dir_fd: int, name: bytes) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
