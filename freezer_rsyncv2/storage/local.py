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

import contextlib
import fcntl
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from typing import Any

from oslo_log import log

from freezer_rsyncv2.errors import StorageError
from freezer_rsyncv2.storage.localfs import (
    CREATE_FLAGS, READ_FLAGS, EarlyWriteback, SymlinkInside, copy_to_fd, discard, fsync_dir, fsync_fd,
    kind_of, lock_temp, lstat_at, open_dir_at, remove_at, split_path, temp_name, writev_all)
from freezer_rsyncv2.storage.base import Storage, StorageFileNotFoundError
from freezer_rsyncv2.storage.layout import DATA_NAME, DEFAULT_MAX_SEGMENT_SIZE, Backup, warn_ignored
from freezer_rsyncv2.storage import transfer
from freezer_rsyncv2.storage.local_sweep import LocalSweep

LOG = log.getLogger(__name__)

COPY_CHUNK = 1024 * 1024


class LocalStorage(LocalSweep, Storage):
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

    def usage(self) -> tuple[int, int]:
        total = count = 0
        for root, _dirs, files in os.walk(self.storage_path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except OSError:
                    continue
                count += 1
        return total, count

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
        raises SymlinkInside.  A missing or non-directory component raises
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
                    child = open_dir_at(fd, part, current)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(part, dir_fd=fd)
                        grown.append(os.dup(fd))
                    except FileExistsError:
                        pass    # made meanwhile by another writer: opened below like any other
                    child = open_dir_at(fd, part, current)
                os.close(fd)
                fd = child
            for parent in grown:
                fsync_fd(parent)
        except BaseException:
            os.close(fd)
            raise
        finally:
            for parent in grown:
                os.close(parent)
        return fd

    def _open_parent(self, path: str) -> tuple[int, str]:
        """A descriptor on the directory holding ``path``, and ``path``'s last component."""
        head, name = split_path(path)
        return self._open_dir(head), name

    @contextlib.contextmanager
    def _opened(self, path: str, verb: str, parent: bool = True) -> Iterator[tuple[int, str] | None]:
        """A descriptor on ``path``'s directory and the last name (``parent``), or on ``path``
        itself and "", closed on the way out; None for a path that is missing or reached through
        a symlink inside the container (warned).  Any OSError is a StorageError "cannot {verb}"."""
        opened: tuple[int, str] | None = None
        try:
            opened = self._open_parent(path) if parent else (self._open_dir(path), "")
        except (FileNotFoundError, NotADirectoryError):
            pass
        except SymlinkInside as link:
            warn_ignored(self, link.path, "a symbolic link inside the container: never followed")
        except OSError as exc:
            raise StorageError(f"cannot {verb} {path}: {exc}") from exc
        try:
            yield opened
        except OSError as exc:
            raise StorageError(f"cannot {verb} {path}: {exc}") from exc
        finally:
            if opened is not None:
                os.close(opened[0])

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
        except SymlinkInside as link:
            raise StorageError(f"cannot read {path}: {link.message()}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc}") from exc
        try:
            try:
                fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError as exc:
                raise StorageFileNotFoundError(path) from exc
            except OSError as exc:
                st = lstat_at(dir_fd, name)
                if st is not None and not stat.S_ISREG(st.st_mode):
                    raise StorageError(f"{path} is {kind_of(st.st_mode)}, not a regular file: "
                                       f"refusing to read it") from exc
                raise StorageError(f"cannot read {path}: {exc}") from exc
        finally:
            os.close(dir_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StorageError(f"{path} is {kind_of(st.st_mode)}, not a regular file: refusing to read it")
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
        with self._opened(path, "stat") as at:
            return None if at is None else lstat_at(*at)

    def _dir_for_write(self, path: str) -> int:
        """A descriptor on directory ``path`` (created as needed) or a StorageError saying why not."""
        try:
            return self._open_dir(path, create=True)
        except SymlinkInside as link:
            raise StorageError(f"cannot write under {path}: {link.message()}") from None
        except OSError as exc:
            raise StorageError(f"cannot create directory {path}: {exc}") from exc

    @staticmethod
    def _publish_at(dir_fd: int, name: str, write: Callable[[int], None]) -> None:
        """Write a new file through ``write(fd)``, fsync it, rename it to ``name``, fsync the directory.

        The temporary sibling is created with O_EXCL|O_NOFOLLOW in
        ``dir_fd`` and removed on any failure (an interrupt included), so
        nothing partial ever has the final name and nothing is written
        through a symlink.  It is locked (``flock``) while written: the
        sweep never takes a file a running writer holds.
        """
        tmp = temp_name(name)
        fd = os.open(tmp, CREATE_FLAGS, 0o666, dir_fd=dir_fd)
        try:
            try:
                lock_temp(fd)
                write(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            discard(tmp, dir_fd)
            raise
        fsync_fd(dir_fd)

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

            def chunks() -> Iterator[bytes]:
                copied = 0
                while True:
                    try:
                        chunk = src.read(COPY_CHUNK)
                    except OSError as exc:
                        raise StorageError(f"cannot read {from_path}: {exc}") from exc
                    if not chunk:
                        return
                    copied += len(chunk)
                    if copied > self.max_file_size:
                        raise StorageError(f"{from_path} grew past the {self.max_file_size} "
                                           f"bytes a stored file may hold")
                    yield chunk

            transfer.download(chunks(), to_path)

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
                self._publish_at(dir_fd, name, lambda fd: copy_to_fd(src, fd))
            except OSError as exc:
                raise StorageError(f"cannot copy {from_path} to {to_path}: {exc}") from exc
            finally:
                os.close(dir_fd)

    def _open_parent_for_write(self, path: str) -> tuple[int, str]:
        """As ``_open_parent``, the directories created as needed (StorageError if they cannot be)."""
        head, name = split_path(path)
        return self._dir_for_write(head), name

    def write_backup(self, rich_queue: Any, backup: Backup) -> None:
        """Write the queue's segments to a temp file and rename it to ``data`` when complete.

        On any failure (a force-stopped queue, a disk error) the temp file is
        removed, the queue is force-stopped so the producer does not block
        forever, and the error is re-raised: nothing appears under the final
        name.  ``abandon`` force-stops the queue of an interrupted backup.
        """
        backup = backup.copy(self)

        def write(fd: int) -> None:
            flusher = EarlyWriteback(fd)
            for message in rich_queue.get_messages():
                writev_all(fd, getattr(message, "pieces", (message,)))
                flusher.written(len(message))

        with self._writing(rich_queue, backup):
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

    def _read_range(self, backup: Backup, offset: int, length: int) -> Iterator[bytes]:
        """``read_data``: preads of the range from the level's data file, one chunk at a time."""
        path = backup.data_path
        fd, _st = self._open_object(path)
        try:
            position, end = offset, offset + length
            while position < end:
                try:
                    chunk = os.pread(fd, min(self.io_block_size, end - position), position)
                except OSError as exc:
                    raise StorageError(f"cannot read {path}: {exc}") from exc
                if not chunk:
                    return
                position += len(chunk)
                yield chunk
        finally:
            os.close(fd)

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
        with self._opened(path, "list", parent=False) as at:
            return [] if at is None else sorted(os.listdir(at[0]))

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
            fsync_dir(os.path.dirname(created))

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
        with self._opened(path, "remove") as at:
            if at is not None:
                remove_at(*at)
