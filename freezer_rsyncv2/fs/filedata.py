"""Writing restored file data: unique temporary files, sparse writes, kernel-side copies."""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import secrets
from collections.abc import Callable, Iterable
from typing import Protocol

from freezer_rsyncv2.errors import CorruptRecordError, IntegrityError, RestoreError
from freezer_rsyncv2.fs.safepath import show
from freezer_rsyncv2.threads import OrderedWorker

#: Name prefix of in-progress files; never the final name of anything.
TMP_PREFIX = b'.rsyncv2-tmp-'
_TMP_MODE = 0o600
_WRITE_CHUNK = 1 << 20
_ZEROS = memoryview(bytes(_WRITE_CHUNK))
# copy_file_range cannot serve these (old kernel, other file system, ...):
# the range is then copied through a buffer.
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ETXTBSY, errno.EPERM}


@dataclasses.dataclass(frozen=True)
class BasisRange:
    """``length`` bytes at ``offset`` of the open file ``fd`` (a patch's COPY).

    ``write_pieces`` copies it with copy_file_range: the kernel moves the
    data (or shares it, on file systems with reflinks) and Python only
    reads it once more, to hash it.
    """

    fd: int
    offset: int
    length: int


def create_temp(parent: int) -> tuple[int, bytes]:
    """Create a fresh private temporary file in ``parent``; (fd, name).

    O_EXCL|O_NOFOLLOW: an existing name (or a planted symlink) is never
    reused; mode 0o600 until the real metadata is applied.
    """
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC)
    for _ in range(100):
        tmp = TMP_PREFIX + secrets.token_hex(8).encode()
        try:
            return os.open(tmp, flags, _TMP_MODE, dir_fd=parent), tmp
        except FileExistsError:
            continue
    raise RestoreError("cannot create a unique temporary file")


class Hasher(Protocol):
    """The part of a ``digests`` hasher that is used here."""

    def update(self, data: bytes | memoryview, /) -> None: ...

    def zeros(self, length: int, /) -> None: ...


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write until everything is written (writes may be partial)."""
    view = memoryview(data).cast('B')
    while view:
        done = os.write(fd, view)
        view = view[done:]


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Make ``length`` bytes at ``offset`` read as zeros, freeing their blocks.

    fallocate(PUNCH_HOLE) where the file system has it; else the range is
    overwritten with zeros (never past the file's end: a hole there is
    made by the final ftruncate).
    """
    if length <= 0:
        return
    if _fallocate is not None:
        if _fallocate(fd, _PUNCH_HOLE | _KEEP_SIZE, offset, length) == 0:
            return
    end = min(offset + length, os.fstat(fd).st_size)
    while offset < end:
        step = min(end - offset, _WRITE_CHUNK)
        pwrite_all(fd, _ZEROS[:step], offset)
        offset += step


def _libc_fallocate() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    fn.restype = ctypes.c_int
    return fn


_PUNCH_HOLE = 0x02      # FALLOC_FL_PUNCH_HOLE (linux/falloc.h)
_KEEP_SIZE = 0x01       # FALLOC_FL_KEEP_SIZE
_fallocate = _libc_fallocate()


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """os.pwrite until everything is written at ``offset``."""
    view = memoryview(data).cast('B')
    while view:
        done = os.pwrite(fd, view, offset)
        view = view[done:]
        offset += done


def write_pieces(fd: int, pieces: Iterable[bytes | int | BasisRange],
                 hasher: Hasher, path: bytes, limit: int,
                 foreign: list[BaseException],
                 worker: OrderedWorker | None = None) -> tuple[int, int]:
    """Write ``pieces`` to ``fd``; return (logical length, data written).

    Small data pieces are coalesced into 1 MiB writes; holes are skipped
    with lseek and hashed as zeros; a BasisRange is copied kernel-side.
    Going past ``limit`` (the recorded size) fails at once, so a hostile
    hole of petabytes is neither hashed nor seeked to.  An exception
    raised by the iterator itself is recorded in ``foreign`` so it
    propagates untranslated.  With a ``worker``, hashing runs on its
    thread (in the same order) while this one writes; it is done when
    this returns.
    """
    if worker is None:
        return _Writer(fd, hasher, path, limit).run(pieces, foreign)
    try:
        result = _Writer(fd, hasher, path, limit, worker).run(pieces, foreign)
        worker.wait()
        return result
    finally:
        worker.discard()


class _Writer:
    """One file's write loop (see ``write_pieces``)."""

    def __init__(self, fd: int, hasher: Hasher, path: bytes, limit: int, worker: OrderedWorker | None = None) -> None:
        self.fd = fd
        self.hasher = hasher
        self.path = path
        self.limit = limit
        self.worker = worker
        self.pending = bytearray()

    def _hash(self, fn: Callable[..., object], *args: object) -> None:
        if self.worker is None:
            fn(*args)
        else:
            self.worker.submit(fn, *args)

    def _flush(self) -> None:
        if self.pending:
            write_all(self.fd, self.pending)
            self.pending.clear()

    def run(self, pieces: Iterable[bytes | int | BasisRange], foreign: list[BaseException]) -> tuple[int, int]:
        fd, path, limit = self.fd, self.path, self.limit
        update = self.hasher.update
        total = written = 0
        pending = self.pending
        iterator = iter(pieces)
        while True:
            try:
                piece = next(iterator)
            except StopIteration:
                break
            except BaseException as exc:
                foreign.append(exc)
                raise
            if isinstance(piece, int):
                if piece < 0:
                    raise CorruptRecordError(f"{show(path)}: negative hole length {piece}")
                _check_limit(total + piece, limit, path)
                self._flush()
                os.lseek(fd, piece, os.SEEK_CUR)
                total += piece
                self._hash(self.hasher.zeros, piece)
                continue
            if isinstance(piece, BasisRange):
                _check_limit(total + piece.length, limit, path)
                self._flush()
                self._hash(hash_range, update, piece, path)
                copy_range(piece, fd, path)
                total += piece.length
                written += piece.length
                continue
            size = memoryview(piece).nbytes
            _check_limit(total + size, limit, path)
            if self.worker is not None and not isinstance(piece, bytes) \
                    and not (isinstance(piece, memoryview) and piece.readonly):
                piece = bytes(piece)    # the hashing thread must see it as is
            self._hash(update, piece)
            total += size
            written += size
            if len(pending) + size > _WRITE_CHUNK and pending:
                self._flush()
            if size >= _WRITE_CHUNK:
                write_all(fd, piece)
            else:
                pending += piece
        self._flush()
        return total, written


def hash_range(update: Callable[[memoryview], object], piece: BasisRange, path: bytes) -> None:
    """Feed ``update`` the bytes of a basis range, read through one buffer."""
    buf = bytearray(min(piece.length, _WRITE_CHUNK))
    view = memoryview(buf)
    offset, left = piece.offset, piece.length
    while left:
        n = os.preadv(piece.fd, [view[:min(left, len(buf))]], offset)
        if n <= 0:
            raise IntegrityError(f"{show(path)}: the basis file ends before "
                                 f"byte {offset} (changed during restore?)")
        update(view[:n])
        offset += n
        left -= n


def copy_range(piece: BasisRange, fd: int, path: bytes) -> None:
    """Append a basis range to ``fd`` at its file position, kernel-side if possible."""
    offset, left = piece.offset, piece.length
    if not hasattr(os, "copy_file_range"):
        _copy_through_buffer(piece.fd, fd, offset, left, path)
        return
    while left:
        try:
            n = os.copy_file_range(piece.fd, fd, left, offset)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
            _copy_through_buffer(piece.fd, fd, offset, left, path)
            return
        if n <= 0:
            raise IntegrityError(f"{show(path)}: the basis file ends before "
                                 f"byte {offset} (changed during restore?)")
        offset += n
        left -= n


def _copy_through_buffer(src: int, fd: int, offset: int, left: int, path: bytes) -> None:
    while left:
        data = os.pread(src, min(left, _WRITE_CHUNK), offset)
        if not data:
            raise IntegrityError(f"{show(path)}: the basis file ends before "
                                 f"byte {offset} (changed during restore?)")
        write_all(fd, data)
        offset += len(data)
        left -= len(data)


def _check_limit(total: int, limit: int, path: bytes) -> None:
    if total > limit:
        raise IntegrityError(f"{show(path)}: more than the expected "
                             f"{limit} bytes")
