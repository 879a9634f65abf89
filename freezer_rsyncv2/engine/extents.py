"""Where a file's data lies: block-aligned read regions and all-zero block runs.

A VM disk image is mostly holes and zeros.  The backup reads only the
regions that hold data (found with SEEK_DATA/SEEK_HOLE), widened to whole
blocks of the file's signature so that blocks line up with the previous
level's; inside them, whole blocks of zeros are treated as holes too.  A
level's cost then follows the data, not the apparent size.  Pure functions:
no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

#: files smaller than this are not scanned for zero blocks (not worth it)
ZERO_SCAN_MIN = 1 << 20
#: shorter runs of zero blocks (or holes) travel as data: each hole ends a
#: region of the rsync matcher, which would cost more than it saves on
#: scattered zero blocks (and could not match data that moved across it)
ZERO_RUN_MIN = 1 << 20


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
    if block_len % 8 == 0:
        words = np.frombuffer(data, dtype=np.uint64, count=whole * block_len // 8)
        nonzero = words.reshape(whole, block_len // 8).any(axis=1)
    else:
        octets = np.frombuffer(data, dtype=np.uint8, count=whole * block_len)
        nonzero = octets.reshape(whole, block_len).any(axis=1)
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
