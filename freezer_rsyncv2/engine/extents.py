"""Where a file's data lies: block-aligned read regions, all-zero block runs, the pieces they make.

A VM disk image is mostly holes and zeros.  The backup reads only the
regions that hold data (found with SEEK_DATA/SEEK_HOLE), widened to whole
blocks of the file's signature so that blocks line up with the previous
level's; inside them, whole blocks of zeros are treated as holes too.  A
level's cost then follows the data, not the apparent size.  No I/O here:
``file_pieces`` reads through the callable it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

#: files smaller than this are not scanned for zero blocks (not worth it)
ZERO_SCAN_MIN = 1 << 20
#: shorter runs of zero blocks (or holes) travel as data: each hole ends a
#: region of the rsync matcher, which would cost more than it saves on
#: scattered zero blocks (and could not match data that moved across it)
ZERO_RUN_MIN = 1 << 20
#: bytes per read, and per piece of zeros sent as data
READ_SIZE = 1 << 20


class Piece(NamedTuple):
    """The next part of a file: ``data``, or (``zeros`` > 0, ``data`` empty) a run of zeros sent as a hole."""

    data: bytes = b""
    zeros: int = 0


def min_zero_blocks(block_len: int) -> int:
    """Zero blocks in a run of ZERO_RUN_MIN bytes: shorter runs are data."""
    return max(1, -(-ZERO_RUN_MIN // block_len))


def aligned_regions(ranges: list[tuple[int, int]], size: int, block_len: int
                    ) -> list[tuple[int, int]]:
    """``ranges`` (offset, length) widened to whole blocks and merged.

    Every region starts at a multiple of ``block_len`` and ends at one or
    at ``size``; what lies between regions is a hole.
    """
    regions: list[tuple[int, int]] = []
    for offset, length in ranges:
        start = offset // block_len * block_len
        end = min(size, -(-(offset + length) // block_len) * block_len)
        if regions and start <= regions[-1][0] + regions[-1][1]:
            first = regions[-1][0]
            regions[-1] = (first, max(end, first + regions[-1][1]) - first)
        elif end > start:
            regions.append((start, end - start))
    return regions


def zero_block_runs(data: bytes, block_len: int) -> Iterator[tuple[bool, int, int]]:
    """``(is_zero, start, length)`` runs of ``data``, which starts on a block boundary.

    Whole blocks of zeros form the zero runs; a short block at the end is
    always data.  One numpy pass: about the cost of reading the memory.
    """
    whole = len(data) // block_len
    if whole == 0:
        if data:
            yield False, 0, len(data)
        return
    nonzero = _nonzero_blocks(data, whole, block_len)
    if nonzero.all():
        yield False, 0, len(data)
        return
    edges = np.flatnonzero(np.diff(nonzero.astype(np.int8))) + 1
    bounds = [0, *edges.tolist(), whole]
    tail = len(data) - whole * block_len    # a short last block: data
    for a, b in zip(bounds[:-1], bounds[1:]):
        is_zero = not bool(nonzero[a])
        length = (b - a) * block_len
        if b == whole and not is_zero:
            length += tail
            tail = 0
        yield is_zero, a * block_len, length
    if tail:
        yield False, whole * block_len, tail


def _nonzero_blocks(data: bytes, whole: int, block_len: int) -> NDArray[np.bool_]:
    """For each of the first ``whole`` blocks of ``data``: whether it holds a non-zero byte."""
    if block_len % 8 == 0:
        words = np.frombuffer(data, dtype=np.uint64, count=whole * block_len // 8)
        return np.asarray(words.reshape(whole, block_len // 8).any(axis=1), dtype=np.bool_)
    octets = np.frombuffer(data, dtype=np.uint8, count=whole * block_len)
    return np.asarray(octets.reshape(whole, block_len).any(axis=1), dtype=np.bool_)


def file_pieces(read: Callable[[int, int], Iterable[bytes]], ranges: list[tuple[int, int]], size: int,
                block_len: int) -> Iterator[Piece]:
    """The file in order: data pieces, and long runs of zeros as zero pieces.

    ``read(offset, length)`` gives the bytes of a region in chunks; it is
    called for the data ``ranges`` only, widened to whole blocks
    (``aligned_regions``).  In a file of ``ZERO_SCAN_MIN`` bytes or more,
    whole blocks of zeros count as holes.  A run of holes and zero blocks of
    ``ZERO_RUN_MIN`` bytes or more is one zero piece; a shorter one is data
    (zero bytes).  A short read (the file shrank, a read error) ends the
    pieces early: the caller sees the shortfall.
    """
    scan = size >= ZERO_SCAN_MIN
    pos = zeros = 0
    for offset, length in aligned_regions(ranges, size, block_len):
        zeros += offset - pos
        pos = offset
        for chunk in read(offset, length):
            for is_zero, start, run in _runs(chunk, block_len, scan):
                if is_zero:
                    zeros += run
                    continue
                if zeros:
                    yield from _zero_pieces(zeros)
                    zeros = 0
                yield Piece(chunk if run == len(chunk) else chunk[start:start + run])
            pos += len(chunk)
        if pos < offset + length:
            return      # the file shrank while it was read
    yield from _zero_pieces(zeros + size - pos)


def _runs(chunk: bytes, block_len: int, scan: bool) -> Iterable[tuple[bool, int, int]]:
    return zero_block_runs(chunk, block_len) if scan else ((False, 0, len(chunk)),)


def _zero_pieces(length: int) -> Iterator[Piece]:
    """``length`` zero bytes: one zero piece when long enough, else data."""
    if length >= ZERO_RUN_MIN:
        yield Piece(zeros=length)
        return
    for at in range(0, length, READ_SIZE):
        yield Piece(bytes(min(READ_SIZE, length - at)))
