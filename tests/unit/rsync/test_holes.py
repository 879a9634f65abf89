"""Matcher and patcher over sparse signatures and holes (HOLE ops), as for VM disk images."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freezer_rsyncv2.errors import CorruptRecordError
from freezer_rsyncv2.rsync import HOLE
from freezer_rsyncv2.rsync.matcher import COPY, LITERAL, Matcher, Op
from freezer_rsyncv2.rsync.patcher import patch, plan
from freezer_rsyncv2.rsync.signature import Signature, compute_signature

L = 4096


def rand_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def rebuild(ops: list[Op], old: bytes, block_len: int) -> bytes:
    parts = patch(ops, lambda off, n: old[off : off + n], block_len, len(old))
    return b"".join(bytes(p) if isinstance(p, int) else p for p in parts)


def run(sig: Signature, pieces: Iterable[bytes | int]) -> tuple[list[Op], Matcher]:
    """Feed bytes and report ints as holes, then finish."""
    m = Matcher(sig)
    ops: list[Op] = []
    for piece in pieces:
        ops.extend(m.zeros(piece) if isinstance(piece, int) else m.feed(piece))
    ops.extend(m.finish())
    return ops, m


def check(sig: Signature, old: bytes, new: bytes, ops: list[Op], m: Matcher) -> None:
    assert rebuild(ops, old, sig.block_len) == new
    holes = 0
    for op in ops:
        if op[0] == COPY:
            assert all(sig.slot(k) is not None for k in range(op[1], op[1] + op[2])), "COPY of a zero block"
        elif op[0] == HOLE:
            assert isinstance(op[1], int) and op[1] >= 1
            holes += op[1]
    assert m.literal_bytes == sum(len(op[1]) for op in ops if op[0] == LITERAL)
    assert m.literal_bytes + m.copied_bytes + holes == len(new)


def blocks_of(kinds: list[Any]) -> bytes:
    """Image from per-block kinds: None is a zero block, an int a random block with that seed."""
    return b"".join(bytes(L) if k is None else rand_bytes(L, k) for k in kinds)


def as_pieces(kinds: list[Any], tail: bytes = b"") -> list[bytes | int]:
    """What a reader of a sparse image gives: data runs as bytes, zero-block runs as hole lengths."""
    out: list[bytes | int] = []
    for k in kinds:
        if k is None:
            if out and isinstance(out[-1], int):
                out[-1] += L
            else:
                out.append(L)
        elif out and isinstance(out[-1], bytes):
            out[-1] += rand_bytes(L, k)
        else:
            out.append(rand_bytes(L, k))
    if tail:
        out.append(tail)
    return out


def test_image_edited_in_place() -> None:
    old_kinds = list(range(10)) + [None] * 90 + list(range(100, 110))
    new_kinds = list(old_kinds)
    new_kinds[3] = 1003  # a data block rewritten
    new_kinds[50] = 1050  # a hole filled
    old, new = blocks_of(old_kinds), blocks_of(new_kinds)
    sig = compute_signature(old, L)
    assert sig.data_count == 20 and sig.block_count == 110
    ops, m = run(sig, as_pieces(new_kinds))
    assert ops == [
        (COPY, 0, 3), (LITERAL, rand_bytes(L, 1003)), (COPY, 4, 6),
        (HOLE, 40 * L), (LITERAL, rand_bytes(L, 1050)), (HOLE, 49 * L), (COPY, 100, 10),
    ]
    check(sig, old, new, ops, m)
    assert m.literal_bytes == 2 * L and m.copied_bytes == 19 * L


def test_region_after_aligned_hole_starts_at_same_block() -> None:
    """Identical blocks 0-4 and 5-9: after a hole ending at offset 5*L block 5 is tried first, not the lowest."""
    half = blocks_of(list(range(5)))
    old = half + half
    sig = compute_signature(old, L)
    ops, m = run(sig, [5 * L, half])
    assert ops == [(HOLE, 5 * L), (COPY, 5, 5)]
    check(sig, old, bytes(5 * L) + half, ops, m)
    # unaligned: a search, which picks the lowest identical block
    ops, m = run(sig, [5 * L + 1, half])
    assert ops == [(HOLE, 5 * L + 1), (COPY, 0, 5)]
    # at the start, block 0 is tested first
    ops, _ = run(sig, [half])
    assert ops == [(COPY, 0, 5)]


def test_zero_blocks_are_never_copied() -> None:
    old = blocks_of([1, None, 2])
    sig = compute_signature(old, L)
    ops, m = run(sig, [old])  # the zeros fed as data: literal, the basis has no block for them
    assert ops == [(COPY, 0, 1), (LITERAL, bytes(L)), (COPY, 2, 1)]
    check(sig, old, old, ops, m)
    ops, m = run(sig, [rand_bytes(L, 1), L, rand_bytes(L, 2)])
    assert ops == [(COPY, 0, 1), (HOLE, L), (COPY, 2, 1)]
    all_zero = compute_signature(bytes(8 * L), L)
    new = rand_bytes(100) + bytes(3 * L)
    ops, m = run(all_zero, [new])
    assert ops == [(LITERAL, new)]
    ops, m = run(all_zero, [8 * L])
    assert ops == [(HOLE, 8 * L)] and m.literal_bytes == m.copied_bytes == 0


def test_follow_stops_at_zero_block() -> None:
    """Following a match into the next block only when that block is a data block."""
    old = blocks_of([1, 2, None, 3, 4])
    sig = compute_signature(old, L)
    new = blocks_of([1, 2, 3, 4])  # the zero block removed: the follow must not try it
    ops, m = run(sig, [new])
    assert ops == [(COPY, 0, 2), (COPY, 3, 2)]
    check(sig, old, new, ops, m)


def test_short_last_block_and_holes() -> None:
    old = blocks_of([1, 2]) + b"short tail"
    sig = compute_signature(old, L)
    # followed into before a hole: copied
    ops, m = run(sig, [old, 5000])
    assert ops == [(COPY, 0, 3), (HOLE, 5000)]
    # searched for only at the real end
    ops, m = run(sig, [b"short tail", 1000])
    assert ops == [(LITERAL, b"short tail"), (HOLE, 1000)]
    ops, m = run(sig, [1000, b"short tail"])
    assert ops == [(HOLE, 1000), (COPY, 2, 1)]
    check(sig, old, bytes(1000) + b"short tail", ops, m)


def test_zeros_flushes_pending_ops() -> None:
    old = blocks_of([1, 2, 3])
    sig = compute_signature(old, L)
    m = Matcher(sig)
    assert list(m.feed(old[: 2 * L] + b"xyz")) == []  # all held below the threshold
    assert list(m.zeros(7)) == [(COPY, 0, 2), (LITERAL, b"xyz"), (HOLE, 7)]
    assert list(m.zeros(3)) == [(HOLE, 3)]
    assert list(m.zeros(0)) == []
    assert m.buffered_bytes == 0
    # offset 2*L + 13: not aligned, a search finds block 2
    assert list(m.feed(old[2 * L :])) == []
    assert list(m.finish()) == [(COPY, 2, 1)]
    assert m.literal_bytes == 3 and m.copied_bytes == 3 * L


def test_zeros_misuse() -> None:
    m = Matcher(compute_signature(b"abc", 16))
    for bad in (-1, 1.0, True, None):
        with pytest.raises(ValueError):
            m.zeros(bad)  # type: ignore[arg-type]
    list(m.finish())
    with pytest.raises(RuntimeError):
        m.zeros(1)


def test_big_sparse_image_small_blocks() -> None:
    """A 64 MiB image, 1 MiB of data in 4 KiB blocks, scattered writes and an insert near the start."""
    rng = np.random.default_rng(5)
    data_blocks = sorted(rng.choice(16384, 256, replace=False).tolist())
    old_kinds: list[Any] = [None] * 16384
    for k in data_blocks:
        old_kinds[k] = k
    sig = compute_signature(blocks_of(old_kinds), L)
    assert sig.data_count == 256 and not sig.is_dense
    new_kinds = list(old_kinds)
    for k in data_blocks[::16]:
        new_kinds[k] = k + 100_000
    ops, m = run(sig, as_pieces(new_kinds))
    assert m.literal_bytes == 16 * L and m.copied_bytes == 240 * L
    check(sig, blocks_of(old_kinds), blocks_of(new_kinds), ops, m)
    # 5 bytes inserted in the first data run: everything after is shifted, found by searches
    first = data_blocks[0]
    pieces = as_pieces(new_kinds)
    at = next(i for i, p in enumerate(pieces) if isinstance(p, bytes))
    pieces[at] = pieces[at][:100] + b"12345" + pieces[at][100:]
    ops, m = run(sig, pieces)
    new = b"".join(bytes(p) if isinstance(p, int) else p for p in pieces)
    check(sig, blocks_of(old_kinds), new, ops, m)
    damaged = 1 if new_kinds[first] == first else 0  # the first data block, if it was unchanged
    assert m.copied_bytes == (240 - damaged) * L
    assert m.literal_bytes == (16 + damaged) * L + 5


def test_patch_and_plan_holes() -> None:
    basis = rand_bytes(3 * L)
    ops = [(HOLE, 5), (COPY, 1, 1), (HOLE, 2**40), (LITERAL, b"x"), [HOLE, 1]]
    assert list(plan(ops, L, len(basis))) == [5, (L, L), 2**40, b"x", 1]
    out = list(patch(ops, lambda o, n: basis[o : o + n], L, len(basis)))
    assert out == [5, basis[L : 2 * L], 2**40, b"x", 1]
    assert list(plan([(HOLE, 2**63 - 1)], L, 0)) == [2**63 - 1]


def test_patch_copies_zero_blocks_of_the_basis() -> None:
    """The patcher knows only block_len and basis_size: a COPY naming a zero block is a plain range."""
    basis = blocks_of([1, None, 2])
    assert compute_signature(basis, L).slot(1) is None
    assert list(plan([(COPY, 1, 1)], L, len(basis))) == [(L, L)]
    assert rebuild([(COPY, 0, 3)], basis, L) == basis


@pytest.mark.parametrize(
    ("op", "words"),
    [
        ((HOLE,), ["op #1", "HOLE op needs 2 fields"]),
        ((HOLE, 1, 2), ["HOLE op needs 2 fields"]),
        ((HOLE, 0), ["HOLE length", "got 0"]),
        ((HOLE, -3), ["got -3"]),
        ((HOLE, True), ["got True"]),
        ((HOLE, 1.0), ["got 1.0"]),
        ((HOLE, b"\x01"), ["HOLE length"]),
        ((HOLE, None), ["got None"]),
        ((HOLE, 2**63), ["got 9223372036854775808"]),
    ],
)
def test_patch_rejects_bad_holes(op: Any, words: list[str]) -> None:
    with pytest.raises(CorruptRecordError) as info:
        list(patch([(LITERAL, b"ok"), op], lambda o, n: b"", L, 0))
    for word in words:
        assert word in str(info.value)


kind = st.one_of(st.none(), st.none(), st.integers(0, 30), st.just("edit"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    old_kinds=st.lists(st.one_of(st.none(), st.integers(0, 30)), max_size=40),
    edits=st.lists(st.tuples(st.floats(0, 1), kind), max_size=10),
    tail=st.integers(0, 63),
    block_len=st.sampled_from([16, 64]),
)
def test_in_place_edits_cost_only_the_changed_blocks(
    old_kinds: list[Any], edits: list[tuple[float, Any]], tail: int, block_len: int
) -> None:
    """Blocks rewritten in place, holes as HOLE ops: the literal is exactly the rewritten data blocks."""
    tail %= block_len
    unique = 0

    def blk(k: Any) -> bytes:
        return bytes(block_len) if k is None else rand_bytes(block_len, k)

    new_kinds = list(old_kinds)
    for where, value in edits:
        if new_kinds:
            if value == "edit":
                unique += 1
                value = 10_000 + unique
            new_kinds[int(where * (len(new_kinds) - 1))] = value
    end = rand_bytes(tail, 777)
    old = b"".join(blk(k) for k in old_kinds) + end
    new = b"".join(blk(k) for k in new_kinds) + end
    sig = compute_signature(old, block_len)
    pieces: list[bytes | int] = []
    for k in new_kinds:
        if k is None:
            pieces.append(block_len)
        else:
            pieces.append(blk(k))
    pieces.append(end)
    ops, m = run(sig, [p for p in pieces if p != b""])
    check(sig, old, new, ops, m)
    present = {k for k in old_kinds if k is not None}
    fresh = sum(1 for k in new_kinds if k is not None and k not in present)
    assert m.literal_bytes == fresh * block_len
