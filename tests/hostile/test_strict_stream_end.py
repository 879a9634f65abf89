"""What follows END, what follows the final frame, a stream without one.

Hostile storage, round 2, finding 4: docs/format.rst refuses all three, yet
a restore stopped reading at END, so the decoders' checks after it never
ran and such levels restored without a word.  Each is checked here through
the engine's restore (in storage chunks of many sizes, 1 byte included,
so that the stray bytes also arrive in a later chunk than the final
frame), through manifest reading, and through the decoders alone.
"""

from __future__ import annotations

import os

import pytest

from freezer_rsyncv2 import errors
from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2.stream import compression, frames, records
from tests.hostile import streamkit as sk

CONTENT = b"complete content"
CHUNKS = [1, 2, 7, 64, 4096, "final"]  # "final": a chunk ends at the final


def framed(plains: list, final: bool = True, codec: str = "none",
           kind: int = frames.KIND_DATA) -> bytes:
    """A stream with exactly these frame plaintexts; the last one final."""
    writer = frames.FrameWriter(kind, compression.by_name(codec))
    out = writer.header()
    for i, plain in enumerate(plains):
        out += writer.frame(plain, final=final and i == len(plains) - 1)
    return out


def _body(level: int = 0) -> bytes:
    recs = [records.begin({"level": level})]
    recs += [records.pack(r) for r in sk.file_records(b"x", CONTENT)]
    return b"".join(recs)


END = records.end({})

#: name -> (the stream, from ``fr(plains, final=True)`` that frames
#: plaintexts and a body of records without END; the error it must give)
DEFECTS = {
    "record after END": (
        lambda fr, b: fr([b + END + records.delete(b"x")]),
        errors.CorruptRecordError),
    "garbage after END": (
        lambda fr, b: fr([b + END + b"\x00\xc1"]),
        errors.CorruptRecordError),
    "second END": (
        lambda fr, b: fr([b + END + END]),
        errors.CorruptRecordError),
    "record in a frame after END's": (
        lambda fr, b: fr([b + END, records.delete(b"x"), b""]),
        errors.CorruptRecordError),
    "byte after the final frame": (
        lambda fr, b: fr([b + END]) + b"\x00",
        errors.CorruptRecordError),
    "frame after the final frame": (
        lambda fr, b: fr([b + END]) + fr([records.delete(b"x")])[15:],
        errors.CorruptRecordError),
    "stream after the final frame": (
        lambda fr, b: fr([b + END]) * 2,
        errors.CorruptRecordError),
    "no final frame": (
        lambda fr, b: fr([b + END], final=False),
        errors.TruncatedError),
    "no final frame, END in its own": (
        lambda fr, b: fr([b, END], final=False),
        errors.TruncatedError),
    "no final frame, empty frame after END": (
        lambda fr, b: fr([b + END, b""], final=False),
        errors.TruncatedError),
    "no final frame, no END": (
        lambda fr, b: fr([b], final=False),
        errors.TruncatedError),
}


def make(defect: str, body: bytes, codec: str = "none",
         kind: int = frames.KIND_DATA) -> tuple[bytes, int]:
    """The defective stream, and where a chunk should end so that what
    follows the final frame (if anything) arrives in a later chunk."""
    def fr(plains: list, final: bool = True) -> bytes:
        return framed(plains, final, codec, kind)
    data = DEFECTS[defect][0](fr, body)
    honest = fr([body + END])
    split = len(honest) if data.startswith(honest) else len(data)
    return data, split


def _assert_complete(root: str) -> None:
    """No temporary file; a file under its final name is complete."""
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            assert not name.startswith(".rsyncv2-tmp-"), name
    x = os.path.join(root, "x")
    if os.path.exists(x):
        with open(x, "rb") as f:
            assert f.read() in (CONTENT, b"old")


@pytest.mark.parametrize("codec", ["none", "gzip"])
@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_restore_refuses(arena, defect, chunk, codec):
    expected = DEFECTS[defect][1]
    data, split = make(defect, _body(), codec)
    if chunk == "final":
        chunk = split
    with pytest.raises(errors.Rsyncv2Error) as exc:
        sk.restore_stream(arena.root, data, chunk=chunk)
    assert type(exc.value) is expected, exc.value
    assert str(exc.value).startswith("level 0 of crafted: ")
    _assert_complete(arena.root)


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_restore_over_an_earlier_level_keeps_it_whole(arena, defect):
    sk.restore_stream(arena.root, sk.encode(sk.file_records(b"x", b"old")))
    expected = DEFECTS[defect][1]
    with pytest.raises(errors.Rsyncv2Error) as exc:
        sk.restore_stream(arena.root, make(defect, _body(level=1))[0],
                          level=1, chunk=5)
    assert type(exc.value) is expected
    _assert_complete(arena.root)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_the_honest_stream_restores(arena, chunk):
    """The control: the same level, well formed, in the same chunks, and
    with an empty final frame after END (a writer may end so)."""
    body = _body()
    for data in (framed([body + END]), framed([body, END]),
                 framed([body + END, b""])):
        size = len(data) if chunk == "final" else chunk
        sk.restore_stream(arena.root, data, chunk=size)
        with open(os.path.join(arena.root, "x"), "rb") as f:
            assert f.read() == CONTENT
        os.unlink(os.path.join(arena.root, "x"))


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_decoders_alone_refuse(defect, chunk):
    """As a restore consumes them: records until END, then stop."""
    expected = DEFECTS[defect][1]
    data, split = make(defect, _body())
    if chunk == "final":
        chunk = split
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    with pytest.raises(errors.Rsyncv2Error) as exc:
        for rec in records.decode(frames.decode_frames(chunks,
                                                       frames.KIND_DATA)):
            if rec[0] == records.END:
                break
    assert type(exc.value) is expected


def _manifest_body() -> bytes:
    return records.begin({"level": 0}) + records.tombstone(b"gone")


@pytest.mark.parametrize("read_chunk", [1, 3, 1 << 20])
@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_manifest_reading_refuses(tmp_path, monkeypatch, defect, read_chunk):
    monkeypatch.setattr(mf, "READ_CHUNK", read_chunk)
    expected = DEFECTS[defect][1]
    data, _split = make(defect, _manifest_body(), kind=frames.KIND_MANIFEST)
    path = tmp_path / "manifest"
    path.write_bytes(data)
    with pytest.raises(errors.Rsyncv2Error) as exc:
        list(mf.read(str(path)))
    assert type(exc.value) is expected
    with pytest.raises(errors.Rsyncv2Error) as exc:
        list(mf.overlay([str(path)]))
    assert type(exc.value) is expected


def test_the_honest_manifest_reads(tmp_path):
    path = tmp_path / "manifest"
    for plains in ([_manifest_body() + END], [_manifest_body(), END, b""]):
        path.write_bytes(framed(plains, kind=frames.KIND_MANIFEST))
        assert list(mf.read(str(path))) == [(records.TOMBSTONE, b"gone")]
