"""Signature runs and deltas: runs(), diff(), apply() and their validation of stored input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freezer_rsyncv2.errors import CorruptRecordError
from freezer_rsyncv2.rsync.rollsum import weak_hash
from freezer_rsyncv2.rsync.sigdelta import MAX_RUN_BLOCKS, SigRun, apply, diff, runs
from freezer_rsyncv2.rsync.signature import Signature, SignatureBuilder, compute_signature, strong_hash

L = 16


def block(value: int, length: int = L) -> bytes:
    return np.random.default_rng(value + 1000).integers(1, 256, length, dtype=np.uint8).tobytes()


def image(blocks: list[int | None], tail: int = 0) -> bytes:
    """Blocks of L bytes (None: zeros, int: random content) then a short tail of ``tail`` bytes."""
    return b"".join(bytes(L) if v is None else block(v) for v in blocks) + block(99, tail)


def dense_signature(data: bytes) -> Signature:
    """Every block hashed, zero ones too: what an older, dense stored signature holds."""
    pieces = [data[i : i + L] for i in range(0, len(data), L)]
    weak = np.array([weak_hash(p) for p in pieces], dtype=np.uint32)
    return Signature(L, len(data), weak, b"".join(strong_hash(p) for p in pieces))


def states(sig: Signature) -> dict[int, tuple[int, bytes]]:
    """Data block number -> (weak, strong); a block absent from the dict is zero."""
    return {int(k): (int(sig.weak[i]), sig.strong[16 * i : 16 * i + 16]) for i, k in enumerate(sig.block_numbers())}


def run_payload(sig: Signature, first: int, count: int) -> tuple[bytes, bytes]:
    s = sig.slot(first)
    assert s is not None
    return sig.weak[s : s + count].astype("<u4").tobytes(), sig.strong[16 * s : 16 * (s + count)]


def test_runs_of_sparse_signature() -> None:
    sig = compute_signature(image([1, None, None, 2, 3, None], tail=5), L)
    got = list(runs(sig))
    assert [(r.first, r.count) for r in got] == [(0, 1), (3, 2), (6, 1)]
    for r in got:
        assert isinstance(r, SigRun) and (r.weak, r.strong) == run_payload(sig, r.first, r.count)
    assert apply(None, L, sig.file_size, got, delta=False) == sig


def test_runs_split_at_max_blocks() -> None:
    sig = compute_signature(image(list(range(10))), L)
    got = list(runs(sig, max_blocks=4))
    assert [(r.first, r.count) for r in got] == [(0, 4), (4, 4), (8, 2)]
    assert b"".join(r.strong or b"" for r in got) == sig.strong
    assert b"".join(r.weak or b"" for r in got) == sig.weak_bytes()
    assert [(r.first, r.count) for r in runs(sig)] == [(0, 10)]
    assert MAX_RUN_BLOCKS * 20 < 1 << 20
    assert list(runs(compute_signature(b"", L))) == []
    assert list(runs(compute_signature(bytes(10 * L), L))) == []
    with pytest.raises(ValueError):
        list(runs(sig, max_blocks=0))


def test_diff_exact() -> None:
    old = compute_signature(image([1, None, None, 2]), L)
    new = compute_signature(image([1, 3, None, None, 2], tail=5), L)
    got = list(diff(old, new))
    assert [(r.first, r.count, r.weak is None) for r in got] == [(1, 1, False), (3, 1, True), (4, 2, False)]
    assert (got[0].weak, got[0].strong) == run_payload(new, 1, 1)
    assert got[1] == SigRun(3, 1, None, None)
    assert (got[2].weak, got[2].strong) == run_payload(new, 4, 2)
    assert apply(old, L, new.file_size, got, delta=True) == new
    assert list(diff(new, new)) == []
    assert list(diff(old, compute_signature(image([1]), L))) == []  # shrunk: nothing changed below n


def test_diff_dense_old_against_sparse_new() -> None:
    data = image([1, None, 2, None, None, 3])
    old = dense_signature(data)
    new = compute_signature(data, L)
    assert old.is_dense and not new.is_dense and old != new
    assert [(r.first, r.count, r.weak) for r in diff(old, new)] == [(1, 1, None), (3, 2, None)]
    assert apply(old, L, new.file_size, diff(old, new), delta=True) == new


def test_diff_splits_data_runs() -> None:
    old = compute_signature(image([None] * 10), L)
    new = compute_signature(image(list(range(10))), L)
    assert [(r.first, r.count) for r in diff(old, new, max_blocks=3)] == [(0, 3), (3, 3), (6, 3), (9, 1)]


def test_diff_misuse() -> None:
    with pytest.raises(ValueError, match="block_len"):
        list(diff(compute_signature(b"x", 16), compute_signature(b"x", 17)))
    with pytest.raises(ValueError, match="max_blocks"):
        list(diff(compute_signature(b"x", 16), compute_signature(b"x", 16), max_blocks=-1))


def test_diff_cost_follows_data() -> None:
    """1 TiB apparent size, 4096 data blocks: the arrays involved are O(data), so this is instant."""
    def build(data_at: int, fill: int) -> Signature:
        b = SignatureBuilder(4096)
        b.zeros(data_at)
        b.update(bytes([fill]) * (16 << 20))
        b.zeros((1 << 40) - data_at - (16 << 20))
        return b.finish()

    old, new = build(1 << 39, 1), build((1 << 39) + (8 << 20), 2)
    got = list(diff(old, new))
    assert [(r.first, r.count, r.weak is None) for r in got] == [
        (1 << 27, 2048, True), ((1 << 27) + 2048, 4096, False)]
    assert apply(old, 4096, new.file_size, got, delta=True) == new


def test_apply_delta_semantics() -> None:
    base = compute_signature(image([1, 2, 3, 4]), L)
    e = compute_signature(image([5]), L)
    runs_in = [SigRun(1, 1, None, None), SigRun(3, 1, e.weak_bytes(), e.strong)]
    got = apply(base, L, 5 * L, runs_in, delta=True)
    assert got == compute_signature(image([1, None, 3, 5, None]), L)
    assert apply(base, L, 2 * L, [], delta=True) == compute_signature(image([1, 2]), L)
    # without delta, zero runs are no-ops and nothing comes from the base
    got = apply(base, L, 5 * L, runs_in, delta=False)
    assert got == compute_signature(image([None, None, None, 5, None]), L)


def test_apply_accepts_decoded_forms() -> None:
    sig = compute_signature(image([1, 2, None, 3]), L)
    decoded = [[r.first, r.count, memoryview(r.weak or b""), bytearray(r.strong or b"")] for r in runs(sig)]
    assert apply(None, L, sig.file_size, iter(decoded), delta=False) == sig


W1, S1 = np.zeros(1, "<u4").tobytes(), bytes(16)


@pytest.mark.parametrize(
    ("size", "items", "words"),
    [
        (64, [5], ["run #0", "4 fields", "int"]),
        (64, [(0, 1, None)], ["run #0", "4 fields"]),
        (64, [(0, 1, W1, S1, 0)], ["4 fields"]),
        (64, [("0", 1, W1, S1)], ["must be ints"]),
        (64, [(0, True, W1, S1)], ["must be ints"]),
        (64, [(0, 0, b"", b"")], ["count=0"]),
        (64, [(-1, 1, W1, S1)], ["first=-1"]),
        (64, [(0, 2, W1 * 2, S1 * 2), (1, 1, W1, S1)], ["run #1", "first=1", "not after block 1"]),
        (64, [(2, 1, W1, S1), (0, 1, W1, S1)], ["run #1", "first=0"]),
        (64, [(3, 2, W1 * 2, S1 * 2)], ["count=2", "inside the 4 blocks"]),
        (64, [(4, 1, None, None)], ["first=4"]),
        (64, [(0, 1, None, S1)], ["both given or both None"]),
        (64, [(0, 1, W1, None)], ["both given or both None"]),
        (64, [(0, 1, W1[:3], S1)], ["weak must be 4 bytes, got 3"]),
        (64, [(0, 1, W1, S1 + b"x")], ["strong must be 16 bytes, got 17"]),
        (64, [(0, 1, "abcd", S1)], ["weak must be bytes, got str"]),
        (64, [(0, 1, W1, 7)], ["strong must be bytes, got int"]),
        (2**62, [(0, 10**17, W1, S1)], ["weak must be 400000000000000000 bytes, got 4"]),
        (20, [(0, 1, W1, S1)], ["short last block 1"]),
        (20, [(0, 1, W1, S1), (1, 1, None, None)], ["short last block 1"]),
        (-1, [], ["file_size"]),
        (2**63, [], ["file_size"]),
    ],
)
def test_apply_rejects_bad_runs(size: int, items: list[Any], words: list[str]) -> None:
    with pytest.raises(CorruptRecordError) as info:
        apply(None, L, size, items, delta=False)
    for word in words:
        assert word in str(info.value)


def test_apply_checks_base() -> None:
    with pytest.raises(CorruptRecordError, match="previous level"):
        apply(None, L, 64, [], delta=True)
    with pytest.raises(CorruptRecordError, match="block_len 16 on a base with 32"):
        apply(compute_signature(b"x" * 64, 32), L, 64, [], delta=True)
    with pytest.raises(CorruptRecordError, match="block_len"):
        apply(None, 0, 64, [], delta=False)
    base = compute_signature(image([1, 2]), L)  # 2 full blocks; growing to a short third needs its data
    with pytest.raises(CorruptRecordError, match="short last block 2"):
        apply(base, L, 2 * L + 3, [], delta=True)


content = st.one_of(st.none(), st.integers(0, 6))


@st.composite
def versions(draw: Any) -> tuple[bytes, bytes]:
    """Two versions of an image: the second an in-place edit, maybe resized, of the first."""
    old = draw(st.lists(content, max_size=40))
    new = list(old)
    for _ in range(draw(st.integers(0, 6))):
        if new:
            new[draw(st.integers(0, len(new) - 1))] = draw(content)
    new = new[: draw(st.integers(0, len(new)))] + draw(st.lists(content, max_size=8))
    old_tail = draw(st.integers(0, L - 1))
    new_tail = draw(st.one_of(st.just(old_tail), st.integers(0, L - 1)))
    return image(old, old_tail), image(new, new_tail)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair=versions(), old_dense=st.booleans(), new_dense=st.booleans(), max_blocks=st.integers(1, 6))
def test_diff_apply_round_trip(pair: tuple[bytes, bytes], old_dense: bool, new_dense: bool, max_blocks: int) -> None:
    old = dense_signature(pair[0]) if old_dense else compute_signature(pair[0], L)
    new = dense_signature(pair[1]) if new_dense else compute_signature(pair[1], L)
    got = list(diff(old, new, max_blocks))
    # exactly the blocks whose state changed, zero runs for blocks that became zero
    before, after = states(old), states(new)
    changed = {k for k in range(new.block_count) if before.get(k) != after.get(k)}
    covered: list[int] = []
    for r in got:
        assert r.count >= 1
        blocks = range(r.first, r.first + r.count)
        covered.extend(blocks)
        if r.weak is None:
            assert r.strong is None and all(k not in after for k in blocks)
        else:
            assert r.count <= max_blocks
            assert (r.weak, r.strong) == run_payload(new, r.first, r.count)
    assert covered == sorted(changed)
    assert apply(old, L, new.file_size, got, delta=True) == new
    full = list(runs(new, max_blocks))
    assert all(r.weak is not None and r.count <= max_blocks for r in full)
    assert apply(None, L, new.file_size, full, delta=False) == new
    assert apply(old, L, new.file_size, full, delta=False) == new
