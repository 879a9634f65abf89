"""Known vectors and cross-consistency of the polynomial rolling weak hash."""

from __future__ import annotations

import numpy as np
import pytest

from freezer_rsyncv2.rsync.rollsum import (
    BASE,
    BASE_INV,
    LANES,
    SEED,
    RollingHasher,
    block_weak_hashes,
    rolling_hashes,
    seed_term,
    weak_hash,
)

M32 = 1 << 32


def horner(window: bytes) -> int:
    """Reference definition: h = SEED, then h = h * BASE + byte for each byte."""
    h = SEED
    for byte in window:
        h = (h * BASE + byte) % M32
    return h


def rand_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_constants() -> None:
    assert BASE % 2 == 1 and BASE % 8 == 5
    assert BASE * BASE_INV % M32 == 1
    assert seed_term(0) == SEED
    assert seed_term(3) == pow(BASE, 3, M32)


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        (b"", 1),  # SEED
        (b"\x00", 0x7FEB352D),  # BASE
        (b"\x01", 0x7FEB352E),  # BASE + 1
        (b"\x00\x00", 0x51A9A9E9),  # BASE**2 mod 2**32
        # BASE**2 + 97*BASE + 98 = 0x51A9A9E9 + 2015307277 + 98 (mod 2**32)
        (b"ab", 3385380952),
        (b"abc", 0xF436D7DB),
        (b"bcd", 0xC5CBB6F2),
        (b"\xff" * 4, 0xD3E98805),
    ],
)
def test_known_vectors(window: bytes, expected: int) -> None:
    assert weak_hash(window) == expected
    assert horner(window) == expected


def test_lengths_differ_for_zero_windows() -> None:
    assert len({weak_hash(bytes(n)) for n in range(64)}) == 64


def test_rolling_known_vector() -> None:
    assert rolling_hashes(b"abcd", 3).tolist() == [0xF436D7DB, 0xC5CBB6F2]


@pytest.mark.parametrize("n", [0, 1, 2, 5, 16, 17, 100, 333])
@pytest.mark.parametrize("window", [1, 2, 3, 15, 16, 17, 31, 33, 64, 100])
def test_rolling_matches_reference(n: int, window: int) -> None:
    data = rand_bytes(n, n * 131 + window)
    got = rolling_hashes(data, window)
    assert got.dtype == np.uint32
    assert got.tolist() == [horner(data[i : i + window]) for i in range(max(0, n - window + 1))]


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 160, 1000])
@pytest.mark.parametrize("block_len", [1, 3, 16, 17, 64, 700])
def test_block_hashes_match_reference(n: int, block_len: int) -> None:
    data = rand_bytes(n, n + 7 * block_len)
    got = block_weak_hashes(data, block_len)
    assert got.dtype == np.uint32
    assert got.tolist() == [horner(data[i : i + block_len]) for i in range(0, n, block_len)]
    assert got.tolist() == [weak_hash(data[i : i + block_len]) for i in range(0, n, block_len)]


@pytest.mark.parametrize("block_len", [16, 700, 4096, 4099])
def test_rolling_agrees_with_blocks_on_large_data(block_len: int) -> None:
    data = rand_bytes((3 << 20) + 12345, block_len)
    rolled = rolling_hashes(data, block_len)
    blocks = block_weak_hashes(data, block_len)
    full = len(data) // block_len
    assert np.array_equal(rolled[::block_len][:full], blocks[:full])
    # and a few arbitrary offsets against the one-window hash
    for i in (1, 777, 1 << 20, len(rolled) - 1):
        assert int(rolled[i]) == weak_hash(data[i : i + block_len])


def test_long_window_crosses_internal_chunks() -> None:
    data = rand_bytes((2 << 20) + 3, 5)
    assert weak_hash(data) == int(rolling_hashes(data, len(data))[0])
    assert weak_hash(data) == int(block_weak_hashes(data, len(data))[0])
    # Horner over the concatenation: H(a + b) = H(a) * BASE**len(b) + raw(b)
    a, b = data[:1000], data[1000:]
    assert weak_hash(data) == (weak_hash(a) * pow(BASE, len(b), M32) + weak_hash(b) - seed_term(len(b))) % M32


def test_block_len_above_chunk() -> None:
    data = rand_bytes((1 << 20) * 2 + 10, 9)
    L = (1 << 20) + 1
    assert block_weak_hashes(data, L).tolist() == [weak_hash(data[i : i + L]) for i in range(0, len(data), L)]


@pytest.mark.parametrize("window", [1, 5, 16, 33, 4096])
def test_rolling_hasher_lanes_layout(window: int) -> None:
    data = np.frombuffer(rand_bytes(5000 + window, window), dtype=np.uint8)
    hasher = RollingHasher(window, 6000)
    ref = rolling_hashes(data, window) - np.uint32(seed_term(window))
    for n in (window, window + 1, window + 40, len(data)):
        seg = data[:n]
        count = n - window + 1
        lanes = hasher.lanes(seg)
        assert lanes.shape[0] == LANES and lanes.flags.c_contiguous
        offsets = np.arange(count)
        assert np.array_equal(lanes[offsets % LANES, offsets // LANES], ref[:count])
        assert np.array_equal(hasher.raw(seg), ref[:count])


def test_rolling_hasher_rejects_bad_sizes() -> None:
    hasher = RollingHasher(16, 100)
    with pytest.raises(ValueError):
        hasher.lanes(np.zeros(15, dtype=np.uint8))
    with pytest.raises(ValueError):
        hasher.lanes(np.zeros(16 + 100, dtype=np.uint8))
    with pytest.raises(ValueError):
        RollingHasher(0, 10)


def test_input_types() -> None:
    data = rand_bytes(300, 3)
    ref = rolling_hashes(data, 20)
    for variant in (bytearray(data), memoryview(data), np.frombuffer(data, dtype=np.uint8)):
        assert np.array_equal(rolling_hashes(variant, 20), ref)
        assert weak_hash(variant) == weak_hash(data)
        assert np.array_equal(block_weak_hashes(variant, 20), block_weak_hashes(data, 20))
    with pytest.raises(TypeError):
        weak_hash(np.zeros(4, dtype=np.uint16))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        rolling_hashes(b"abc", 0)
    with pytest.raises(ValueError):
        block_weak_hashes(b"abc", 0)
    assert rolling_hashes(b"abc", 4).size == 0
    assert block_weak_hashes(b"", 16).size == 0


def test_weak_hash_spreads_high_bits() -> None:
    """The matcher's bitmap uses the top bits: single-byte changes must reach them."""
    base = bytearray(rand_bytes(64, 11))
    tops = set()
    for i in range(64):
        changed = bytearray(base)
        changed[i] ^= 1
        tops.add(weak_hash(bytes(changed)) >> 24)
    assert len(tops) > 40
