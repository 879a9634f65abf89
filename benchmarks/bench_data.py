"""Deterministic benchmark inputs: random, low-entropy and edited files, written in bounded memory."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np

CHUNK = 16 << 20
MIB = 1 << 20
ALPHABET = np.frombuffer(b"ACGT", dtype=np.uint8)

#: A filler makes ``n`` bytes of one kind of content from a generator.
Filler = Callable[[np.random.Generator, int], bytes]


def random_bytes(rng: np.random.Generator, n: int) -> bytes:
    """Incompressible bytes."""
    return rng.bytes(n)


def text_bytes(rng: np.random.Generator, n: int) -> bytes:
    """A 4-letter alphabet (2 bits of entropy per byte)."""
    return ALPHABET[rng.integers(0, 4, n, dtype=np.uint8)].tobytes()


def sparse_bytes(rng: np.random.Generator, n: int) -> bytes:
    """Zero bytes with one random byte per 64 KiB on average ("mostly zeros")."""
    out = np.zeros(n, dtype=np.uint8)
    marks = rng.integers(0, max(n, 1), max(n >> 16, 1))
    out[marks[marks < n]] = rng.integers(1, 256, len(marks[marks < n]), dtype=np.uint8)
    return out.tobytes()


FILLERS: dict[str, Filler] = {
    "random": random_bytes, "text": text_bytes, "zeros": sparse_bytes}


def write_file(path: str, size: int, seed: int, fill: Filler = random_bytes) -> None:
    """Write ``size`` bytes of ``fill`` content, in CHUNK pieces."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as out:
        left = size
        while left:
            n = min(CHUNK, left)
            out.write(fill(rng, n))
            left -= n


def plan_edits(size: int, seed: int, inserts: int = 100, insert_len: int = 7,
               overwrites: int = 100, overwrite_len: int = 1024
               ) -> list[tuple[int, str, int]]:
    """Sorted (offset in old, "ins"|"ovw", length) edits at seeded random offsets.

    Overwrites that would overlap the previous edit are dropped, so every edit
    keeps its meaning when applied in one streaming pass.
    """
    rng = np.random.default_rng(seed)
    raw = [(int(o), "ins", insert_len) for o in rng.integers(0, size, inserts)]
    raw += [(int(o), "ovw", overwrite_len)
            for o in rng.integers(0, max(size - overwrite_len, 1), overwrites)]
    raw.sort()
    edits: list[tuple[int, str, int]] = []
    end = 0
    for offset, kind, length in raw:
        if offset < end:
            continue
        edits.append((offset, kind, length))
        end = offset + (length if kind == "ovw" else 0)
    return edits


def _copy_range(src, dst, start: int, stop: int) -> None:
    src.seek(start)
    left = stop - start
    while left > 0:
        chunk = src.read(min(CHUNK, left))
        if not chunk:
            raise ValueError("source shorter than the edit plan")
        dst.write(chunk)
        left -= len(chunk)


def write_edited(old_path: str, new_path: str, seed: int, fill: Filler = random_bytes,
                 append: int = MIB) -> int:
    """Write ``old`` with the seeded edits applied and ``append`` bytes added; return the count."""
    size = os.path.getsize(old_path)
    edits = plan_edits(size, seed)
    rng = np.random.default_rng(seed + 1)
    with open(old_path, "rb") as src, open(new_path, "wb") as dst:
        pos = 0
        for offset, kind, length in edits:
            _copy_range(src, dst, pos, offset)
            dst.write(fill(rng, length))
            pos = offset + length if kind == "ovw" else offset
        _copy_range(src, dst, pos, size)
        dst.write(fill(rng, append))
    return len(edits)


def overwrite_in_place(path: str, seed: int, count: int = 100, length: int = 4096) -> None:
    """Overwrite ``count`` runs of ``length`` random bytes at seeded offsets, in place."""
    size = os.path.getsize(path)
    rng = np.random.default_rng(seed)
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset in rng.integers(0, size - length, count).tolist():
            os.pwrite(fd, rng.bytes(length), offset)
    finally:
        os.close(fd)


def same_content(a: str, b: str, chunk: int = 4 * MIB) -> bool:
    """Byte-for-byte comparison of two files."""
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for x, y in _pairs(fa, fb, chunk):
            if x != y:
                return False
    return True


def _pairs(fa, fb, chunk: int) -> Iterator[tuple[bytes, bytes]]:
    while True:
        x, y = fa.read(chunk), fb.read(chunk)
        if not x and not y:
            return
        yield x, y
