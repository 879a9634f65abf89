"""A Storage on a local (or mounted) filesystem with atomic, fsynced publication of each file.

Below the container directory nothing is followed: every path is walked one
component at a time from the container's descriptor with ``O_NOFOLLOW``, so
a symlink planted inside the container can neither redirect a read (a
``metadata`` linked to ``/dev/zero``) nor a write or a removal (a chain
directory linked to ``/etc``).  Only regular files are read: a FIFO, a
device or a socket under a stored name is refused, never opened for long.
The container itself may be a symlink, or lie below one: the operator
chose that path.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import stat
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from oslo_log import log

from freezer_rsyncv2.errors import StorageError
from freezer_rsyncv2.storage.base import Storage, StorageFileNotFoundError, warn_ignored
from freezer_rsyncv2.storage.layout import DATA_NAME, Backup

LOG = log.getLogger(__name__)

DEFAULT_MAX_SEGMENT_SIZE = 32 * 1024 * 1024
_COPY_CHUNK = 1024 * 1024

# A directory below the container: never through a symlink.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A stored object: O_NONBLOCK so that opening a FIFO cannot wait for a
# writer (it is refused after fstat), O_NOCTTY so that a tty cannot become
# our controlling terminal, O_NOFOLLOW so that a symlink is not followed.
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _kind(mode: int) -> str:
    """What a file that is not a regular file is, for messages."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


class _SymlinkInside(Exception):
    """A directory component below the container is a symlink (``path`` names it)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path

    def message(self) -> str:
        return f"{self.path} is a symbolic link inside the container: it is never followed"


def _fsync_fd(fd: int) -> None:
    """Make the entries of the directory open as ``fd`` durable, where the platform can."""
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise


def _fsync_dir(path: str) -> None:
    """Make directory entries (renames, new children) under ``path`` durable.

    Some platforms/filesystems cannot open or fsync a directory; there the
    rename is as durable as the OS makes it and we carry on.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        _fsync_fd(fd)
    finally:
        os.close(fd)


def _temp_name(final_name: str) -> str:
    """A hidden sibling of ``final_name``: same directory so rename is atomic."""
    head, tail = os.path.split(final_name)
    return os.path.join(head, f".{tail}.tmp-{uuid.uuid4().hex}")


def _discard(path: str, dir_fd: int | None = None) -> None:
    try:
        os.unlink(path, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        LOG.warning("Could not remove temporary file %s: %s", path, exc)


def _split(path: str) -> tuple[str, str]:
    """``path`` as (its directory, its last component), on '/' as storage paths are joined."""
    head, _, name = path.rpartition("/")
    return head or ("/" if path.startswith("/") else "."), name


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """lstat of ``name`` in ``dir_fd``; None when it does not exist."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _open_dir_at(dir_fd: int, name: str, path: str) -> int:
    """Open directory ``name`` of ``dir_fd`` without following a symlink (``path`` for messages)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.EMLINK):
            st = _lstat_at(dir_fd, name)
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise _SymlinkInside(path) from None
        raise


def _remove_at(parent_fd: int, name: str) -> None:
    """Remove ``name`` of ``parent_fd`` and everything below it, following no symlink.

    Iterative (a hostile tree may be deep): directories are opened by
    descriptor, so a symlink anywhere is removed, never entered.
    """
    st = _lstat_at(parent_fd, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    top = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
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
            cst = _lstat_at(dfd, child)
            if cst is None:
                continue
            if not stat.S_ISDIR(cst.st_mode):
                os.unlink(child, dir_fd=dfd)
                continue
            cfd = os.open(child, _DIR_FLAGS, dir_fd=dfd)
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


class _EarlyWriteback:
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


def _writev_all(fd: int, pieces: Any) -> None:
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


class LocalStorage(Storage):
    """Freezer's layout under a local directory.

    Every file reaches its final name by an atomic rename of an fsynced
    temporary sibling (``.<name>.tmp-<uuid>``), and the directory is fsynced
    after the rename, so a reader or a crash never sees a partial file
    under a final name and a level's metadata is on disk only after its
    data and engine metadata are.  Below ``storage_path`` no symlink is
    followed and only regular files are read (module docstring); paths
    outside it (none of the engine's) are used as given.
    """

    _type = "local"

    def __init__(self, storage_path: str | os.PathLike[str],
                 max_segment_size: int = DEFAULT_MAX_SEGMENT_SIZE,
                 skip_prepare: bool = False) -> None:
        # Absolute, so paths stay valid if the process changes directory.
        super().__init__(storage_path=os.path.abspath(os.fspath(storage_path)),
                         max_segment_size=max_segment_size, skip_prepare=skip_prepare)

    def prepare(self) -> None:
        for path in (self.storage_path, os.path.join(self.storage_path, "metadata"),
                     os.path.join(self.storage_path, "data")):
            self.create_dirs(path)

    def info(self) -> list[dict[str, Any]]:
        """One entry for the storage directory, in the shape Freezer's info job prints."""
        total = count = 0
        for root, _dirs, files in os.walk(self.storage_path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except OSError:
                    continue
                count += 1
        megabytes = max(1, total // (1024 * 1024))
        size = f"{megabytes} MB" if megabytes < 1024 else f"{megabytes // 1024} GB"
        return [{"container_name": self.storage_path, "size": size, "objects_count": count}]

    # -- walking the container without following symlinks ---------------------------

    def _inside(self, path: str) -> list[str] | None:
        """Components of ``path`` below the container ([] for the container); None outside it."""
        root = self.storage_path
        if path == root:
            return []
        prefix = root if root.endswith("/") else f"{root}/"
        if not path.startswith(prefix):
            return None
        parts = [part for part in path[len(prefix):].split("/") if part not in ("", ".")]
        if ".." in parts:
            raise StorageError(f"path {path!r} leaves the container {root}")
        return parts

    def _open_dir(self, path: str, create: bool = False) -> int:
        """A descriptor on directory ``path``, created (with its parents) if ``create``.

        The container is opened as the operator named it; each component
        below it from its parent's descriptor with O_NOFOLLOW, so a symlink
        raises _SymlinkInside.  A missing or non-directory component raises
        FileNotFoundError or NotADirectoryError.  Directories created are
        made durable by an fsync of their parents once all exist.
        """
        parts = self._inside(path)
        if parts is None or not parts:
            if create:
                self._makedirs_plain(path)
            return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if create and not os.path.isdir(self.storage_path):
            self._makedirs_plain(self.storage_path)
        fd = os.open(self.storage_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        grown: list[int] = []   # duplicates of the parents of created directories
        current = self.storage_path
        try:
            for part in parts:
                current = f"{current}/{part}"
                try:
                    child = _open_dir_at(fd, part, current)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(part, dir_fd=fd)
                        grown.append(os.dup(fd))
                    except FileExistsError:
                        pass    # made meanwhile by another writer: opened below like any other
                    child = _open_dir_at(fd, part, current)
                os.close(fd)
                fd = child
            for parent in grown:
                _fsync_fd(parent)
        except BaseException:
            os.close(fd)
            raise
        finally:
            for parent in grown:
                os.close(parent)
        return fd

    def _open_parent(self, path: str) -> tuple[int, str]:
        """A descriptor on the directory holding ``path``, and ``path``'s last component."""
        head, name = _split(path)
        return self._open_dir(head), name

    def _open_object(self, path: str) -> tuple[int, os.stat_result]:
        """A descriptor and the fstat of the regular file stored at ``path``.

        Opened with O_NONBLOCK|O_NOFOLLOW and kept only if fstat says it is
        a regular file (O_NONBLOCK is then cleared): a FIFO, a device, a
        socket, a directory or a symlink under the name is a StorageError
        naming it, a missing one a StorageFileNotFoundError.
        """
        if self._inside(path) == []:
            raise StorageError(f"{path} is the container, not an object in it")
        try:
            dir_fd, name = self._open_parent(path)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise StorageFileNotFoundError(path) from exc
        except _SymlinkInside as link:
            raise StorageError(f"cannot read {path}: {link.message()}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc}") from exc
        try:
            try:
                fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError as exc:
                raise StorageFileNotFoundError(path) from exc
            except OSError as exc:
                st = _lstat_at(dir_fd, name)
                if st is not None and not stat.S_ISREG(st.st_mode):
                    raise StorageError(f"{path} is {_kind(st.st_mode)}, not a regular file: "
                                       f"refusing to read it") from exc
                raise StorageError(f"cannot read {path}: {exc}") from exc
        finally:
            os.close(dir_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StorageError(f"{path} is {_kind(st.st_mode)}, not a regular file: refusing to read it")
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot read {path}: {exc}") from exc
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def _stat_object(self, path: str) -> os.stat_result | None:
        """lstat of ``path`` reached without following symlinks; None if there is none."""
        try:
            dir_fd, name = self._open_parent(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except _SymlinkInside as link:
            warn_ignored(self, link.path, "a symbolic link inside the container: never followed")
            return None
        except OSError as exc:
            raise StorageError(f"cannot stat {path}: {exc}") from exc
        try:
            return _lstat_at(dir_fd, name)
        except OSError as exc:
            raise StorageError(f"cannot stat {path}: {exc}") from exc
        finally:
            os.close(dir_fd)

    def _dir_for_write(self, path: str) -> int:
        """A descriptor on directory ``path`` (created as needed) or a StorageError saying why not."""
        try:
            return self._open_dir(path, create=True)
        except _SymlinkInside as link:
            raise StorageError(f"cannot write under {path}: {link.message()}") from None
        except OSError as exc:
            raise StorageError(f"cannot create directory {path}: {exc}") from exc

    @staticmethod
    def _publish_at(dir_fd: int, name: str, write: Callable[[int], None]) -> None:
        """Write a new file through ``write(fd)``, fsync it, rename it to ``name``, fsync the directory.

        The temporary sibling is created with O_EXCL|O_NOFOLLOW in
        ``dir_fd`` and removed on any failure, so nothing partial ever has
        the final name and nothing is written through a symlink.
        """
        tmp = _temp_name(name)
        fd = os.open(tmp, _CREATE_FLAGS, 0o666, dir_fd=dir_fd)
        try:
            try:
                write(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            _discard(tmp, dir_fd)
            raise
        _fsync_fd(dir_fd)

    # -- files -------------------------------------------------------------------

    def get_file(self, from_path: str, to_path: str) -> None:
        """Copy a stored regular file to ``to_path`` (a temporary sibling renamed when complete).

        Refused (StorageError) past ``max_file_size`` bytes, so a hostile
        sparse or growing file cannot fill the local disk.
        """
        fd, st = self._open_object(from_path)
        with os.fdopen(fd, "rb", buffering=0) as src:
            if st.st_size > self.max_file_size:
                raise StorageError(f"{from_path} holds {st.st_size} bytes, more than the "
                                   f"{self.max_file_size} a stored file may hold")
            tmp = _temp_name(to_path)
            try:
                with open(tmp, "xb") as dst:
                    copied = 0
                    while True:
                        try:
                            chunk = src.read(_COPY_CHUNK)
                        except OSError as exc:
                            raise StorageError(f"cannot read {from_path}: {exc}") from exc
                        if not chunk:
                            break
                        copied += len(chunk)
                        if copied > self.max_file_size:
                            raise StorageError(f"{from_path} grew past the {self.max_file_size} "
                                               f"bytes a stored file may hold")
                        dst.write(chunk)
                os.replace(tmp, to_path)
            except OSError as exc:
                _discard(tmp)
                raise StorageError(f"cannot write {to_path}: {exc}") from exc
            except BaseException:
                _discard(tmp)
                raise

    def read_object(self, path: str, limit: int) -> bytes:
        """The stored regular file at ``path``; StorageError, before reading, past ``limit`` bytes."""
        fd, st = self._open_object(path)
        with os.fdopen(fd, "rb") as handle:
            if st.st_size > limit:
                raise StorageError(f"{path} holds {st.st_size} bytes, more than the {limit} "
                                   f"expected there")
            try:
                raw = handle.read(limit + 1)
            except OSError as exc:
                raise StorageError(f"cannot read {path}: {exc}") from exc
        if len(raw) > limit:
            raise StorageError(f"{path} grew past the {limit} bytes expected there")
        return raw

    def put_file(self, from_path: str, to_path: str) -> None:
        """Copy into ``to_path`` atomically and durably (parents created as needed)."""
        try:
            src = open(from_path, "rb")
        except FileNotFoundError as exc:
            raise StorageError(f"local file to upload does not exist: {from_path}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read local file {from_path}: {exc}") from exc
        with src:
            dir_fd, name = self._open_parent_for_write(to_path)
            try:
                self._publish_at(dir_fd, name, lambda fd: _copy_to_fd(src, fd))
            except OSError as exc:
                raise StorageError(f"cannot copy {from_path} to {to_path}: {exc}") from exc
            finally:
                os.close(dir_fd)

    def _open_parent_for_write(self, path: str) -> tuple[int, str]:
        """As ``_open_parent``, the directories created as needed (StorageError if they cannot be)."""
        head, name = _split(path)
        return self._dir_for_write(head), name

    def write_backup(self, rich_queue: Any, backup: Backup) -> None:
        """Write the queue's segments to a temp file and rename it to ``data`` when complete.

        On any failure (a force-stopped queue, a disk error) the temp file is
        removed, the queue is force-stopped so the producer does not block
        forever, and the error is re-raised: nothing appears under the final
        name.
        """
        backup = backup.copy(self)

        def write(fd: int) -> None:
            flusher = _EarlyWriteback(fd)
            for message in rich_queue.get_messages():
                _writev_all(fd, getattr(message, "pieces", (message,)))
                flusher.written(len(message))

        try:
            dir_fd = self._dir_for_write(backup.data_prefix_path)
            try:
                self._publish_at(dir_fd, DATA_NAME, write)
            finally:
                os.close(dir_fd)
        except BaseException as exc:
            stop = getattr(rich_queue, "force_stop", None)
            if stop is not None:
                stop()
            if isinstance(exc, OSError):
                raise StorageError(f"cannot write {backup.data_path}: {exc}") from exc
            raise

    def backup_blocks(self, backup: Backup) -> Iterator[bytes]:
        """The level's data, a regular file read no further than its metadata declares.

        Data larger than the ``stored_bytes`` of the level's metadata is
        refused before it is read; shorter data is read as it is (the
        decoder reports the truncation, naming the level).
        """
        backup = backup.copy(self)
        path = backup.data_path
        fd, st = self._open_object(path)
        with os.fdopen(fd, "rb", buffering=0) as handle:
            declared = self.declared_data_size(backup)
            if declared is not None and st.st_size > declared:
                raise StorageError(f"{path} holds {st.st_size} bytes, more than the {declared} "
                                   f"its level's metadata declares")
            remaining = st.st_size
            while remaining > 0:
                try:
                    chunk = handle.read(min(self.io_block_size, remaining))
                except OSError as exc:
                    raise StorageError(f"cannot read {path}: {exc}") from exc
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk

    def stored_size(self, path: str) -> int | None:
        """Bytes of the regular file at ``path``; None for none (or a symlink, FIFO, directory...)."""
        st = self._stat_object(path)
        return st.st_size if st is not None and stat.S_ISREG(st.st_mode) else None

    def is_published(self, metadata_path: str) -> bool:
        """A level is published by a regular file under its ``metadata`` name, nothing else."""
        return self.stored_size(metadata_path) is not None

    # -- directories ---------------------------------------------------------------

    def listdir(self, path: str) -> list[str]:
        """Sorted names under ``path``; missing (or not a directory, or a symlink inside) gives []."""
        try:
            fd = self._open_dir(path)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except _SymlinkInside as link:
            warn_ignored(self, link.path, "a symbolic link inside the container: never followed")
            return []
        except OSError as exc:
            raise StorageError(f"cannot list {path}: {exc}") from exc
        try:
            return sorted(os.listdir(fd))
        except OSError as exc:
            raise StorageError(f"cannot list {path}: {exc}") from exc
        finally:
            os.close(fd)

    def create_dirs(self, path: str) -> None:
        """``mkdir -p`` that also fsyncs the parent of each directory it creates.

        Below the container no symlink is followed: a symlink where a
        directory should be is a StorageError.
        """
        os.close(self._dir_for_write(path))

    @staticmethod
    def _makedirs_plain(path: str) -> None:
        """``mkdir -p`` of the container (or a path outside it): the operator's path, as given."""
        missing = []
        current = os.path.abspath(path)
        while not os.path.isdir(current):
            missing.append(current)
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create directory {path}: {exc}") from exc
        for created in reversed(missing):
            _fsync_dir(os.path.dirname(created))

    def rmtree(self, path: str) -> None:
        """Remove ``path`` and everything below it; a missing path is a no-op.

        Below the container nothing is followed: a symlink is removed, not
        entered, and a path reached through a symlinked directory is not
        ours to remove (warned, left alone).
        """
        parts = self._inside(path)
        if parts is None or not parts:
            try:
                shutil.rmtree(path)
            except FileNotFoundError:
                return
            except OSError as exc:
                raise StorageError(f"cannot remove {path}: {exc}") from exc
            return
        try:
            dir_fd, name = self._open_parent(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except _SymlinkInside as link:
            warn_ignored(self, link.path, "a symbolic link inside the container: never followed")
            return
        except OSError as exc:
            raise StorageError(f"cannot remove {path}: {exc}") from exc
        try:
            _remove_at(dir_fd, name)
        except OSError as exc:
            raise StorageError(f"cannot remove {path}: {exc}") from exc
        finally:
            os.close(dir_fd)


def _copy_to_fd(src: Any, fd: int) -> None:
    """Copy the open file ``src`` to descriptor ``fd`` (writes may be partial)."""
    while True:
        chunk = src.read(_COPY_CHUNK)
        if not chunk:
            return
        _writev_all(fd, (chunk,))
