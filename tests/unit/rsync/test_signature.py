"""Signature building, block sizing and (de)serialization with validation."""

from __future__ import annotations

import random

import numpy as np
import pytest
import xxhash

from freezer_rsyncv2.errors import CorruptRecordError
from freezer_rsyncv2.rsync.rollsum import weak_hash
from freezer_rsyncv2.rsync.signature import (
    MAX_AUTO_BLOCK,
    MIN_AUTO_BLOCK,
    STRONG_LEN,
    Signature,
    SignatureBuilder,
    block_size_for,
    compute_signature,
    strong_hash,
)


def rand_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def reference(data: bytes, block_len: int) -> Signature:
    blocks = [data[i : i + block_len] for i in range(0, len(data), block_len)]
    weak = np.array([weak_hash(b) for b in blocks], dtype=np.uint32)
    return Signature(block_len, len(data), weak, b"".join(xxhash.xxh3_128_digest(b) for b in blocks))


def test_strong_hash() -> None:
    assert STRONG_LEN == 16
    assert strong_hash(b"abc") == xxhash.xxh3_128_digest(b"abc")
    assert len(strong_hash(b"")) == 16
    assert strong_hash(memoryview(b"xabcx")[1:4]) == strong_hash(b"abc")


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, MIN_AUTO_BLOCK),
        (1, MIN_AUTO_BLOCK),
        (700 * 700, MIN_AUTO_BLOCK),
        (1 << 20, 1024),
        (10**6, 1000),
        (1001 * 1001, 1000),  # sqrt 1001 rounds down to a multiple of 8
        (1 << 30, 32768),
        (4095 * 4095, 4088),
        (4096 * 4096, 4096),
        (8 << 30, 65536),  # sqrt 92681: a power of two from 4096 on
        (512 << 20, 16384),
        (MAX_AUTO_BLOCK * MAX_AUTO_BLOCK, MAX_AUTO_BLOCK),
        (1 << 40, MAX_AUTO_BLOCK),
    ],
)
def test_block_size_rule(size: int, expected: int) -> None:
    got = block_size_for(size)
    assert got == expected
    assert got % 8 == 4 or got % 8 == 0  # MIN_AUTO_BLOCK is 700
    assert MIN_AUTO_BLOCK <= got <= MAX_AUTO_BLOCK


def test_block_size_fixed() -> None:
    assert block_size_for(10**9, fixed=16) == 16
    assert block_size_for(0, fixed=1 << 24) == 1 << 24
    for bad in (15, 0, -4, (1 << 24) + 1, True, 4096.0):
        with pytest.raises(ValueError):
            block_size_for(100, fixed=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        block_size_for(-1)


@pytest.mark.parametrize("size", [0, 1, 699, 700, 701, 1400, 5000, 70000])
@pytest.mark.parametrize("block_len", [16, 700, 4096])
def test_builder_matches_reference(size: int, block_len: int) -> None:
    data = rand_bytes(size, size + block_len)
    sig = compute_signature(data, block_len)
    assert sig == reference(data, block_len)
    assert sig.block_count == -(-size // block_len)
    assert sig.file_size == size


def test_builder_chunking_invariance() -> None:
    data = rand_bytes(300_000, 1)
    whole = compute_signature(data, 700)
    rng = random.Random(5)
    for _ in range(20):
        builder = SignatureBuilder(700)
        pos = 0
        while pos < len(data):
            step = rng.choice([0, 1, 2, 699, 700, 701, rng.randint(1, 50_000)])
            builder.update(data[pos : pos + step])
            pos += step
        assert builder.finish() == whole


def test_builder_accepts_buffers_and_copies_partial() -> None:
    data = rand_bytes(10_000, 2)
    builder = SignatureBuilder(4096)
    buf = bytearray(data[:5000])
    builder.update(buf)
    buf[:] = b"\x00" * 5000  # caller reuses its buffer
    builder.update(np.frombuffer(data[5000:], dtype=np.uint8))
    assert builder.finish() == compute_signature(data, 4096)


def test_builder_misuse() -> None:
    with pytest.raises(ValueError):
        SignatureBuilder(0)
    builder = SignatureBuilder(16)
    builder.finish()
    with pytest.raises(RuntimeError):
        builder.update(b"x")
    with pytest.raises(RuntimeError):
        builder.finish()


def test_block_lengths() -> None:
    sig = compute_signature(rand_bytes(5000), 2048)
    assert sig.block_count == 3
    assert [sig.block_length(i) for i in range(3)] == [2048, 2048, 904]
    assert sig.strong[2 * STRONG_LEN :] == strong_hash(rand_bytes(5000)[4096:])
    with pytest.raises(IndexError):
        sig.block_length(3)
    exact = compute_signature(rand_bytes(4096), 2048)
    assert [exact.block_length(i) for i in range(2)] == [2048, 2048]
    empty = compute_signature(b"", 2048)
    assert empty.block_count == 0 and empty.strong == b"" and empty.weak.size == 0


def test_serialization_round_trip() -> None:
    sig = compute_signature(rand_bytes(10_000, 3), 700)
    weak_bytes, strong_bytes = sig.to_bytes()
    assert weak_bytes == sig.weak_bytes()
    assert np.array_equal(np.frombuffer(weak_bytes, dtype="<u4"), sig.weak)
    assert len(strong_bytes) == sig.block_count * STRONG_LEN
    again = Signature.from_bytes(700, 10_000, weak_bytes, strong_bytes)
    assert again == sig
    assert again.weak.dtype == np.uint32
    assert Signature.from_bytes(700, 10_000, memoryview(weak_bytes), bytearray(strong_bytes)) == sig
    empty = Signature.from_bytes(700, 0, b"", b"")
    assert empty.block_count == 0


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((0, 10, b"", b""), "block_len"),
        ((-5, 10, b"", b""), "block_len"),
        ((True, 10, b"", b""), "block_len"),
        ((16, -1, b"", b""), "file_size"),
        ((16, 1.5, b"", b""), "file_size"),
        ((16, 17, b"\0" * 4, b"\0" * 32), "weak"),
        ((16, 17, b"\0" * 9, b"\0" * 32), "weak"),
        ((16, 17, b"\0" * 8, b"\0" * 31), "strong"),
        ((16, 17, b"\0" * 8, b"\0" * 48), "strong"),
        ((16, 0, b"\0" * 4, b""), "weak"),
        ((16, 16, b"\0" * 4, "x" * 16), "strong"),
        ((16, 16, 12, b"\0" * 16), "weak"),
    ],
)
def test_from_bytes_validates(args: tuple, field: str) -> None:
    with pytest.raises(CorruptRecordError, match=field):
        Signature.from_bytes(*args)


def test_constructor_validates() -> None:
    with pytest.raises(CorruptRecordError, match="weak"):
        Signature(16, 32, np.zeros(1, dtype=np.uint32), b"\0" * 32)
    with pytest.raises(CorruptRecordError, match="strong"):
        Signature(16, 32, np.zeros(2, dtype=np.uint32), b"\0" * 16)
    sig = Signature(16, 32, np.zeros(2, dtype=np.int64), b"\0" * 32)
    assert sig.weak.dtype == np.uint32


def test_equality() -> None:
    a = compute_signature(rand_bytes(1000), 100)
    b = compute_signature(rand_bytes(1000), 100)
    c = compute_signature(rand_bytes(1000, 9), 100)
    assert a == b and a != c and a != "x"
