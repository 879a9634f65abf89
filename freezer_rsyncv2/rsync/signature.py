"""Block signatures of a file: per-block weak rolling hash plus xxh3-128 strong digest.

All-zero full-length blocks are not hashed: a signature lists the data blocks
only, so a mostly sparse disk image costs what its data costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash
from numpy.typing import NDArray

from freezer_rsyncv2.errors import CorruptRecordError
from freezer_rsyncv2.rsync.rollsum import (SMALL_BLOCKS_MAX, BytesLike, block_weak_hashes, byte_view,
                                           small_block_weak_hashes)

STRONG_LEN = 16
# Bounds of the block length block_size_for() picks from a file's size.
MIN_AUTO_BLOCK = 700
MAX_AUTO_BLOCK = 131072
POW2_BLOCK = 4096   # automatic block lengths from here on are powers of two
# Bounds of a block length a caller fixes (rsync_block_size) or a record
# declares.
MIN_FIXED_BLOCK = 16
MAX_FIXED_BLOCK = 1 << 24
MAX_FILE_SIZE = (1 << 63) - 1  # largest file offset a filesystem accepts

_BATCH = 8 << 20  # bytes of whole blocks hashed per vectorized batch in the builder
#: a stream given in one chunk of at most this many bytes is signed in one go at finish() (_small_signature)
SMALL_FILE = 64 << 10


def strong_hash(data: BytesLike) -> bytes:
    """Strong digest of one block: xxh3-128, STRONG_LEN bytes."""
    # numpy's stubs make an ndarray a buffer only from Python 3.12 on.
    return xxhash.xxh3_128_digest(data)  # type: ignore[arg-type]


def is_int(value: Any) -> bool:
    """An int that is not a bool (a stored or given count, size or offset)."""
    return isinstance(value, int) and not isinstance(value, bool)


def block_size_for(file_size: int, fixed: int | None = None) -> int:
    """Block length for a file: ``fixed`` if given, else rsync's ~sqrt(size) rule.

    The rule rounds sqrt(file_size) down to a multiple of 8 and clamps it to
    [MIN_AUTO_BLOCK, MAX_AUTO_BLOCK], so the signature has ~sqrt(size) entries.  From
    POW2_BLOCK on (files of 16 MiB or more) it rounds down to a power of
    two instead: disk images and databases are written in aligned pages, so
    an aligned rewrite then changes whole blocks and no more.
    """
    if fixed is not None:
        if not is_int(fixed) or not MIN_FIXED_BLOCK <= fixed <= MAX_FIXED_BLOCK:
            raise ValueError(f"fixed block size must be in [{MIN_FIXED_BLOCK}, {MAX_FIXED_BLOCK}], got {fixed!r}")
        return fixed
    if not is_int(file_size) or file_size < 0:
        raise ValueError(f"file_size must be a non-negative int, got {file_size!r}")
    root = math.isqrt(file_size)
    size = 1 << (root.bit_length() - 1) if root >= POW2_BLOCK else root // 8 * 8
    return min(MAX_AUTO_BLOCK, max(MIN_AUTO_BLOCK, size))


def _byte_view(data: Any, field: str) -> memoryview:
    try:
        return memoryview(data).cast("B")
    except (TypeError, ValueError) as exc:
        raise CorruptRecordError(f"signature {field} must be contiguous bytes: {exc}") from None


def _strong_hashes(view: memoryview, block_len: int) -> bytes:
    """Concatenated strong digests of the consecutive blocks of ``view`` (last may be short)."""
    digest = xxhash.xxh3_128_digest
    return b"".join([digest(view[i : i + block_len]) for i in range(0, len(view), block_len)])


def _zero_rows(view: memoryview, block_len: int) -> NDArray[np.bool_]:
    """Which of the whole blocks of ``view`` are all zero: an OR-reduce over the widest word that fits.

    Only blocks whose first word is zero are reduced, so data blocks cost ~nothing.
    """
    size = 8 if block_len % 8 == 0 else 4 if block_len % 4 == 0 else 2 if block_len % 2 == 0 else 1
    rows = np.frombuffer(view, dtype=np.dtype(f"u{size}")).reshape(-1, block_len // size)
    maybe: NDArray[np.bool_] = rows[:, 0] == 0
    count = int(np.count_nonzero(maybe))
    if count == len(rows):
        all_zero: NDArray[np.bool_] = np.bitwise_or.reduce(rows, axis=1) == 0
        return all_zero
    if count:
        maybe[maybe] = np.bitwise_or.reduce(rows[maybe], axis=1) == 0
    return maybe


def _check_blocks(blocks: Any, n: int, short_last: bool) -> NDArray[np.int64] | None:
    """Validate a sparse signature's data block numbers; None when every block is listed (dense)."""
    arr = np.asarray(blocks)
    if arr.ndim != 1 or arr.dtype.kind not in "ui" or len(arr) > n:
        raise CorruptRecordError(
            f"signature blocks: expected at most {n} int block numbers, got shape {arr.shape} dtype {arr.dtype}"
        )
    if len(arr):
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or high >= n:
            raise CorruptRecordError(f"signature blocks: block numbers {low}..{high} outside 0..{n - 1}")
    arr = np.array(arr, dtype=np.int64)  # own copy, read-only: block_numbers() hands it out
    arr.flags.writeable = False
    if len(arr) > 1 and not bool(np.all(arr[1:] > arr[:-1])):
        raise CorruptRecordError("signature blocks: block numbers not strictly increasing")
    if short_last and (not len(arr) or int(arr[-1]) != n - 1):
        raise CorruptRecordError(f"signature blocks: the short last block {n - 1} must be a data block")
    return None if len(arr) == n else arr


@dataclass(eq=False)
class Signature:
    """Signature of one file of n = ceil(file_size / block_len) blocks.

    Block k is a data block, described by weak[i] and strong[i*16:(i+1)*16]
    with i = slot(k), or a zero block: block_len zero bytes, not hashed.
    ``blocks`` holds the data blocks' numbers, sorted and unique; None means
    dense (every block is a data block, slot(k) == k).  A short last block is
    always a data block.  A ``blocks`` listing all n blocks is stored as None,
    so ``is_dense`` means "no zero block".  All checked on construction.
    """

    block_len: int
    file_size: int
    weak: NDArray[np.uint32]
    strong: bytes
    blocks: NDArray[np.int64] | None = None

    def __post_init__(self) -> None:
        if not is_int(self.block_len) or not 0 < self.block_len <= MAX_FIXED_BLOCK:
            raise CorruptRecordError(f"signature block_len out of range: {self.block_len!r}")
        if not is_int(self.file_size) or not 0 <= self.file_size <= MAX_FILE_SIZE:
            raise CorruptRecordError(f"signature file_size out of range: {self.file_size!r}")
        n = -(-self.file_size // self.block_len)
        self._n = n
        if self.blocks is not None:
            self.blocks = _check_blocks(self.blocks, n, self.file_size % self.block_len != 0)
        count = n if self.blocks is None else len(self.blocks)
        weak = np.asarray(self.weak)
        if weak.ndim != 1 or weak.dtype.kind not in "ui" or len(weak) != count:
            raise CorruptRecordError(
                f"signature weak: expected {count} uint32 values, got shape {weak.shape} dtype {weak.dtype}"
            )
        if weak.dtype != np.uint32 or not weak.flags.c_contiguous:
            weak = np.ascontiguousarray(weak, dtype=np.uint32)
        self.weak = weak
        if not isinstance(self.strong, bytes) or len(self.strong) != count * STRONG_LEN:
            got = len(self.strong) if isinstance(self.strong, (bytes, bytearray)) else type(self.strong).__name__
            raise CorruptRecordError(f"signature strong: expected {count * STRONG_LEN} bytes, got {got}")

    @property
    def block_count(self) -> int:
        """n: all blocks of the file, data and zero."""
        return self._n

    @property
    def data_count(self) -> int:
        """Data blocks: the entries of weak/strong."""
        return len(self.weak)

    @property
    def is_dense(self) -> bool:
        return self.blocks is None

    def block_length(self, index: int) -> int:
        """Length of block ``index``: block_len except maybe the last block."""
        if not 0 <= index < self._n:
            raise IndexError(f"block {index} out of range 0..{self._n - 1}")
        return min(self.block_len, self.file_size - index * self.block_len)

    def slot(self, index: int) -> int | None:
        """Position of block ``index`` in weak/strong, None for a zero block."""
        if not 0 <= index < self._n:
            raise IndexError(f"block {index} out of range 0..{self._n - 1}")
        if self.blocks is None:
            return index
        i = int(np.searchsorted(self.blocks, index))
        return i if i < len(self.blocks) and int(self.blocks[i]) == index else None

    def block_numbers(self) -> NDArray[np.int64]:
        """Numbers of the data blocks, in slot order (a sparse signature's own array, read-only)."""
        return np.arange(self._n, dtype=np.int64) if self.blocks is None else self.blocks

    def weak_bytes(self) -> bytes:
        """Weak hashes of the data blocks as little-endian uint32 (one copy, no per-item work)."""
        return self.weak.astype("<u4", copy=False).tobytes()

    def to_bytes(self) -> tuple[bytes, bytes]:
        """(weak_bytes, strong_bytes) of a dense signature: the two blobs ``from_bytes`` takes back.

        A sparse signature has no such form (the blobs do not say which blocks
        are zero): ValueError; store it as ``sigdelta.runs`` instead.
        """
        if self.blocks is not None:
            raise ValueError("a sparse signature cannot be stored as two blobs; use sigdelta.runs()")
        return self.weak_bytes(), self.strong

    @classmethod
    def from_bytes(cls, block_len: int, file_size: int, weak_bytes: BytesLike, strong_bytes: BytesLike) -> Signature:
        """Rebuild a dense signature from stored blobs, validating every length (CorruptRecordError)."""
        if not is_int(block_len) or not 0 < block_len <= MAX_FIXED_BLOCK:
            raise CorruptRecordError(f"signature block_len out of range: {block_len!r}")
        if not is_int(file_size) or not 0 <= file_size <= MAX_FILE_SIZE:
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
        """Same logical content: a dense signature equals a sparse one describing the same blocks."""
        if not isinstance(other, Signature):
            return NotImplemented
        if (self.block_len, self.file_size, len(self.weak)) != (other.block_len, other.file_size, len(other.weak)):
            return False
        if self.blocks is not None or other.blocks is not None:
            if not np.array_equal(self.block_numbers(), other.block_numbers()):
                return False
        return bool(np.array_equal(self.weak, other.weak)) and self.strong == other.strong


class SignatureBuilder:
    """Incremental signature of a stream fed in chunks of any size, and runs of zeros.

    Whole blocks are hashed straight from the caller's chunk (vectorized weak
    hashes, one strong digest per block); a full-length all-zero block is
    recorded as a zero block instead.  Only a partial block is buffered, so the
    result equals hashing the concatenation in one go.  Memory is O(data
    blocks): zero blocks are counted, never listed.
    """

    def __init__(self, block_len: int, min_zero_run: int = 1) -> None:
        """``min_zero_run``: a run of fewer zero blocks than this is listed as
        data blocks (with the zero block's hashes), so that the matcher can
        copy it like any block; only longer runs are left out."""
        if not is_int(block_len) or not 0 < block_len <= MAX_FIXED_BLOCK:
            raise ValueError(f"block_len must be in [1, {MAX_FIXED_BLOCK}], got {block_len!r}")
        if not is_int(min_zero_run) or min_zero_run < 1:
            raise ValueError(f"min_zero_run must be a positive int, got {min_zero_run!r}")
        self.block_len = block_len
        self.min_zero_run = min_zero_run
        self._size = 0
        self._count = 0  # complete blocks so far, data and zero
        self._zero = 0  # zero blocks among them
        self._partial = bytearray()
        self._weak: list[NDArray[np.uint32]] = []
        self._strong: list[bytes] = []
        #: block numbers per batch: an int starts a run of len(weak batch) blocks, an array lists them
        self._numbers: list[int | NDArray[np.int64]] = []
        self._small: bytes | None = None  # the only chunk so far, while it may be signed in one go
        self._done = False

    def _whole_blocks(self, view: memoryview) -> None:
        L = self.block_len
        step = max(_BATCH // L, 1) * L
        for start in range(0, len(view), step):
            part = view[start : start + step]
            k = len(part) // L
            first = self._count
            self._count += k
            zero = _zero_rows(part, L)
            zeros = int(np.count_nonzero(zero))
            self._zero += zeros
            if zeros == k:
                continue
            if not zeros:
                self._weak.append(block_weak_hashes(part, L))
                self._strong.append(_strong_hashes(part, L))
                self._numbers.append(first)
                continue
            rows = np.flatnonzero(~zero)
            data = np.frombuffer(part, dtype=np.uint8).reshape(k, L)[rows]
            self._weak.append(block_weak_hashes(data.reshape(-1), L))
            self._strong.append(b"".join([strong_hash(part[i * L : (i + 1) * L]) for i in rows.tolist()]))
            self._numbers.append(rows + first)

    def _check_open(self, name: str) -> None:
        if self._done:
            raise RuntimeError(f"SignatureBuilder.{name}() after finish()")

    def update(self, data: BytesLike) -> None:
        """Add the next chunk of the file."""
        self._check_open("update")
        view = byte_view(data)
        if self._small is not None:
            self._unsmall()
        elif not self._size and len(view) <= SMALL_FILE and self.block_len <= SMALL_BLOCKS_MAX:
            # Maybe the whole file: kept (bytes are not copied) until the next call says.
            self._small = data if type(data) is bytes else view.tobytes()
            self._size = len(view)
            return
        self._update(view)

    def _unsmall(self) -> None:
        """Feed the kept first chunk to the general path."""
        small, self._small = self._small, None
        assert small is not None
        self._size = 0
        self._update(memoryview(small))

    def _update(self, view: memoryview) -> None:
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

    def zeros(self, length: int) -> None:
        """Add ``length`` zero bytes (a hole): O(1) for the whole blocks they cover, whatever the length."""
        self._check_open("zeros")
        if self._small is not None:
            self._unsmall()
        if not is_int(length) or length < 0:
            raise ValueError(f"zeros() length must be a non-negative int, got {length!r}")
        if self._size + length > MAX_FILE_SIZE:
            raise ValueError(f"zeros({length}) makes the file larger than {MAX_FILE_SIZE} bytes")
        self._size += length
        L = self.block_len
        if self._partial:
            need = L - len(self._partial)
            if length < need:
                self._partial += bytes(length)
                return
            self._partial += bytes(need)
            length -= need
            self._whole_blocks(memoryview(bytes(self._partial)))
            self._partial = bytearray()
        whole, rest = divmod(length, L)
        self._count += whole
        self._zero += whole
        if rest:
            self._partial = bytearray(rest)

    def finish(self) -> Signature:
        """Hash the trailing short block (always a data block) and return the signature."""
        if self._done:
            raise RuntimeError("SignatureBuilder.finish() called twice")
        self._done = True
        if self._small is not None:
            sig = _small_signature(self._small, self.block_len)
            if sig is not None:
                return sig
            self._unsmall()
        if self._partial:
            tail = bytes(self._partial)
            self._weak.append(block_weak_hashes(tail, self.block_len))
            self._strong.append(strong_hash(tail))
            self._numbers.append(self._count)
            self._count += 1
            self._partial = bytearray()
        weak = np.concatenate(self._weak) if self._weak else np.empty(0, dtype=np.uint32)
        blocks = None
        if self._zero:
            parts = [
                np.arange(nums, nums + len(w), dtype=np.int64) if isinstance(nums, int) else nums
                for nums, w in zip(self._numbers, self._weak)
            ]
            blocks = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        strong = b"".join(self._strong)
        if blocks is not None and self.min_zero_run > 1:
            blocks, weak, strong = _list_short_zero_runs(
                blocks, weak, strong, self._count, self.block_len, self.min_zero_run)
        return Signature(self.block_len, self._size, weak, strong, blocks)


def _list_short_zero_runs(
    blocks: NDArray[np.int64], weak: NDArray[np.uint32], strong: bytes, count: int, block_len: int, min_run: int
) -> tuple[NDArray[np.int64], NDArray[np.uint32], bytes]:
    """List the zero blocks of runs shorter than ``min_run`` as data blocks (zero-block hashes)."""
    bounds = np.concatenate(([-1], blocks, [count]))
    gaps = np.diff(bounds) - 1
    short = (gaps > 0) & (gaps < min_run)
    if not short.any():
        return blocks, weak, strong
    starts, lengths = bounds[:-1][short] + 1, gaps[short]
    # every block number of the short runs: start of its run + its rank in the run
    fill = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))
    numbers = np.concatenate((blocks, fill))
    order = np.argsort(numbers, kind="stable")
    zero = bytes(block_len)
    zero_weak = np.full(len(fill), block_weak_hashes(zero, block_len)[0], dtype=np.uint32)
    zero_strong = np.tile(np.frombuffer(strong_hash(zero), dtype=np.uint8), (len(fill), 1))
    rows = np.concatenate((np.frombuffer(strong, dtype=np.uint8).reshape(-1, STRONG_LEN), zero_strong))
    return numbers[order], np.concatenate((weak, zero_weak))[order], rows[order].tobytes()


def _small_signature(data: bytes, block_len: int) -> Signature | None:
    """The signature of a small file given whole, as SignatureBuilder makes it; None if it may hold a zero block.

    A run of block_len zero bytes anywhere sends the file to the general path,
    which decides whether it is a block (and whether it is listed); without
    one, every block is a data block (a dense signature).
    """
    size = len(data)
    if size >= block_len and bytes(block_len) in data:
        return None
    digest = xxhash.xxh3_128_digest
    strong = b"".join([digest(data[i : i + block_len]) for i in range(0, size, block_len)])
    return Signature(block_len, size, small_block_weak_hashes(data, block_len), strong)


def compute_signature(data: BytesLike, block_len: int) -> Signature:
    """Signature of an in-memory buffer (a one-shot SignatureBuilder)."""
    builder = SignatureBuilder(block_len)
    builder.update(data)
    return builder.finish()
