"""blake3-tree against a plain recursive reference written from its definition."""

from __future__ import annotations

import array
import functools
import random
from collections.abc import Callable

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freezer_rsyncv2 import treehash
from freezer_rsyncv2.treehash import LEAF, TreeHash, digest_of

TIB = 1 << 40


# -- reference: RFC 6962's recursion, nothing streamed, nothing shared with the module

def ref_leaf(chunk: bytes) -> bytes:
    return blake3.blake3(b"\x00" + chunk).digest()


def ref_node(left: bytes, right: bytes) -> bytes:
    return blake3.blake3(b"\x01" + left + right).digest()


@functools.lru_cache(maxsize=None)
def ref_zero(height: int) -> bytes:
    """The hash of 2**height full zero leaves, by its definition."""
    if height == 0:
        return ref_leaf(bytes(LEAF))
    return ref_node(ref_zero(height - 1), ref_zero(height - 1))


def ref_mth(lo: int, n: int, leaf: Callable[[int], bytes],
            all_zero: Callable[[int, int], bool] = lambda lo, n: False) -> bytes:
    """Merkle tree hash of leaves lo..lo+n-1; ``all_zero(lo, n)``: those are full zero leaves.

    The left subtree holds the largest power of two strictly below n.  A
    perfect all-zero subtree uses ref_zero (only what a huge hole needs).
    """
    if n & (n - 1) == 0 and all_zero(lo, n):
        return ref_zero(n.bit_length() - 1)
    if n == 1:
        return ref_leaf(leaf(lo))
    k = 1 << ((n - 1).bit_length() - 1)
    return ref_node(ref_mth(lo, k, leaf, all_zero), ref_mth(lo + k, n - k, leaf, all_zero))


def ref_final(size: int, root: bytes) -> bytes:
    return blake3.blake3(b"\x02" + size.to_bytes(8, "big") + root).digest()


def ref_digest(data: bytes) -> bytes:
    n = max(1, -(-len(data) // LEAF))
    return ref_final(len(data), ref_mth(0, n, lambda i: data[i * LEAF:(i + 1) * LEAF]))


def ref_sparse(head: bytes, zeros: int, tail: bytes) -> bytes:
    """The digest of ``head + bytes(zeros) + tail`` without building it."""
    size = len(head) + zeros + len(tail)
    zero_lo, zero_hi = len(head), len(head) + zeros

    def leaf(i: int) -> bytes:
        lo, hi = i * LEAF, min(size, (i + 1) * LEAF)
        out = bytearray(hi - lo)
        out[:max(0, len(head) - lo)] = head[lo:hi]
        if hi > zero_hi:
            start = max(lo, zero_hi)
            out[start - lo:] = tail[start - zero_hi:hi - zero_hi]
        return bytes(out)

    def all_zero(lo: int, n: int) -> bool:
        return zero_lo <= lo * LEAF and (lo + n) * LEAF <= zero_hi

    return ref_final(size, ref_mth(0, max(1, -(-size // LEAF)), leaf, all_zero))


def noise(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


SIZES = [0, 1, 2, 1023, 1024, 1025, LEAF - 1, LEAF, LEAF + 1, 2 * LEAF - 1, 2 * LEAF,
         2 * LEAF + 1, 3 * LEAF, 3 * LEAF + 5, 4 * LEAF, 4 * LEAF + 1, 5 * LEAF, 7 * LEAF - 3, 8 * LEAF + 9]


def test_the_reference_sparse_form_matches_the_plain_one() -> None:
    head, tail = noise(LEAF + 3, 1), noise(5, 2)
    assert ref_sparse(head, 5 * LEAF, tail) == ref_digest(head + bytes(5 * LEAF) + tail)
    assert ref_sparse(b"", 4 * LEAF, b"") == ref_digest(bytes(4 * LEAF))


@pytest.mark.parametrize("size", SIZES)
def test_one_update_matches_the_reference(size: int) -> None:
    data = noise(size, size)
    expected = ref_digest(data)
    assert digest_of(data) == expected
    assert digest_of(bytearray(data)) == digest_of(memoryview(data)) == expected
    hasher = TreeHash(parallel=True)
    hasher.update(data)
    assert hasher.size == size
    assert hasher.digest() == expected


@pytest.mark.parametrize("size", SIZES)
def test_zeros_equal_written_zeros(size: int) -> None:
    written, hole = TreeHash(), TreeHash()
    written.update(bytes(size))
    hole.zeros(size)
    assert hole.size == written.size == size
    assert hole.digest() == written.digest() == ref_digest(bytes(size))


def test_the_empty_file() -> None:
    expected = ref_final(0, ref_leaf(b""))
    assert digest_of(b"") == expected
    assert TreeHash().digest() == expected
    hasher = TreeHash()
    hasher.zeros(0)
    hasher.update(b"")
    assert hasher.digest() == expected
    assert len(expected) == TreeHash.digest_size == 32


def test_different_lengths_of_zeros_differ() -> None:
    seen = set()
    for size in [0, 1, 2, LEAF - 1, LEAF, LEAF + 1, 2 * LEAF, 3 * LEAF, 4 * LEAF, TIB, TIB + 1]:
        hasher = TreeHash()
        hasher.zeros(size)
        seen.add(hasher.digest())
    assert len(seen) == 11


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), cuts=st.lists(st.integers(0, 5 * LEAF + 7), max_size=12))
def test_random_split_points(seed: int, cuts: list[int]) -> None:
    data = noise(5 * LEAF + 7, seed)
    hasher = TreeHash()
    bounds = [0] + sorted(cuts) + [len(data)]
    view = memoryview(data)
    for lo, hi in zip(bounds, bounds[1:]):
        hasher.update(view[lo:hi] if lo % 2 else bytearray(data[lo:hi]))
    assert hasher.digest() == ref_digest(data)


LENGTHS = st.one_of(st.integers(0, 3 * LEAF + 1), st.sampled_from([1, LEAF - 1, LEAF, LEAF + 1, 2 * LEAF]))


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), LENGTHS, st.integers(0, 255)), max_size=6))
def test_mixes_of_data_and_zeros(ops: list[tuple[bool, int, int]]) -> None:
    hasher, content = TreeHash(), bytearray()
    for is_hole, length, seed in ops:
        if is_hole:
            hasher.zeros(length)
            content += bytes(length)
        else:
            piece = noise(length, seed)
            hasher.update(piece)
            content += piece
    assert hasher.size == len(content)
    assert hasher.digest() == ref_digest(bytes(content))


def test_zero_leaves_written_through_update_hash_like_holes() -> None:
    data = noise(3, 1) + bytes(4 * LEAF) + noise(LEAF, 2)
    hasher = TreeHash()
    for pos in range(0, len(data), LEAF):
        hasher.update(data[pos:pos + LEAF])
    assert hasher.digest() == ref_digest(data) == ref_sparse(noise(3, 1), 4 * LEAF, noise(LEAF, 2))


def test_any_bytes_like_input() -> None:
    words = array.array("I", range(1000))
    hasher = TreeHash()
    hasher.update(words)
    assert hasher.size == 4000
    assert hasher.digest() == ref_digest(words.tobytes())


@pytest.mark.parametrize("head, tail", [(b"", b""), (b"abc", b"z"), (noise(LEAF + 1, 3), noise(LEAF - 2, 4))])
def test_a_15_tib_hole(head: bytes, tail: bytes) -> None:
    hasher = TreeHash()
    hasher.update(head)
    hasher.zeros(15 * TIB)
    hasher.update(tail)
    assert hasher.size == len(head) + 15 * TIB + len(tail)
    assert hasher.digest() == ref_sparse(head, 15 * TIB, tail)


def test_zero_subtrees_are_the_constants() -> None:
    for height in range(30):
        assert treehash.zero_subtree(height) == ref_zero(height)


def test_no_input_after_the_digest() -> None:
    hasher = TreeHash()
    hasher.update(b"abc")
    hasher.digest()
    with pytest.raises(ValueError, match="already taken"):
        hasher.digest()
    with pytest.raises(ValueError, match="already taken"):
        hasher.update(b"x")
    with pytest.raises(ValueError, match="already taken"):
        hasher.zeros(1)


def test_negative_zeros_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        TreeHash().zeros(-1)


def test_the_name() -> None:
    assert TreeHash.name == "blake3-tree"


@pytest.mark.parametrize("size", [0, 1, LEAF - 1, LEAF, LEAF + 1, 3 * LEAF + 5,
                                  8 * LEAF, 9 * LEAF + 9])
def test_digest_from_kept_leaves(size):
    data = bytearray(size)
    for at in range(0, size, 3 * LEAF):       # data in every third leaf
        data[at:at + 10] = b"0123456789"[:size - at]
    hasher = TreeHash(keep_leaves=True)
    for at in range(0, size, LEAF):
        chunk = bytes(data[at:at + LEAF])
        if any(chunk):
            hasher.update(chunk)
        else:
            hasher.zeros(len(chunk))
    digest = hasher.digest()
    assert digest == digest_of(bytes(data))
    assert treehash.digest_from_leaves(size, hasher.leaves) == digest
    assert treehash.digest_from_leaves(size, {}) == digest_of(bytes(size))


def test_digest_from_leaves_of_a_huge_hole():
    hasher = TreeHash()
    hasher.zeros(15 << 40)
    assert treehash.digest_from_leaves(15 << 40, {}) == hasher.digest()
    with pytest.raises(OverflowError):
        treehash.digest_from_leaves(1 << 64, {})
