"""File operations of the local storage, relative to open directories.

Nothing here follows a symlink below the container: directories are opened
one component at a time with ``O_NOFOLLOW``, objects are created with
``O_EXCL|O_NOFOLLOW`` and published by a rename inside their open
directory, removals never enter a symlink.  ``storage/local.py`` is the
``Storage`` built on them.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import stat
import sys
import uuid
from collections.abc import Iterator
from typing import Any

from oslo_log import log

LOG = log.getLogger(__name__)

COPY_CHUNK = 1024 * 1024

# A directory below the container: never through a symlink.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A stored object: O_NONBLOCK so that opening a FIFO cannot wait for a
# writer (it is refused after fstat), O_NOCTTY so that a tty cannot become
# our controlling terminal, O_NOFOLLOW so that a symlink is not followed.
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def kind_of(mode: int) -> str:
    """What a file that is not a regular file is, for messages."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


class SymlinkInside(Exception):
    """A directory component below the container is a symlink (``path`` names it)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path

    def message(self) -> str:
        return f"{self.path} is a symbolic link inside the container: it is never followed"


def fsync_fd(fd: int) -> None:
    """Make the entries of the directory open as ``fd`` durable, where the platform can."""
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise


def fsync_dir(path: str) -> None:
    """Make directory entries (renames, new children) under ``path`` durable.

    Some platforms/filesystems cannot open or fsync a directory; there the
    rename is as durable as the OS makes it and we carry on.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fsync_fd(fd)
    finally:
        os.close(fd)


def temp_name(final_name: str) -> str:
    """A hidden sibling of ``final_name``: same directory so rename is atomic."""
    head, tail = os.path.split(final_name)
    return os.path.join(head, f".{tail}.tmp-{uuid.uuid4().hex}")


#: What ``temp_name`` makes (a uuid4 in hex): only such names are swept.
TEMP_NAME_RE = re.compile(r"\..+\.tmp-[0-9a-f]{32}", re.DOTALL)


def lock_temp(fd: int) -> None:
    """Mark the temporary file open as ``fd`` as being written (flock; best effort).

    The lock goes with the descriptor: a writer that dies drops it.  The
    sweep skips a locked file whatever its age.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass        # a file system without flock: the age alone protects it


def walk_files(fd: int, path: str) -> Iterator[tuple[int, str, str, os.stat_result]]:
    """Every file and directory below the directory open as ``fd``, following no symlink.

    Yields (descriptor of its directory, its name, its path, its lstat);
    a directory is yielded before what it holds.  The descriptors are
    closed once their directory is done.  Entries that vanish meanwhile
    are skipped.
    """
    stack = [(os.dup(fd), path)]
    try:
        while stack:
            dfd, dpath = stack.pop()
            try:
                names = sorted(os.listdir(dfd))
                for name in names:
                    st = lstat_at(dfd, name)
                    if st is None:
                        continue
                    child = f"{dpath}/{name}"
                    yield dfd, name, child, st
                    if stat.S_ISDIR(st.st_mode):
                        try:
                            stack.append((os.open(name, DIR_FLAGS, dir_fd=dfd), child))
                        except (FileNotFoundError, NotADirectoryError):
                            continue
            finally:
                os.close(dfd)
    finally:
        for dfd, _path in stack:
            os.close(dfd)


def remove_stale_temp(dir_fd: int, name: str, cutoff: float) -> tuple[str, int]:
    """Remove temporary file ``name`` of ``dir_fd`` if stale: ("removed", size).

    Stale: a regular file last modified before ``cutoff`` that no writer
    holds locked (``lock_temp``).  Otherwise ("young" | "locked" | "gone", 0).
    The name is unlinked only if it still names the inode checked.
    """
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return "gone", 0
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            return "gone", 0    # a symlink or a socket: not one of ours
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "gone", 0
        if st.st_mtime > cutoff:
            return "young", 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "locked", 0
        except OSError:
            pass        # no flock here: the age decides
        again = lstat_at(dir_fd, name)
        if again is None or (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
            return "gone", 0
        os.unlink(name, dir_fd=dir_fd)
        return "removed", st.st_size
    finally:
        os.close(fd)


def discard(path: str, dir_fd: int | None = None) -> None:
    try:
        os.unlink(path, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        LOG.warning("Could not remove temporary file %s: %s", path, exc)


def split_path(path: str) -> tuple[str, str]:
    """``path`` as (its directory, its last component), on '/' as storage paths are joined."""
    head, _, name = path.rpartition("/")
    return head or ("/" if path.startswith("/") else "."), name


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """lstat of ``name`` in ``dir_fd``; None when it does not exist."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None


def open_dir_at(dir_fd: int, name: str, path: str) -> int:
    """Open directory ``name`` of ``dir_fd`` without following a symlink (``path`` for messages)."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.EMLINK):
            st = lstat_at(dir_fd, name)
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise SymlinkInside(path) from None
        raise


def remove_at(parent_fd: int, name: str) -> None:
    """Remove ``name`` of ``parent_fd`` and everything below it, following no symlink.

    Iterative (a hostile tree may be deep): directories are opened by
    descriptor, so a symlink anywhere is removed, never entered.
    """
    st = lstat_at(parent_fd, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    top = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    stack: list[tuple[int, str, int, list[str]]] = []
    try:
        stack.append((parent_fd, name, top, os.listdir(top)))
    except BaseException:
        os.close(top)
        raise
    try:
        while stack:
            pfd, pname, dfd, names = stack[-1]
            if not names:
                stack.pop()
                os.close(dfd)
                os.rmdir(pname, dir_fd=pfd)
                continue
            child = names.pop()
            cst = lstat_at(dfd, child)
            if cst is None:
                continue
            if not stat.S_ISDIR(cst.st_mode):
                os.unlink(child, dir_fd=dfd)
                continue
            cfd = os.open(child, DIR_FLAGS, dir_fd=dfd)
            try:
                stack.append((dfd, child, cfd, os.listdir(cfd)))
            except BaseException:
                os.close(cfd)
                raise
    finally:
        for _pfd, _pname, dfd, _names in stack:
            os.close(dfd)


_IOV_MAX = 1024
_WRITEBACK_STEP = 8 << 20
_SYNC_FILE_RANGE_WRITE = 2      # <linux/fs.h>: start writeback, do not wait


def _sync_file_range() -> Any:
    """libc's sync_file_range (Linux), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


class EarlyWriteback:
    """Starts the disk writes of a growing file while it grows.

    The final fsync then waits for the tail only, not for the whole level:
    the disk works while the engine reads and hashes.  Best effort: without
    sync_file_range, or when it fails, the fsync does it all.
    """

    call = _sync_file_range()

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = self.started = 0

    def written(self, n: int) -> None:
        self.size += n
        if self.call is None or self.size - self.started < _WRITEBACK_STEP:
            return
        if self.call(self.fd, self.started, self.size - self.started,
                     _SYNC_FILE_RANGE_WRITE) == 0:
            self.started = self.size


def writev_all(fd: int, pieces: Any) -> None:
    """Write the pieces in order with writev (no join); writes may be partial."""
    views = [memoryview(p).cast("B") for p in pieces if len(p)]
    first = 0
    while first < len(views):
        done = os.writev(fd, views[first:first + _IOV_MAX])
        while first < len(views) and done >= len(views[first]):
            done -= len(views[first])
            first += 1
        if done:
            views[first] = views[first][done:]


def copy_to_fd(src: Any, fd: int) -> None:
    """Copy the open file ``src`` to descriptor ``fd`` (writes may be partial)."""
    while True:
        chunk = src.read(COPY_CHUNK)
        if not chunk:
            return
        writev_all(fd, (chunk,))
