"""Writing restored file data: unique temporary files and sparse writes."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from typing import Protocol

from freezer_rsyncv2.errors import (
    CorruptRecordError, IntegrityError, RestoreError)
from freezer_rsyncv2.fs.safepath import show

#: Name prefix of in-progress files; never the final name of anything.
TMP_PREFIX = b'.rsyncv2-tmp-'
_TMP_MODE = 0o600
_WRITE_CHUNK = 1 << 20
_ZEROS = memoryview(bytes(_WRITE_CHUNK))


def create_temp(parent: int) -> tuple[int, bytes]:
    """Create a fresh private temporary file in ``parent``; (fd, name).

    O_EXCL|O_NOFOLLOW: an existing name (or a planted symlink) is never
    reused; mode 0o600 until the real metadata is applied.
    """
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
             | os.O_CLOEXEC)
    for _ in range(100):
        tmp = TMP_PREFIX + secrets.token_hex(8).encode()
        try:
            return os.open(tmp, flags, _TMP_MODE, dir_fd=parent), tmp
        except FileExistsError:
            continue
    raise RestoreError("cannot create a unique temporary file")


class Hasher(Protocol):
    """The part of a hashlib object that is used here."""

    def update(self, data: bytes | memoryview, /) -> None: ...


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write until everything is written (writes may be partial)."""
    view = memoryview(data).cast('B')
    while view:
        done = os.write(fd, view)
        view = view[done:]


def write_pieces(fd: int, pieces: Iterable[bytes | int], hasher: Hasher,
                 path: bytes, limit: int,
                 foreign: list[BaseException]) -> tuple[int, int]:
    """Write ``pieces`` to ``fd``; return (logical length, data written).

    Small data pieces are coalesced into 1 MiB writes; holes are skipped
    with lseek and hashed as zeros.  Going past ``limit`` (the recorded
    size) fails at once, so a hostile hole of petabytes is neither hashed
    nor seeked to.  An exception raised by the iterator itself is
    recorded in ``foreign`` so it propagates untranslated.
    """
    total = written = 0
    pending = bytearray()
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
                raise CorruptRecordError(
                    f"{show(path)}: negative hole length {piece}")
            _check_limit(total + piece, limit, path)
            if pending:
                _write_all(fd, pending)
                pending.clear()
            os.lseek(fd, piece, os.SEEK_CUR)
            total += piece
            left = piece
            while left:
                step = min(left, _WRITE_CHUNK)
                hasher.update(_ZEROS[:step])
                left -= step
            continue
        size = memoryview(piece).nbytes
        _check_limit(total + size, limit, path)
        hasher.update(piece)
        total += size
        written += size
        if len(pending) + size > _WRITE_CHUNK and pending:
            _write_all(fd, pending)
            pending.clear()
        if size >= _WRITE_CHUNK:
            _write_all(fd, piece)
        else:
            pending += piece
    if pending:
        _write_all(fd, pending)
    return total, written


def _check_limit(total: int, limit: int, path: bytes) -> None:
    if total > limit:
        raise IntegrityError(f"{show(path)}: more than the expected "
                             f"{limit} bytes")
