"""Digests of files on disk: whole (reading only data ranges), or by leaves.

A restore checks every file it writes against the digest its level
recorded.  ``hash_fd`` hashes a whole file, holes taken as zeros without
reading them; ``rehash_leaves`` brings the kept ``blake3-tree`` leaf
hashes of a staged file up to date after an in-place patch, reading only
the leaves it touched, so that check costs what the level changed.
"""

from __future__ import annotations

import mmap
import os

from freezer_rsyncv2 import digests, treehash
from freezer_rsyncv2.errors import IntegrityError
from freezer_rsyncv2.fs.walk import data_ranges

_HASH_CHUNK = 4 << 20
#: data ranges at least this big are hashed through a memory map, on all
#: cores, MAP_WINDOW bytes at a time (a multiple of
#: mmap.ALLOCATIONGRANULARITY)
MAP_MIN = 64 << 20
MAP_WINDOW = 32 << 20


def hash_fd(fd: int, hash_name: str) -> tuple[bytes, int]:
    """(digest, length) of a whole open file.

    Only its data ranges are read (SEEK_DATA/SEEK_HOLE); holes go to the
    hasher as zeros, which a tree digest takes without hashing them, so a
    sparse image costs what its data costs.  A big data range is mapped,
    a window at a time (mapped pages count in the resident size), and
    hashed on all cores (BLAKE3).  The file is our own staged temporary
    file (mode 0600, a random name); another process of the same user
    truncating it meanwhile would end this one with SIGBUS, leaving
    temporary files, never a final name.
    """
    size = os.fstat(fd).st_size
    hasher = digests.new(hash_name, parallel=size >= MAP_MIN)
    buf = None
    pos = 0
    for offset, length in data_ranges(fd, size):
        hasher.zeros(offset - pos)
        end = offset + length
        # mmap offsets must be multiples of the allocation granularity
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        if length >= MAP_MIN:
            for window in range(start, end, MAP_WINDOW):
                size_w = min(MAP_WINDOW, end - window)
                with mmap.mmap(fd, size_w, access=mmap.ACCESS_READ, offset=window) as mapped:
                    skip = max(offset - window, 0)
                    hasher.update(memoryview(mapped)[skip:])
            pos = end
            continue
        if buf is None:
            buf = bytearray(_HASH_CHUNK)
        view = memoryview(buf)
        pos = offset
        while pos < end:
            n = os.preadv(fd, [view[:min(len(buf), end - pos)]], pos)
            if n <= 0:
                return hasher.digest(), pos
            hasher.update(view[:n])
            pos += n
    hasher.zeros(size - pos)
    return hasher.digest(), size


def rehash_leaves(fd: int, size: int, leaves: dict[int, bytes],
                  changed: list[tuple[int, int, bool]], old_size: int
                  ) -> int:
    """Bring ``leaves`` (blake3-tree leaf hashes) up to date with ``fd``.

    ``changed``: the (offset, length, is_hole) ranges written or punched
    since the leaves were right; the file was ``old_size`` bytes then.  Leaves past
    the end go, the old and new last leaves are redone.  Returns how many
    leaves were looked at.
    """
    leaf = treehash.LEAF
    count = max(1, -(-size // leaf))
    dirty: set[int] = {count - 1, max(0, -(-old_size // leaf) - 1)}
    gone = [(count, 1 << 64)]       # leaf ranges now all zeros
    for offset, length, hole in changed:
        first, end = offset // leaf, -(-(offset + length) // leaf)
        if hole:    # whole leaves inside a hole are zeros: no read
            dirty.update((first, end - 1))
            gone.append((first + 1, end - 1))
        else:       # written data: bounded by the level's literal bytes
            dirty.update(range(first, end))
    for lo, hi in gone:
        if hi - lo > len(leaves):
            doomed = [k for k in leaves if lo <= k < hi]
        else:
            doomed = [k for k in range(lo, hi) if k in leaves]
        for index in doomed:
            del leaves[index]
    for index in sorted(dirty):
        if index >= count:
            continue
        start = index * leaf
        length = min(leaf, size - start)
        if not _has_data(fd, start, length):
            leaves.pop(index, None)     # zeros: digest_from_leaves knows it
            if length == leaf:
                continue
        data = os.pread(fd, length, start) if length else b""
        if len(data) != length:
            raise IntegrityError(f"the staged file ends before byte {start + len(data)}")
        leaves[index] = treehash.leaf_of(data)
    return len(dirty)


def _has_data(fd: int, start: int, length: int) -> bool:
    """Whether ``[start, start + length)`` of ``fd`` may hold data (not only a hole)."""
    if not length or not hasattr(os, "SEEK_DATA"):
        return bool(length)
    try:
        return os.lseek(fd, start, os.SEEK_DATA) < start + length
    except OSError:         # ENXIO: only a hole up to the end
        return False
