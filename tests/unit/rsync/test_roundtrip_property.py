"""Property: for any old data, edits, block size and feed chunking, patch(delta) rebuilds the new data."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freezer_rsyncv2.rsync.matcher import COPY, LITERAL, MAX_LITERAL, Matcher
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


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.one_of(st.integers(0, 300), st.integers(0, 200_000)),
    alphabet=st.sampled_from(sorted(ALPHABETS)),
    edits=st.lists(edit, max_size=8),
    block_len=st.one_of(st.sampled_from([16, 17, 64, 700, 4096]), st.integers(16, 3000)),
    chunking=st.lists(st.integers(1, 70_000), min_size=1, max_size=12),
    sig_chunking=st.lists(st.integers(1, 70_000), min_size=1, max_size=5),
)
def test_patch_of_delta_rebuilds_new(
    seed: int,
    size: int,
    alphabet: str,
    edits: list[tuple[str, float, int, int]],
    block_len: int,
    chunking: list[int],
    sig_chunking: list[int],
) -> None:
    old = make_data(seed, size, alphabet)
    new = apply_edits(old, edits, alphabet)

    builder = SignatureBuilder(block_len)
    pos = i = 0
    while pos < len(old):
        step = sig_chunking[i % len(sig_chunking)]
        builder.update(old[pos : pos + step])
        pos += step
        i += 1
    sig = builder.finish()

    matcher = Matcher(sig)
    ops = []
    pos = i = 0
    while pos < len(new):
        step = chunking[i % len(chunking)]
        ops.extend(matcher.feed(new[pos : pos + step]))
        pos += step
        i += 1
    ops.extend(matcher.finish())

    out = b"".join(patch(ops, lambda off, n: old[off : off + n], block_len, len(old), max_piece=5000))
    assert out == new
    assert matcher.literal_bytes + matcher.copied_bytes == len(new)
    for op in ops:
        assert op[0] in (COPY, LITERAL)
        if op[0] == LITERAL:
            assert 0 < len(op[1]) <= MAX_LITERAL
    if old == new and old:
        assert ops == [(COPY, 0, sig.block_count)]
