"""Receiver side of the rsync algorithm: rebuild the new file from ops and a caller-supplied basis reader.

Output items are bytes (data) and, for a HOLE op, an int: that many zero bytes
the caller writes as a hole (seek) or as zeros; nothing here allocates them.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from freezer_rsyncv2.errors import CorruptRecordError
from freezer_rsyncv2.rsync.matcher import COPY, HOLE, LITERAL
from freezer_rsyncv2.rsync.signature import is_int

BasisReader = Callable[[int, int], bytes]
MAX_HOLE = (1 << 63) - 1  # no file is longer


def _check_basis(block_len: Any, basis_size: Any) -> None:
    if not is_int(block_len) or block_len <= 0:
        raise CorruptRecordError(f"basis block_len must be a positive int, got {block_len!r}")
    if not is_int(basis_size) or basis_size < 0:
        raise CorruptRecordError(f"basis size must be a non-negative int, got {basis_size!r}")


def copy_range(first_block: int, count: int, block_len: int, basis_size: int) -> tuple[int, int]:
    """Byte range (offset, length) of blocks [first_block, first_block+count) of the basis.

    Raises CorruptRecordError unless the range is non-empty and inside the basis
    (the last basis block may be short, so the length is clipped to basis_size).
    """
    _check_basis(block_len, basis_size)
    if not is_int(first_block) or not is_int(count):
        raise CorruptRecordError(f"COPY op needs int first_block/count, got {first_block!r}, {count!r}")
    n_blocks = -(-basis_size // block_len)
    if first_block < 0 or count <= 0 or first_block + count > n_blocks:
        raise CorruptRecordError(
            f"COPY op first_block={first_block} count={count} outside the basis "
            f"({n_blocks} blocks of {block_len} bytes, {basis_size} bytes)"
        )
    offset = first_block * block_len
    return offset, min(basis_size, (first_block + count) * block_len) - offset


def patch(
    ops: Iterable[Any],
    basis_read: BasisReader,
    block_len: int,
    basis_size: int,
    max_piece: int = 1 << 20,
) -> Iterator[bytes | memoryview | int]:
    """Yield the new file's bytes in pieces and holes as ints, validating every op as possibly hostile.

    COPY ranges are read through ``basis_read(offset, length)`` in pieces of at
    most ``max_piece`` bytes; LITERAL data is passed through as is; a HOLE
    gives its length (an int: that many zero bytes).  Any
    malformed op, or a basis read returning the wrong amount, raises
    CorruptRecordError naming the op (by position) and the offending values.
    """
    _check_basis(block_len, basis_size)
    if not is_int(max_piece) or max_piece <= 0:
        raise ValueError(f"max_piece must be a positive int, got {max_piece!r}")
    return _patch(ops, basis_read, block_len, basis_size, max_piece)


def _patch(
    ops: Iterable[Any], basis_read: BasisReader, block_len: int, basis_size: int, max_piece: int
) -> Iterator[bytes | memoryview | int]:
    for number, item in enumerate(_plan(ops, block_len, basis_size)):
        if not isinstance(item, tuple):
            yield item      # LITERAL data or HOLE length
            continue
        offset, length = item
        while length:
            size = min(length, max_piece)
            piece = basis_read(offset, size)
            if not isinstance(piece, (bytes, bytearray, memoryview)) or len(piece) != size:
                got = len(piece) if isinstance(piece, (bytes, bytearray, memoryview)) else type(piece).__name__
                raise CorruptRecordError(
                    f"op #{number}: COPY of {item[1]} bytes at basis offset {item[0]}: basis read at "
                    f"offset {offset} of {size} bytes returned {got}"
                )
            yield piece if isinstance(piece, bytes) else bytes(piece)
            offset += size
            length -= size


def plan(ops: Iterable[Any], block_len: int, basis_size: int) -> Iterator[bytes | memoryview | tuple[int, int] | int]:
    """The new file as LITERAL data (bytes), basis ranges ``(offset, length)`` and HOLE lengths (int).

    For a receiver that copies ranges itself (e.g. kernel-side); every op is
    validated as in ``patch``, and a range lies inside the basis.  A COPY of a
    block the basis's signature lists as zero is not refused: the basis bytes
    there are zeros, and only block_len and basis_size are known here.
    """
    _check_basis(block_len, basis_size)
    return _plan(ops, block_len, basis_size)


def _plan(ops: Iterable[Any], block_len: int, basis_size: int) -> Iterator[bytes | memoryview | tuple[int, int] | int]:
    for number, op in enumerate(ops):
        if not isinstance(op, (tuple, list)) or not op:
            raise CorruptRecordError(f"op #{number}: expected a non-empty tuple, got {type(op).__name__}")
        kind = op[0]
        if is_int(kind) and kind == COPY:
            if len(op) != 3:
                raise CorruptRecordError(f"op #{number}: COPY op needs 3 fields, got {len(op)}")
            try:
                yield copy_range(op[1], op[2], block_len, basis_size)
            except CorruptRecordError as exc:
                raise CorruptRecordError(f"op #{number}: {exc}") from None
        elif is_int(kind) and kind == LITERAL:
            if len(op) != 2:
                raise CorruptRecordError(f"op #{number}: LITERAL op needs 2 fields, got {len(op)}")
            data = op[1]
            if not isinstance(data, (bytes, memoryview)):
                raise CorruptRecordError(f"op #{number}: LITERAL data must be bytes, got {type(data).__name__}")
            if not data:
                raise CorruptRecordError(f"op #{number}: empty LITERAL op")
            yield data
        elif is_int(kind) and kind == HOLE:
            if len(op) != 2:
                raise CorruptRecordError(f"op #{number}: HOLE op needs 2 fields, got {len(op)}")
            length = op[1]
            if not is_int(length) or not 1 <= length <= MAX_HOLE:
                raise CorruptRecordError(f"op #{number}: HOLE length must be an int in [1, {MAX_HOLE}], got {length!r}")
            yield length
        else:
            raise CorruptRecordError(f"op #{number}: unknown op type {kind!r}")
