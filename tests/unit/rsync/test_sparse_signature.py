"""Sparse signatures (zero blocks not hashed) and the builder's zero detection and zeros()."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freezer_rsyncv2.errors import CorruptRecordError
from freezer_rsyncv2.rsync.rollsum import weak_hash
from freezer_rsyncv2.rsync.signature import (
    MAX_FILE_SIZE,
    STRONG_LEN,
    Signature,
    SignatureBuilder,
    compute_signature,
    strong_hash,
)

TiB = 1 << 40


def rand_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def reference(data: bytes, block_len: int) -> Signature:
    """Block by block: a full-length all-zero block is a zero block, anything else is hashed."""
    nums, weak, strong = [], [], []
    for k, start in enumerate(range(0, len(data), block_len)):
        block = data[start : start + block_len]
        if len(block) == block_len and not any(block):
            continue
        nums.append(k)
        weak.append(weak_hash(block))
        strong.append(strong_hash(block))
    return Signature(block_len, len(data), np.array(weak, dtype=np.uint32), b"".join(strong),
                     np.array(nums, dtype=np.int64))


def sparse_sig() -> tuple[bytes, Signature]:
    """Blocks of 16: data, zero, zero, data, zero, short data (5 bytes)."""
    data = rand_bytes(16) + bytes(32) + rand_bytes(16, 1) + bytes(16) + b"tail!"
    return data, compute_signature(data, 16)


def test_sparse_signature_accessors() -> None:
    data, sig = sparse_sig()
    assert not sig.is_dense
    assert sig.block_count == 6 and sig.data_count == 3 and sig.file_size == 85
    assert sig.block_numbers().tolist() == [0, 3, 5]
    assert sig.blocks is not None and sig.blocks.dtype == np.int64
    assert [sig.slot(k) for k in range(6)] == [0, None, None, 1, None, 2]
    assert [sig.block_length(k) for k in range(6)] == [16] * 5 + [5]
    assert sig.strong[STRONG_LEN : 2 * STRONG_LEN] == strong_hash(data[48:64])
    assert int(sig.weak[2]) == weak_hash(b"tail!")
    assert sig == reference(data, 16)
    for bad in (-1, 6):
        with pytest.raises(IndexError):
            sig.slot(bad)
        with pytest.raises(IndexError):
            sig.block_length(bad)


def test_blocks_are_an_own_read_only_copy() -> None:
    _, sig = sparse_sig()
    numbers = np.array([0, 3, 5])
    again = Signature(16, 85, sig.weak, sig.strong, numbers)
    numbers[0] = 1
    assert again.block_numbers().tolist() == [0, 3, 5]
    with pytest.raises(ValueError):
        again.block_numbers()[0] = 2


def test_dense_accessors() -> None:
    sig = compute_signature(rand_bytes(50), 16)
    assert sig.is_dense and sig.blocks is None
    assert sig.block_count == sig.data_count == 4
    assert sig.block_numbers().tolist() == [0, 1, 2, 3]
    assert [sig.slot(k) for k in range(4)] == [0, 1, 2, 3]


def test_sparse_listing_every_block_is_dense() -> None:
    data = rand_bytes(50)
    dense = compute_signature(data, 16)
    listed = Signature(16, 50, dense.weak, dense.strong, np.arange(4))
    assert listed.is_dense and listed.blocks is None
    assert listed == dense and dense == listed


def test_equality_is_logical() -> None:
    data, sig = sparse_sig()
    same = Signature(16, 85, sig.weak.copy(), sig.strong, np.array([0, 3, 5], dtype=np.uint32))
    assert same == sig
    moved = Signature(16, 85, sig.weak, sig.strong, np.array([0, 2, 5]))
    assert moved != sig
    assert sig != compute_signature(data[:84] + b"?", 16)
    # same hashes but one more zero block: different file
    assert Signature(16, 101, sig.weak, sig.strong, np.array([0, 3, 6])) != sig
    all_zero = compute_signature(bytes(64), 16)
    assert all_zero.data_count == 0 and not all_zero.is_dense
    assert all_zero == Signature(16, 64, np.empty(0, np.uint32), b"", np.empty(0, np.int64))
    assert all_zero != Signature(16, 48, np.empty(0, np.uint32), b"", np.empty(0, np.int64))


@pytest.mark.parametrize(
    ("size", "blocks", "count", "words"),
    [
        (64, [1, 0], 2, ["not strictly increasing"]),
        (64, [1, 1], 2, ["not strictly increasing"]),
        (64, [0, 4], 2, ["outside 0..3"]),
        (64, [-1, 2], 2, ["outside 0..3"]),
        (64, [0, 1, 2, 3, 3], 5, ["at most 4"]),
        (65, [0, 1], 2, ["short last block 4"]),
        (65, [], 0, ["short last block 4"]),
        (64, [[0, 1]], 2, ["shape (1, 2)"]),
        (64, [0.0, 1.0], 2, ["float64"]),
        (64, [True, False], 2, ["bool"]),
        (64, [0, 2], 3, ["weak", "expected 2"]),
        (0, [0], 1, ["at most 0"]),
    ],
)
def test_sparse_constructor_validates(size: int, blocks: list, count: int, words: list[str]) -> None:
    with pytest.raises(CorruptRecordError) as info:
        numbers = np.array(blocks) if blocks else np.empty(0, dtype=np.int64)
        Signature(16, size, np.zeros(count, dtype=np.uint32), b"\0" * 16 * count, numbers)
    for word in words:
        assert word in str(info.value)


def test_sparse_constructor_checks_strong_against_data_blocks() -> None:
    with pytest.raises(CorruptRecordError, match="strong: expected 32 bytes"):
        Signature(16, 64, np.zeros(2, dtype=np.uint32), b"\0" * 64, np.array([0, 2]))
    huge = np.array([2**64 - 1], dtype=np.uint64)
    with pytest.raises(CorruptRecordError, match="outside"):
        Signature(16, 64, np.zeros(1, dtype=np.uint32), b"\0" * 16, huge)
    with pytest.raises(CorruptRecordError, match="file_size"):
        Signature(16, MAX_FILE_SIZE + 1, np.zeros(0, dtype=np.uint32), b"", np.empty(0, np.int64))


def test_to_bytes_is_for_dense_signatures() -> None:
    _, sig = sparse_sig()
    with pytest.raises(ValueError, match="sparse"):
        sig.to_bytes()
    assert sig.weak_bytes() == sig.weak.astype("<u4").tobytes()
    dense = compute_signature(rand_bytes(100), 16)
    assert Signature.from_bytes(16, 100, *dense.to_bytes()) == dense


def test_builder_detects_zero_blocks() -> None:
    L = 4096
    data = rand_bytes(L) + bytes(3 * L) + rand_bytes(L, 1)[:-1] + b"\x00" + bytes(L) + rand_bytes(L, 2) + bytes(100)
    sig = compute_signature(data, L)
    assert sig.block_numbers().tolist() == [0, 4, 6, 7]
    assert sig == reference(data, L)
    assert compute_signature(rand_bytes(3 * L), L).is_dense
    # a short all-zero last block is a data block, hashed
    tail = compute_signature(bytes(L + 10), L)
    assert tail.block_numbers().tolist() == [1] and int(tail.weak[0]) == weak_hash(bytes(10))
    assert compute_signature(bytes(10), L).is_dense


@pytest.mark.parametrize("block_len", [16, 17, 20, 22, 700, 4096])
def test_zero_detection_any_block_len(block_len: int) -> None:
    """Word sizes 8, 1, 4, 2, 4 and 8 bytes; a single non-zero byte anywhere makes a data block."""
    n = 40
    data = bytearray(n * block_len + 3)
    rng = np.random.default_rng(block_len)
    marked = sorted(set(rng.integers(0, n, 12).tolist()))
    for k in marked:
        data[k * block_len + int(rng.integers(0, block_len))] = int(rng.integers(1, 256))
    builder = SignatureBuilder(block_len)
    builder.update(memoryview(bytes(data))[:1])
    builder.update(memoryview(bytes(data))[1:])  # unaligned views
    sig = builder.finish()
    assert sig.block_numbers().tolist() == marked + [n]
    assert sig == reference(bytes(data), block_len)


def test_zeros_huge_runs() -> None:
    builder = SignatureBuilder(4096)
    builder.zeros(15 * TiB)
    builder.update(b"abc")
    builder.zeros(15 * TiB + 5)
    builder.update(rand_bytes(8192))
    sig = builder.finish()
    assert sig.file_size == 30 * TiB + 8 + 8192
    assert sig.block_count == -(-sig.file_size // 4096)
    first = 15 * TiB // 4096
    assert sig.block_numbers().tolist() == [first, 2 * first, 2 * first + 1, 2 * first + 2]
    # the block holding b"abc" + zeros is hashed as fed
    assert sig.strong[:STRONG_LEN] == strong_hash(b"abc" + bytes(4093))


def test_zeros_partial_blocks() -> None:
    b = SignatureBuilder(16)
    b.update(b"x")
    b.zeros(5)
    b.zeros(0)
    b.zeros(10)  # completes block 0: x + 15 zeros
    b.zeros(16 * 3 + 4)  # blocks 1..3 zero, 4 zero bytes pending
    b.zeros(12)  # block 4: completed by zeros only, a zero block
    b.update(b"\0" * 3 + b"y")
    sig = b.finish()
    assert sig == reference(b"x" + bytes(15 + 48 + 16 + 3) + b"y", 16)
    assert sig.block_numbers().tolist() == [0, 5]


def test_zeros_misuse() -> None:
    b = SignatureBuilder(16)
    for bad in (-1, 1.5, True, None):
        with pytest.raises(ValueError):
            b.zeros(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="larger"):
        b.zeros(MAX_FILE_SIZE + 1)
    b.finish()
    with pytest.raises(RuntimeError):
        b.zeros(1)


def test_builder_memory_follows_data() -> None:
    """1 TiB apparent size, 16 MiB of data: the builder holds O(data blocks)."""
    chunk = rand_bytes(1 << 20, 3)
    tracemalloc.start()
    try:
        builder = SignatureBuilder(4096)
        for _ in range(16):
            builder.zeros(TiB // 16 - len(chunk))
            builder.update(chunk)
        sig = builder.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sig.file_size == TiB and sig.data_count == 16 * 256
    assert peak < 8 << 20


segment = st.one_of(
    st.tuples(st.just("data"), st.integers(1, 300), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("zero"), st.integers(1, 300)),
    st.tuples(st.just("hole"), st.integers(0, 300)),
    st.tuples(st.just("speck"), st.integers(1, 300)),  # zeros with one non-zero byte at the end
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block_len=st.sampled_from([16, 17, 24, 64, 100]), segments=st.lists(segment, max_size=25),
       cuts=st.lists(st.integers(1, 400), min_size=1, max_size=6))
def test_builder_equals_update_only(block_len: int, segments: list[tuple], cuts: list[int]) -> None:
    """Any mix of update() at any split points and zeros() equals update() of the same bytes."""
    builder = SignatureBuilder(block_len)
    parts = []
    i = 0
    for seg in segments:
        kind, size = seg[0], seg[1]
        if kind == "hole":
            builder.zeros(size)
            parts.append(bytes(size))
            continue
        piece = rand_bytes(size, seg[2]) if kind == "data" else bytes(size - 1) + b"\x01" if kind == "speck" \
            else bytes(size)
        parts.append(piece)
        pos = 0
        while pos < size:
            step = cuts[i % len(cuts)]
            builder.update(piece[pos : pos + step])
            pos += step
            i += 1
    sig = builder.finish()
    data = b"".join(parts)
    assert sig == compute_signature(data, block_len)
    assert sig == reference(data, block_len)
    assert sig.is_dense == (sig.data_count == sig.block_count)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), max_size=40), st.integers(1, 6),
       st.integers(0, 7), st.randoms(use_true_random=False))
def test_short_zero_runs_are_listed_as_data_blocks(zero_flags, min_run, tail,
                                                   rnd):
    """A run of fewer than min_zero_run zero blocks is listed with the zero
    block's hashes; longer runs stay implicit."""
    L = 8
    blocks = [bytes(L) if z else bytes([rnd.randrange(1, 256)]) * L
              for z in zero_flags]
    data = b"".join(blocks) + bytes([7]) * tail
    builder = SignatureBuilder(L, min_run)
    builder.update(data)
    sig = builder.finish()
    listed = set(sig.block_numbers().tolist())
    for slot, k in enumerate(sig.block_numbers().tolist()):
        assert sig.strong[slot * 16:(slot + 1) * 16] == \
            strong_hash(data[k * L:(k + 1) * L])
    run_start = None
    for k, z in enumerate(zero_flags + [False]):
        if z and run_start is None:
            run_start = k
        elif not z and run_start is not None:
            run = set(range(run_start, k))
            assert (run <= listed) if len(run) < min_run else not (run & listed)
            run_start = None
