"""The one-go signature of a small file equals the general, block-batched one, byte for byte."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from freezer_rsyncv2.rsync import rollsum, sigdelta
from freezer_rsyncv2.rsync import signature as rsig


def _general(data: bytes, block_len: int, min_zero_run: int) -> rsig.Signature:
    """The builder's general path: a first chunk too big for the small path makes it take that path."""
    builder = rsig.SignatureBuilder(block_len, min_zero_run)
    builder.update(b"")         # an empty first chunk: no one-go signature for this builder
    builder.update(data)
    return builder.finish()


def _small(data: bytes, block_len: int, min_zero_run: int) -> rsig.Signature:
    builder = rsig.SignatureBuilder(block_len, min_zero_run)
    builder.update(data)
    return builder.finish()


def _same(a: rsig.Signature, b: rsig.Signature) -> None:
    assert (a.block_len, a.file_size, a.is_dense) == (b.block_len, b.file_size, b.is_dense)
    assert a.weak.dtype == b.weak.dtype == np.uint32
    assert a.weak.tobytes() == b.weak.tobytes()
    assert a.strong == b.strong
    assert np.array_equal(a.block_numbers(), b.block_numbers())
    assert list(sigdelta.runs(a, 3)) == list(sigdelta.runs(b, 3))
    assert list(sigdelta.runs(a)) == list(sigdelta.runs(b))


def _content(draw: st.DrawFn, size: int) -> bytes:
    kind = draw(st.sampled_from(["random", "text", "zeros", "holes"]))
    if kind == "random":
        return draw(st.binary(min_size=size, max_size=size))
    if kind == "text":
        return (b"def f(x):\n    return x + 1\n" * (size // 27 + 1))[:size]
    data = bytearray(draw(st.binary(min_size=size, max_size=size)) if kind == "holes" else bytes(size))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, max(size - 1, 0)))
        length = draw(st.integers(0, 3000))
        data[at : at + length] = bytes(len(data[at : at + length]))
    return bytes(data)


@st.composite
def _cases(draw: st.DrawFn) -> tuple[bytes, int, int]:
    size = draw(st.integers(0, 20 * 1024 + 7))
    block_len = draw(st.sampled_from([rsig.block_size_for(size), 16, 17, 700, 1024, 4096, 70000]))
    min_zero_run = draw(st.sampled_from([1, 2, 3, 12]))
    return _content(draw, size), block_len, min_zero_run


@settings(max_examples=400, deadline=None)
@given(_cases())
def test_small_path_equals_general(case: tuple[bytes, int, int]) -> None:
    data, block_len, min_zero_run = case
    _same(_small(data, block_len, min_zero_run), _general(data, block_len, min_zero_run))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=5000), st.integers(1, 3000))
def test_small_weak_hashes_equal_block_weak_hashes(data: bytes, block_len: int) -> None:
    assert rollsum.small_block_weak_hashes(data, block_len).tobytes() == \
        rollsum.block_weak_hashes(data, block_len).tobytes()


def test_every_size_to_twenty_kib() -> None:
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, 20 * 1024 + 1, dtype=np.uint8).tobytes()
    for size in range(0, 20 * 1024 + 1, 37):
        block_len = rsig.block_size_for(size)
        _same(_small(noise[:size], block_len, 3), _general(noise[:size], block_len, 3))


def test_later_chunks_and_zeros_take_the_general_path() -> None:
    data = bytes(range(256)) * 10
    one = rsig.SignatureBuilder(700, 2)
    one.update(data[:1000])
    one.zeros(1400)
    one.update(data[1000:])
    other = rsig.SignatureBuilder(700, 2)
    other.update(b"")
    other.update(data[:1000] + bytes(1400) + data[1000:])
    _same(one.finish(), other.finish())


def test_a_mutable_first_chunk_is_copied() -> None:
    chunk = bytearray(b"x" * 1500)
    builder = rsig.SignatureBuilder(700)
    builder.update(chunk)
    chunk[:] = bytes(1500)
    _same(builder.finish(), rsig.compute_signature(b"x" * 1500, 700))
