"""Block signatures of a file: per-block weak rolling hash plus xxh3-128 strong digest."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash
from numpy.typing import NDArray

from freezer_rsyncv2.errors import CorruptRecordError
from freezer_rsyncv2.rsync.rollsum import BytesLike, block_weak_hashes

STRONG_LEN = 16
MIN_BLOCK = 700
MAX_BLOCK = 131072
MIN_FIXED_BLOCK = 16
MAX_FIXED_BLOCK = 1 << 24

_BATCH = 8 << 20  # bytes of whole blocks hashed per vectorized batch in the builder


def strong_hash(data: BytesLike) -> bytes:
    """Strong digest of one block: xxh3-128, STRONG_LEN bytes."""
    return xxhash.xxh3_128_digest(data)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def block_size_for(file_size: int, fixed: int | None = None) -> int:
    """Block length for a file: ``fixed`` if given, else rsync's ~sqrt(size) rule.

    The rule rounds sqrt(file_size) down to a multiple of 8 and clamps it to
    [MIN_BLOCK, MAX_BLOCK], so the signature has ~sqrt(size) entries.
    """
    if fixed is not None:
        if not _is_int(fixed) or not MIN_FIXED_BLOCK <= fixed <= MAX_FIXED_BLOCK:
            raise ValueError(f"fixed block size must be in [{MIN_FIXED_BLOCK}, {MAX_FIXED_BLOCK}], got {fixed!r}")
        return fixed
    if not _is_int(file_size) or file_size < 0:
        raise ValueError(f"file_size must be a non-negative int, got {file_size!r}")
    size = math.isqrt(file_size) // 8 * 8
    return min(MAX_BLOCK, max(MIN_BLOCK, size))


def _byte_view(data: Any, field: str) -> memoryview:
    try:
        return memoryview(data).cast("B")
    except (TypeError, ValueError) as exc:
        raise CorruptRecordError(f"signature {field} must be contiguous bytes: {exc}") from None


def _strong_hashes(view: memoryview, block_len: int) -> bytes:
    """Concatenated strong digests of the consecutive blocks of ``view`` (last may be short)."""
    digest = xxhash.xxh3_128_digest
    return b"".join([digest(view[i : i + block_len]) for i in range(0, len(view), block_len)])


@dataclass(eq=False)
class Signature:
    """Signature of one file: weak[i] and strong[i*16:(i+1)*16] describe block i.

    Invariants (checked on construction): block_len > 0, file_size >= 0,
    n == ceil(file_size / block_len) == len(weak) == len(strong) // STRONG_LEN.
    """

    block_len: int
    file_size: int
    weak: NDArray[np.uint32]
    strong: bytes

    def __post_init__(self) -> None:
        if not _is_int(self.block_len) or not 0 < self.block_len <= MAX_FIXED_BLOCK:
            raise CorruptRecordError(f"signature block_len out of range: {self.block_len!r}")
        if not _is_int(self.file_size) or self.file_size < 0:
            raise CorruptRecordError(f"signature file_size out of range: {self.file_size!r}")
        n = -(-self.file_size // self.block_len)
        weak = np.asarray(self.weak)
        if weak.ndim != 1 or weak.dtype.kind not in "ui" or len(weak) != n:
            raise CorruptRecordError(
                f"signature weak: expected {n} uint32 values, got shape {weak.shape} dtype {weak.dtype}"
            )
        if weak.dtype != np.uint32 or not weak.flags.c_contiguous:
            weak = np.ascontiguousarray(weak, dtype=np.uint32)
        self.weak = weak
        if not isinstance(self.strong, bytes) or len(self.strong) != n * STRONG_LEN:
            got = len(self.strong) if isinstance(self.strong, (bytes, bytearray)) else type(self.strong).__name__
            raise CorruptRecordError(f"signature strong: expected {n * STRONG_LEN} bytes, got {got}")

    @property
    def block_count(self) -> int:
        return len(self.weak)

    def block_length(self, index: int) -> int:
        """Length of block ``index``: block_len except maybe the last block."""
        if not 0 <= index < self.block_count:
            raise IndexError(f"block {index} out of range 0..{self.block_count - 1}")
        return min(self.block_len, self.file_size - index * self.block_len)

    def strong_of(self, index: int) -> bytes:
        return self.strong[index * STRONG_LEN : (index + 1) * STRONG_LEN]

    def weak_bytes(self) -> bytes:
        """Weak hashes serialized as little-endian uint32 (one copy, no per-item work)."""
        return self.weak.astype("<u4", copy=False).tobytes()

    def to_bytes(self) -> tuple[bytes, bytes]:
        """(weak_bytes, strong_bytes): the two blobs ``from_bytes`` takes back."""
        return self.weak_bytes(), self.strong

    @classmethod
    def from_bytes(cls, block_len: int, file_size: int, weak_bytes: BytesLike, strong_bytes: BytesLike) -> Signature:
        """Rebuild a signature from stored blobs, validating every length (CorruptRecordError)."""
        if not _is_int(block_len) or not 0 < block_len <= MAX_FIXED_BLOCK:
            raise CorruptRecordError(f"signature block_len out of range: {block_len!r}")
        if not _is_int(file_size) or file_size < 0:
            raise CorruptRecordError(f"signature file_size out of range: {file_size!r}")
        n = -(-file_size // block_len)
        weak_view = _byte_view(weak_bytes, "weak")
        strong_view = _byte_view(strong_bytes, "strong")
        if len(weak_view) != 4 * n:
            raise CorruptRecordError(f"signature weak: expected {4 * n} bytes for {n} blocks, got {len(weak_view)}")
        if len(strong_view) != STRONG_LEN * n:
            raise CorruptRecordError(
                f"signature strong: expected {STRONG_LEN * n} bytes for {n} blocks, got {len(strong_view)}"
            )
        weak = np.frombuffer(weak_view, dtype="<u4").astype(np.uint32)
        return cls(block_len, file_size, weak, bytes(strong_view))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Signature):
            return NotImplemented
        return (
            self.block_len == other.block_len
            and self.file_size == other.file_size
            and np.array_equal(self.weak, other.weak)
            and self.strong == other.strong
        )


class SignatureBuilder:
    """Incremental signature of a stream fed in chunks of any size.

    Whole blocks are hashed straight from the caller's chunk (vectorized weak
    hashes, one strong digest per block); only a partial block is buffered, so
    the result equals hashing the concatenation in one go.
    """

    def __init__(self, block_len: int) -> None:
        if not _is_int(block_len) or not 0 < block_len <= MAX_FIXED_BLOCK:
            raise ValueError(f"block_len must be in [1, {MAX_FIXED_BLOCK}], got {block_len!r}")
        self.block_len = block_len
        self._size = 0
        self._partial = bytearray()
        self._weak: list[NDArray[np.uint32]] = []
        self._strong: list[bytes] = []
        self._done = False

    def _whole_blocks(self, view: memoryview) -> None:
        step = max(_BATCH // self.block_len, 1) * self.block_len
        for start in range(0, len(view), step):
            part = view[start : start + step]
            self._weak.append(block_weak_hashes(part, self.block_len))
            self._strong.append(_strong_hashes(part, self.block_len))

    def update(self, data: BytesLike) -> None:
        """Add the next chunk of the file."""
        if self._done:
            raise RuntimeError("SignatureBuilder.update() after finish()")
        view = memoryview(data).cast("B")
        self._size += len(view)
        L = self.block_len
        if self._partial:
            need = L - len(self._partial)
            self._partial += view[:need]
            view = view[need:]
            if len(self._partial) < L:
                return
            self._whole_blocks(memoryview(bytes(self._partial)))
            self._partial = bytearray()
        whole = len(view) // L * L
        if whole:
            self._whole_blocks(view[:whole])
        if whole < len(view):
            self._partial += view[whole:]

    def finish(self) -> Signature:
        """Hash the trailing short block (if any) and return the signature."""
        if self._done:
            raise RuntimeError("SignatureBuilder.finish() called twice")
        self._done = True
        if self._partial:
            tail = bytes(self._partial)
            self._weak.append(block_weak_hashes(tail, self.block_len))
            self._strong.append(strong_hash(tail))
            self._partial = bytearray()
        weak = np.concatenate(self._weak) if self._weak else np.empty(0, dtype=np.uint32)
        return Signature(self.block_len, self._size, weak, b"".join(self._strong))


def compute_signature(data: BytesLike, block_len: int) -> Signature:
    """Signature of an in-memory buffer (a one-shot SignatureBuilder)."""
    builder = SignatureBuilder(block_len)
    builder.update(data)
    return builder.finish()
