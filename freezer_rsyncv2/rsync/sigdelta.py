"""Signature deltas: a stored level keeps only the signature blocks that changed since the previous level.

A signature is stored as runs of consecutive blocks.  A data run carries the
blocks' weak hashes (little-endian uint32) and strong digests; a zero run
carries nothing and says its blocks are all zero.  ``runs`` gives a full
signature (data runs only, zero blocks implicit), ``diff`` the runs that turn
an old signature into a new one, ``apply`` rebuilds a signature from either.
Everything is vectorized over the data blocks: the cost follows the data, never
the apparent size of a sparse file.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, NamedTuple

import numpy as np
from numpy.typing import NDArray

from freezer_rsyncv2.errors import CorruptRecordError
from freezer_rsyncv2.rsync.signature import MAX_FILE_SIZE, MAX_FIXED_BLOCK, STRONG_LEN, Signature, is_int

#: Blocks per data run by default: 20 bytes each, so one stored run stays < 1 MiB.
MAX_RUN_BLOCKS = 32768


class SigRun(NamedTuple):
    """``count`` consecutive blocks from ``first``: data (weak 4*count bytes, strong 16*count) or zero (both None)."""

    first: int
    count: int  # type: ignore[assignment]  # shadows tuple.count, on purpose: the record's name for it
    weak: bytes | None
    strong: bytes | None


def _check_max(max_blocks: Any) -> None:
    if not is_int(max_blocks) or max_blocks < 1:
        raise ValueError(f"max_blocks must be a positive int, got {max_blocks!r}")


def _strong_rows(sig: Signature) -> NDArray[np.uint8]:
    return np.frombuffer(sig.strong, dtype=np.uint8).reshape(-1, STRONG_LEN)


def _emit(
    sig: Signature, nums: NDArray[np.int64], slots: NDArray[np.int64], max_blocks: int
) -> Iterator[SigRun]:
    """Runs for the sorted block numbers ``nums``: slot >= 0 is a data block of ``sig``, -1 a zero block.

    Consecutive numbers of one kind form a run; consecutive data blocks have
    consecutive slots, so a data run is one slice of weak/strong.
    """
    if not len(nums):
        return
    weak = sig.weak.astype("<u4", copy=False)
    strong = sig.strong
    is_data = slots >= 0
    breaks = np.flatnonzero((nums[1:] != nums[:-1] + 1) | (is_data[1:] != is_data[:-1])) + 1
    starts = np.concatenate(([0], breaks)).tolist()
    stops = np.concatenate((breaks, [len(nums)])).tolist()
    for a, b in zip(starts, stops):
        first = int(nums[a])
        if not is_data[a]:
            yield SigRun(first, b - a, None, None)
            continue
        s0 = int(slots[a])
        for s in range(s0, s0 + b - a, max_blocks):
            c = min(max_blocks, s0 + b - a - s)
            yield SigRun(first + s - s0, c, weak[s : s + c].tobytes(), strong[s * STRONG_LEN : (s + c) * STRONG_LEN])


def runs(sig: Signature, max_blocks: int = MAX_RUN_BLOCKS) -> Iterator[SigRun]:
    """The whole signature as data runs of at most ``max_blocks`` blocks, in block order (zero blocks implicit)."""
    _check_max(max_blocks)
    if sig.is_dense:
        return _dense_runs(sig, max_blocks)
    return _emit(sig, sig.block_numbers(), np.arange(sig.data_count, dtype=np.int64), max_blocks)


def _dense_runs(sig: Signature, max_blocks: int) -> Iterator[SigRun]:
    """``runs`` of a signature without zero blocks: slices of its blobs, what ``_emit`` makes of them."""
    weak = sig.weak_bytes()
    strong = sig.strong
    n = sig.data_count
    for s in range(0, n, max_blocks):
        c = min(max_blocks, n - s)
        yield SigRun(s, c, weak[4 * s : 4 * (s + c)], strong[s * STRONG_LEN : (s + c) * STRONG_LEN])


def diff(old: Signature, new: Signature, max_blocks: int = MAX_RUN_BLOCKS) -> Iterator[SigRun]:
    """Runs, in block order, for exactly the blocks k < new.block_count whose state differs from old's block k.

    A block's state is "zero" or its (weak, strong); old blocks at or beyond
    old.block_count count as zero.  A block that became zero is in a zero run
    (not split: it carries nothing), one with new data in a data run of at
    most ``max_blocks`` blocks.  Work is O(data blocks of old and new).
    """
    if old.block_len != new.block_len:
        raise ValueError(f"diff of signatures with block_len {old.block_len} and {new.block_len}")
    _check_max(max_blocks)
    nb = new.block_numbers()
    ob = old.block_numbers()
    ob = ob[: int(np.searchsorted(ob, new.block_count))]
    if old.is_dense and new.is_dense:  # the common case, no search
        common = min(len(ob), len(nb))
        idx_new = idx_old = np.arange(common, dtype=np.int64)
    else:
        pos = np.searchsorted(ob, nb)
        found = pos < len(ob)
        found[found] = ob[pos[found]] == nb[found]
        idx_new = np.flatnonzero(found)
        idx_old = pos[idx_new]
    same = np.zeros(len(nb), dtype=bool)
    if len(idx_new):
        equal = old.weak[idx_old] == new.weak[idx_new]
        equal &= np.all(_strong_rows(old)[idx_old] == _strong_rows(new)[idx_new], axis=1)
        same[idx_new] = equal
    changed = np.flatnonzero(~same)
    gone = np.ones(len(ob), dtype=bool)
    gone[idx_old] = False
    nums = np.concatenate((nb[changed], ob[gone]))
    slots = np.concatenate((changed, np.full(len(nums) - len(changed), -1, dtype=np.int64)))
    order = np.argsort(nums, kind="stable")
    return _emit(new, nums[order], slots[order], max_blocks)


def _payload(value: Any, size: int, field: str, number: int) -> NDArray[np.uint8]:
    try:
        view = memoryview(value).cast("B")
    except (TypeError, ValueError):
        got = type(value).__name__
        raise CorruptRecordError(f"signature run #{number}: {field} must be bytes, got {got}") from None
    if len(view) != size:
        raise CorruptRecordError(f"signature run #{number}: {field} must be {size} bytes, got {len(view)}")
    return np.frombuffer(view, dtype=np.uint8)


def apply(
    base: Signature | None, block_len: int, file_size: int, runs: Iterable[Any], delta: bool
) -> Signature:
    """Rebuild a signature from stored runs, validating them as hostile input (CorruptRecordError).

    Runs must be in increasing block order, non-overlapping, count >= 1 and
    inside the n blocks of ``file_size``, with exact payload lengths.  Without
    ``delta`` the result has exactly the data runs (zero runs are no-ops).  With
    ``delta`` it is ``base``'s blocks < n that no run covers plus the data runs
    (a zero run makes its blocks zero).  The short last block must end up a data
    block.  Nothing is allocated by a declared count before the payload bytes
    confirm it.
    """
    if not is_int(block_len) or not 0 < block_len <= MAX_FIXED_BLOCK:
        raise CorruptRecordError(f"signature block_len out of range: {block_len!r}")
    if not is_int(file_size) or not 0 <= file_size <= MAX_FILE_SIZE:
        raise CorruptRecordError(f"signature file_size out of range: {file_size!r}")
    if delta:
        if not isinstance(base, Signature):
            raise CorruptRecordError("a signature delta needs the previous level's signature as its base")
        if base.block_len != block_len:
            raise CorruptRecordError(f"signature delta with block_len {block_len} on a base with {base.block_len}")
    n = -(-file_size // block_len)
    starts: list[int] = []
    stops: list[int] = []
    nums: list[NDArray[np.int64]] = []
    weak: list[NDArray[np.uint8]] = []
    strong: list[NDArray[np.uint8]] = []
    end = 0
    for number, run in enumerate(runs):
        if not isinstance(run, (tuple, list)) or len(run) != 4:
            raise CorruptRecordError(f"signature run #{number}: expected 4 fields, got {type(run).__name__}")
        first, count, w, s = run
        if not is_int(first) or not is_int(count):
            raise CorruptRecordError(f"signature run #{number}: first/count must be ints, got {first!r}, {count!r}")
        if count < 1 or first < end or first + count > n:
            raise CorruptRecordError(
                f"signature run #{number}: blocks first={first} count={count} not after block {end - 1} "
                f"and inside the {n} blocks of the file"
            )
        if (w is None) != (s is None):
            raise CorruptRecordError(f"signature run #{number}: weak and strong must be both given or both None")
        if w is not None:
            weak.append(_payload(w, 4 * count, "weak", number))
            strong.append(_payload(s, STRONG_LEN * count, "strong", number))
            nums.append(np.arange(first, first + count, dtype=np.int64))
        starts.append(first)
        stops.append(first + count)
        end = first + count
    all_nums = np.concatenate(nums) if nums else np.empty(0, dtype=np.int64)
    all_weak = np.concatenate(weak) if weak else np.empty(0, dtype=np.uint8)
    all_strong = np.concatenate(strong) if strong else np.empty(0, dtype=np.uint8)
    if delta:
        assert base is not None
        kept = base.block_numbers()
        kept = kept[: int(np.searchsorted(kept, n))]
        if starts:
            at = np.searchsorted(np.asarray(starts, dtype=np.int64), kept, side="right") - 1
            covered = (at >= 0) & (kept < np.asarray(stops, dtype=np.int64)[np.maximum(at, 0)])
            keep = np.flatnonzero(~covered)
        else:
            keep = np.arange(len(kept))
        all_nums = np.concatenate((kept[keep], all_nums))
        base_weak = base.weak.astype("<u4", copy=False)[keep].view(np.uint8)
        all_weak = np.concatenate((base_weak, all_weak))
        all_strong = np.concatenate((_strong_rows(base)[keep].reshape(-1), all_strong))
        order = np.argsort(all_nums, kind="stable")
        all_nums = all_nums[order]
        all_weak = all_weak.reshape(-1, 4)[order].reshape(-1)
        all_strong = all_strong.reshape(-1, STRONG_LEN)[order].reshape(-1)
    if file_size % block_len and (not len(all_nums) or int(all_nums[-1]) != n - 1):
        raise CorruptRecordError(f"signature runs leave the short last block {n - 1} without data")
    hashes = np.frombuffer(all_weak.tobytes(), dtype="<u4").astype(np.uint32)
    return Signature(block_len, file_size, hashes, all_strong.tobytes(), all_nums)
