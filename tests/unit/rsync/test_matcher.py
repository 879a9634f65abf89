"""Matcher round trips through the patcher, and the shape of the ops it emits."""

from __future__ import annotations

import random
from typing import Iterable

import numpy as np
import pytest

from freezer_rsyncv2.rsync.matcher import COPY, LITERAL, MAX_LITERAL, Matcher, Op
from freezer_rsyncv2.rsync.patcher import patch
from freezer_rsyncv2.rsync.signature import Signature, compute_signature

MiB = 1 << 20


def rand_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def acgt(n: int, seed: int = 0) -> bytes:
    return np.frombuffer(b"ACGT", dtype=np.uint8)[np.random.default_rng(seed).integers(0, 4, n)].tobytes()


def chunks(data: bytes, sizes: Iterable[int] | None) -> Iterable[bytes]:
    if sizes is None:
        yield data
        return
    it = iter(sizes)
    pos = 0
    while pos < len(data):
        step = next(it)
        yield data[pos : pos + step]
        pos += step


def check_ops(ops: list[Op], sig: Signature) -> None:
    """Ops are well formed, COPY runs merged, literals merged up to MAX_LITERAL."""
    prev: Op | None = None
    for op in ops:
        assert op[0] in (COPY, LITERAL)
        if op[0] == COPY:
            _, first, count = op
            assert count >= 1 and 0 <= first and first + count <= sig.block_count
            if prev is not None and prev[0] == COPY:
                assert prev[1] + prev[2] != first, "adjacent COPY ops not merged"
        else:
            assert isinstance(op[1], bytes) and 0 < len(op[1]) <= MAX_LITERAL
            if prev is not None and prev[0] == LITERAL:
                assert len(prev[1]) == MAX_LITERAL, "adjacent LITERAL ops not merged"
        prev = op


def delta(
    old: bytes, new: bytes, block_len: int, sizes: Iterable[int] | None = None
) -> tuple[list[Op], Matcher]:
    sig = compute_signature(old, block_len)
    matcher = Matcher(sig)
    ops: list[Op] = []
    for piece in chunks(new, sizes):
        ops.extend(matcher.feed(piece))
    ops.extend(matcher.finish())
    check_ops(ops, sig)
    out = b"".join(patch(ops, lambda off, n: old[off : off + n], block_len, len(old)))
    assert out == new
    assert matcher.literal_bytes == sum(len(op[1]) for op in ops if op[0] == LITERAL)
    assert matcher.literal_bytes + matcher.copied_bytes == len(new)
    return ops, matcher


def random_sizes(seed: int, low: int = 1, high: int = MiB) -> Iterable[int]:
    rng = random.Random(seed)
    while True:
        small = rng.randint(low, max(low, min(high, 64)))
        yield rng.choice([rng.randint(low, high), small, rng.randint(low, max(low, high // 16))])


OLD4 = rand_bytes(4 * MiB, 1)


@pytest.mark.parametrize("block_len", [700, 4096])
def test_identical_is_one_copy(block_len: int) -> None:
    ops, m = delta(OLD4, OLD4, block_len)
    assert ops == [(COPY, 0, -(-len(OLD4) // block_len))]
    assert m.literal_bytes == 0


def test_identical_in_random_chunks_is_one_copy() -> None:
    ops, m = delta(OLD4, OLD4, 4096, random_sizes(3))
    assert ops == [(COPY, 0, 1024)] and m.literal_bytes == 0


def test_insert_seven_bytes() -> None:
    new = OLD4[:100] + b"INSERT!" + OLD4[100:]
    for sizes in (None, random_sizes(4)):
        ops, m = delta(OLD4, new, 4096, sizes)
        assert m.literal_bytes < 2 * 4096
        assert m.copied_bytes >= len(OLD4) - 4096


@pytest.mark.parametrize("block_len", [16, 700, 4096])
def test_edits(block_len: int) -> None:
    old = OLD4[: MiB + 333]
    cases = {
        "delete": old[:5000] + old[5100:],
        "overwrite": old[:70000] + b"x" * 1024 + old[71024:],
        "append": old + b"tail" * 1000,
        "truncate": old[: len(old) - 12345],
        "prepend": b"head" * 77 + old,
        "middle_drop": old[: len(old) // 3] + old[2 * len(old) // 3 :],
        "swap": old[len(old) // 2 :] + old[: len(old) // 2],
    }
    for name, new in cases.items():
        ops, m = delta(old, new, block_len, random_sizes(hash(name) & 0xFFFF, 1, 200_000))
        changed = abs(len(new) - len(old))
        assert m.literal_bytes <= changed + 3 * block_len + 2048, name


def test_unrelated_is_all_literal() -> None:
    new = rand_bytes(3 * MiB + 5, 2)
    ops, m = delta(OLD4, new, 4096)
    assert m.copied_bytes == 0
    assert all(op[0] == LITERAL for op in ops)
    assert [len(op[1]) for op in ops] == [MAX_LITERAL] * 3 + [5]


def test_constant_files_with_inserts() -> None:
    """Identical blocks everywhere (zeros would be zero blocks: see test_holes.py)."""
    old = b"\x07" * (2 * MiB)
    new = bytearray(old)
    for pos in (5, 70_000, 1_000_000, 1_500_000):
        new[pos:pos] = b"\x01\x02\x03"
    ops, m = delta(old, bytes(new), 4096, random_sizes(8, 1, 300_000))
    assert m.literal_bytes < 4 * 2 * 4096
    ops, m = delta(old, old[:-7], 4096)
    assert m.literal_bytes < 4096


def test_constant_file_many_identical_blocks_small_block() -> None:
    old = b"\x07" * 300_000
    new = old[:1000] + b"\xff" + old[1000:] + b"\x07" * 100
    ops, m = delta(old, new, 16)
    assert m.literal_bytes < 200


def test_four_letter_text_with_edits() -> None:
    old = acgt(MiB, 3)
    new = old[:1000] + b"GATTACA" + old[1000:400_000] + old[400_100:800_000] + acgt(3000, 4) + old[800_000:]
    ops, m = delta(old, new, 700, random_sizes(5, 1, 100_000))
    assert m.literal_bytes < 3007 + 4 * 700


def test_empty_and_tiny() -> None:
    for old, new in [
        (b"", b""),
        (b"", b"abc"),
        (b"abc", b""),
        (b"a", b"a"),
        (b"a", b"b"),
        (b"", b"x" * 3000),
        (OLD4[:10], OLD4[:10]),
        (OLD4[:10], b"zz" + OLD4[:10] + b"zz"),
    ]:
        for sizes in (None, random_sizes(1, 1, 3)):
            for block_len in (16, 4096):
                ops, m = delta(old, new, block_len, sizes)
                if not new:
                    assert ops == []
    ops, _ = delta(b"", b"x" * 3 * MiB, 16)
    assert [len(op[1]) for op in ops] == [MAX_LITERAL] * 3


def test_short_last_block() -> None:
    old = OLD4[:10_000]  # blocks 4096, 4096, 1808
    ops, _ = delta(old, old, 4096)
    assert ops == [(COPY, 0, 3)]
    ops, m = delta(old, old + b"more", 4096)
    assert ops == [(COPY, 0, 3), (LITERAL, b"more")]
    ops, m = delta(old, b"x" + old[:4000] + old[4096:], 4096)
    assert ops[-1] == (COPY, 1, 2) and m.literal_bytes == 4001
    ops, m = delta(old, old[8192:], 4096)  # only the short block survives
    assert ops == [(COPY, 2, 1)]
    ops, m = delta(old, b"abc" + old[8192:], 4096)
    assert ops == [(LITERAL, b"abc"), (COPY, 2, 1)]
    tiny = OLD4[:100]  # a single short block
    ops, m = delta(tiny, b"12" + tiny, 4096, random_sizes(2, 1, 7))
    assert ops == [(LITERAL, b"12"), (COPY, 0, 1)]


def test_exact_multiple_of_block_len() -> None:
    old = OLD4[: 64 * 700]
    ops, _ = delta(old, old, 700)
    assert ops == [(COPY, 0, 64)]
    ops, m = delta(old, old[:700 * 10] + b"!" + old[700 * 10 :], 700)
    assert m.literal_bytes == 1


@pytest.mark.parametrize("seed", range(4))
def test_random_chunk_sizes(seed: int) -> None:
    old = OLD4[: 2 * MiB]
    rng = random.Random(seed)
    new = bytearray(old)
    for _ in range(20):
        p = rng.randrange(len(new))
        if rng.random() < 0.5:
            new[p:p] = rand_bytes(rng.randint(1, 3000), seed * 100 + p % 97)
        else:
            del new[p : p + rng.randint(1, 3000)]
    delta(old, bytes(new), rng.choice([16, 700, 4096]), random_sizes(seed))


def test_caller_buffer_reuse_is_safe() -> None:
    old = OLD4[: MiB]
    new = rand_bytes(100_000, 7) + old[: MiB // 2] + rand_bytes(5000, 8)
    sig = compute_signature(old, 4096)
    matcher = Matcher(sig)
    ops: list[Op] = []
    buf = bytearray(65536)
    for pos in range(0, len(new), len(buf)):
        piece = new[pos : pos + len(buf)]
        buf[: len(piece)] = piece
        ops.extend(matcher.feed(memoryview(buf)[: len(piece)]))
        buf[:] = b"\xee" * len(buf)  # clobber
    ops.extend(matcher.finish())
    assert b"".join(patch(ops, lambda o, n: old[o : o + n], 4096, len(old))) == new


def test_bounded_buffering() -> None:
    sig = compute_signature(OLD4, 4096)
    matcher = Matcher(sig)
    new = rand_bytes(8 * MiB, 9)
    worst = 0
    for pos in range(0, len(new), 100_000):
        list(matcher.feed(new[pos : pos + 100_000]))
        worst = max(worst, matcher.buffered_bytes)
    list(matcher.finish())
    assert worst <= 2 * MiB + 4 * 4096 + MAX_LITERAL


def test_feed_after_finish() -> None:
    matcher = Matcher(compute_signature(b"abc", 16))
    list(matcher.finish())
    with pytest.raises(RuntimeError):
        matcher.feed(b"x")
    with pytest.raises(RuntimeError):
        matcher.finish()


def test_block_len_large() -> None:
    old = OLD4[: 3 * MiB]
    new = old[:200_000] + b"abc" + old[200_000:]
    ops, m = delta(old, new, 128 * 1024, random_sizes(9, 1000, MiB))
    assert m.literal_bytes < 2 * 128 * 1024


def test_weak_collisions_everywhere_stay_cheap() -> None:
    """A block whose weak hash equals that of a run of 0x01 bytes (Thue-Morse construction)."""
    import time

    L = 4096
    thue_morse = (np.bitwise_count(np.arange(L)) & 1).astype(np.uint8)
    block = (2 * thue_morse).tobytes()  # bytes 0/2: same weak hash as b"\x01" * L
    sig = compute_signature(block, L)
    assert int(sig.weak[0]) == int(compute_signature(b"\x01" * L, L).weak[0])
    new = b"\x01" * (4 * MiB) + block
    start = time.perf_counter()
    ops, m = delta(block, new, L)
    assert time.perf_counter() - start < 10
    assert m.literal_bytes <= 4 * MiB + L
