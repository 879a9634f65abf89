"""A Storage on a local (or mounted) filesystem with atomic, fsynced publication of each file."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from typing import Any, BinaryIO

from oslo_log import log

from freezer_rsyncv2.errors import StorageError
from freezer_rsyncv2.storage.base import Storage, StorageFileNotFoundError
from freezer_rsyncv2.storage.layout import Backup

LOG = log.getLogger(__name__)

DEFAULT_MAX_SEGMENT_SIZE = 32 * 1024 * 1024
_COPY_CHUNK = 1024 * 1024


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
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _temp_name(final_path: str) -> str:
    """A hidden sibling of ``final_path``: same directory so rename is atomic."""
    head, tail = os.path.split(final_path)
    return os.path.join(head, f".{tail}.tmp-{uuid.uuid4().hex}")


def _discard(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        LOG.warning("Could not remove temporary file %s: %s", path, exc)


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


def _publish(tmp_path: str, handle: BinaryIO, final_path: str) -> None:
    """fsync and close ``handle`` (of ``tmp_path``), rename to ``final_path``, fsync the dir."""
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    os.replace(tmp_path, final_path)
    _fsync_dir(os.path.dirname(final_path) or ".")


class LocalStorage(Storage):
    """Freezer's layout under a local directory.

    Every file reaches its final name by an atomic rename of an fsynced
    temporary sibling (``.<name>.tmp-<uuid>``), and the directory is fsynced
    after the rename, so a reader or a crash never sees a partial file
    under a final name and a level's metadata is on disk only after its
    data and engine metadata are.
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

    # -- files -------------------------------------------------------------------

    def get_file(self, from_path: str, to_path: str) -> None:
        try:
            shutil.copyfile(from_path, to_path)
        except FileNotFoundError as exc:
            if not os.path.exists(from_path):
                raise StorageFileNotFoundError(from_path) from exc
            raise StorageError(f"cannot write {to_path}: {exc}") from exc
        except OSError as exc:
            raise StorageError(f"cannot copy {from_path} to {to_path}: {exc}") from exc

    def put_file(self, from_path: str, to_path: str) -> None:
        """Copy into ``to_path`` atomically and durably (parents created as needed)."""
        self.create_dirs(os.path.dirname(to_path))
        tmp = _temp_name(to_path)
        try:
            with open(from_path, "rb") as src:
                dst = open(tmp, "xb")
                with dst:
                    shutil.copyfileobj(src, dst, _COPY_CHUNK)
                    _publish(tmp, dst, to_path)
        except FileNotFoundError as exc:
            _discard(tmp)
            if not os.path.exists(from_path):
                raise StorageError(f"local file to upload does not exist: {from_path}") from exc
            raise StorageError(f"cannot write {to_path}: {exc}") from exc
        except OSError as exc:
            _discard(tmp)
            raise StorageError(f"cannot copy {from_path} to {to_path}: {exc}") from exc
        except BaseException:
            _discard(tmp)
            raise

    def write_backup(self, rich_queue: Any, backup: Backup) -> None:
        """Write the queue's segments to a temp file and rename it to ``data`` when complete.

        On any failure (a force-stopped queue, a disk error) the temp file is
        removed, the queue is force-stopped so the producer does not block
        forever, and the error is re-raised: nothing appears under the final
        name.
        """
        backup = backup.copy(self)
        tmp = _temp_name(backup.data_path)
        try:
            self.create_dirs(backup.data_prefix_path)
            with open(tmp, "xb", buffering=0) as dst:
                flusher = _EarlyWriteback(dst.fileno())
                for message in rich_queue.get_messages():
                    _writev_all(dst.fileno(),
                                getattr(message, "pieces", (message,)))
                    flusher.written(len(message))
                _publish(tmp, dst, backup.data_path)
        except BaseException as exc:
            _discard(tmp)
            stop = getattr(rich_queue, "force_stop", None)
            if stop is not None:
                stop()
            if isinstance(exc, OSError):
                raise StorageError(f"cannot write {backup.data_path}: {exc}") from exc
            raise

    def backup_blocks(self, backup: Backup) -> Iterator[bytes]:
        path = backup.copy(self).data_path
        try:
            handle = open(path, "rb")
        except FileNotFoundError as exc:
            raise StorageFileNotFoundError(path) from exc
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc}") from exc
        with handle:
            while True:
                try:
                    chunk = handle.read(self.io_block_size)
                except OSError as exc:
                    raise StorageError(f"cannot read {path}: {exc}") from exc
                if not chunk:
                    return
                yield chunk

    def stored_size(self, path: str) -> int | None:
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot stat {path}: {exc}") from exc

    # -- directories ---------------------------------------------------------------

    def listdir(self, path: str) -> list[str]:
        """Sorted names under ``path``; missing (or not a directory) gives []."""
        try:
            return sorted(os.listdir(path))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise StorageError(f"cannot list {path}: {exc}") from exc

    def create_dirs(self, path: str) -> None:
        """``mkdir -p`` that also fsyncs the parent of each directory it creates."""
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
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot remove {path}: {exc}") from exc
