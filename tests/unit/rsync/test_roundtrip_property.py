"""Property: for any old data, edits, block size, feed chunking and holes, patch(delta) rebuilds the new data."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freezer_rsyncv2.rsync.matcher import COPY, HOLE, LITERAL, MAX_LITERAL, Matcher
from freezer_rsyncv2.rsync.patcher import patch
from freezer_rsyncv2.rsync.signature import SignatureBuilder

ALPHABETS = {
    "bytes": None,
    "acgt": np.frombuffer(b"ACGT", dtype=np.uint8),
    "zeros": np.array([0], dtype=np.uint8),
    "sparse": np.array([0] * 15 + [1], dtype=np.uint8),
}


def make_data(seed: int, size: int, alphabet: str) -> bytes:
    rng = np.random.default_rng(seed)
    letters = ALPHABETS[alphabet]
    if letters is None:
        return rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    return letters[rng.integers(0, len(letters), size)].tobytes()


edit = st.tuples(
    st.sampled_from(["insert", "delete", "overwrite", "dup"]),
    st.floats(0, 1),
    st.integers(1, 5000),
    st.integers(0, 2**32 - 1),
)


def apply_edits(old: bytes, edits: list[tuple[str, float, int, int]], alphabet: str) -> bytes:
    new = bytearray(old)
    for kind, where, length, seed in edits:
        pos = int(where * len(new))
        if kind == "insert":
            new[pos:pos] = make_data(seed, length, alphabet)
        elif kind == "delete":
            del new[pos : pos + length]
        elif kind == "overwrite":
            new[pos : pos + length] = make_data(seed, length, alphabet)[: len(new) - pos]
        else:  # duplicate a region elsewhere
            src = seed % (len(new) + 1)
            new[pos:pos] = new[src : src + length]
    return bytes(new)


def zero_runs(data: bytes, min_len: int) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of >= min_len zero bytes: what a reader would report as holes."""
    arr = np.frombuffer(data, dtype=np.uint8)
    edges = np.diff(np.concatenate(([0], (arr == 0).astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(a, b) for a, b in zip(starts.tolist(), ends.tolist()) if b - a >= min_len]


def pieces(data: bytes, chunking: list[int], holes: list[tuple[int, int]]) -> list[bytes | int]:
    """``data`` cut by ``chunking`` into bytes, with each hole given as its length (int) instead."""
    out: list[bytes | int] = []
    pos = i = 0
    for start, end in holes + [(len(data), len(data))]:
        while pos < start:
            step = min(chunking[i % len(chunking)], start - pos)
            out.append(data[pos : pos + step])
            pos += step
            i += 1
        if end > start:
            out.append(end - start)
            pos = end
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.one_of(st.integers(0, 300), st.integers(0, 200_000)),
    alphabet=st.sampled_from(sorted(ALPHABETS)),
    edits=st.lists(edit, max_size=8),
    block_len=st.one_of(st.sampled_from([16, 17, 64, 700, 4096]), st.integers(16, 3000)),
    chunking=st.lists(st.integers(1, 70_000), min_size=1, max_size=12),
    sig_chunking=st.lists(st.integers(1, 70_000), min_size=1, max_size=5),
    hole_min=st.one_of(st.none(), st.integers(1, 5000)),
)
def test_patch_of_delta_rebuilds_new(
    seed: int,
    size: int,
    alphabet: str,
    edits: list[tuple[str, float, int, int]],
    block_len: int,
    chunking: list[int],
    sig_chunking: list[int],
    hole_min: int | None,
) -> None:
    old = make_data(seed, size, alphabet)
    new = apply_edits(old, edits, alphabet)

    builder = SignatureBuilder(block_len)
    for piece in pieces(old, sig_chunking, zero_runs(old, hole_min) if hole_min else []):
        if isinstance(piece, int):
            builder.zeros(piece)
        else:
            builder.update(piece)
    sig = builder.finish()

    matcher = Matcher(sig)
    ops = []
    for piece in pieces(new, chunking, zero_runs(new, hole_min) if hole_min else []):
        ops.extend(matcher.zeros(piece) if isinstance(piece, int) else matcher.feed(piece))
    ops.extend(matcher.finish())

    parts = patch(ops, lambda off, n: old[off : off + n], block_len, len(old), max_piece=5000)
    out = b"".join(bytes(p) if isinstance(p, int) else p for p in parts)
    assert out == new
    holes = sum(op[1] for op in ops if op[0] == HOLE)
    assert matcher.literal_bytes + matcher.copied_bytes + holes == len(new)
    for op in ops:
        assert op[0] in (COPY, LITERAL, HOLE)
        if op[0] == LITERAL:
            assert 0 < len(op[1]) <= MAX_LITERAL
        elif op[0] == COPY:
            assert all(sig.slot(k) is not None for k in range(op[1], op[1] + op[2]))
        else:
            assert op[1] >= 1
    if old == new and old and sig.is_dense and not holes:
        assert ops == [(COPY, 0, sig.block_count)]
