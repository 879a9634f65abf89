"""Property: records come out the same whatever the frame and chunk boundaries."""

from __future__ import annotations

import io

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freezer_rsyncv2.stream import compression, encoder, frames, records

SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

body_records = st.lists(st.one_of(
    st.binary(min_size=1, max_size=70000).map(lambda d: ("lit", d)),
    st.tuples(st.integers(0, 1000), st.integers(1, 50)).map(
        lambda t: ("copy", t)),
    st.integers(1, 1 << 20).map(lambda n: ("hole", n)),
), max_size=25)


def pieces_of(recs: list) -> list:
    """As the backup hands them over: a LITERAL is its head, then its data."""
    out = [records.begin({"level": 0})]
    for kind, value in recs:
        if kind == "lit":
            out += [records.literal_head(len(value)), value]
        elif kind == "copy":
            out.append(records.copy(*value))
        else:
            out.append(records.hole(value))
    return out + [records.end({})]


def plain(rec: tuple) -> list:
    return [rec[0]] + [bytes(v) if isinstance(v, memoryview) else v
                       for v in rec[1:]]


@SETTINGS
@given(recs=body_records, frame=st.sampled_from([64, 1000, 4096, 1 << 20]),
       chunk=st.integers(1, 200000))
def test_decoding_ignores_frame_and_chunk_boundaries(monkeypatch, recs, frame,
                                                     chunk):
    monkeypatch.setattr(frames, "FRAME_PLAIN", frame)
    enc = encoder.StreamEncoder(frames.KIND_DATA, compression.by_name("none"))
    stream = b"".join(bytes(p) for p in enc.write_many(pieces_of(recs))) + \
        b"".join(bytes(p) for p in enc.close_many())
    chunks = [stream[i:i + chunk] for i in range(0, len(stream), chunk)]
    got = [plain(r) for r in records.decode(
        frames.decode_frames(chunks, frames.KIND_DATA))]
    whole = b"".join(bytes(p) for p in pieces_of(recs))
    want = [plain(tuple(r)) for r in msgpack.Unpacker(
        io.BytesIO(whole), raw=False, strict_map_key=False)]
    assert got == want
