import os
import random
import struct
import zlib

import pytest
import xxhash

from freezer_rsyncv2 import errors
from freezer_rsyncv2.stream import compression, encoder, frames


def encode(plain_blocks, codec="none", kind=frames.KIND_DATA):
    enc = encoder.StreamEncoder(kind, compression.by_name(codec))
    out = b""
    for block in plain_blocks:
        out += b"".join(enc.write(block))
    out += b"".join(enc.close())
    return out


def decode(data, kind=frames.KIND_DATA, chunk=None):
    if chunk is None:
        chunks = [data]
    else:
        chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    return b"".join(frames.decode_frames(chunks, kind))


@pytest.mark.parametrize("codec", compression.NAMES)
def test_round_trip_any_chunking(codec):
    payload = [os.urandom(300000), bytes(2 << 20), b"tail"]
    data = encode(payload, codec)
    for chunk in (None, 1, 7, 4096, 1 << 20):
        if chunk == 1 and len(data) > 200000:
            continue
        assert decode(data, chunk=chunk) == b"".join(payload)


def test_empty_stream():
    data = encode([])
    assert decode(data) == b""


def test_truncation_anywhere_is_detected():
    data = encode([os.urandom(5000)], "gzip")
    for cut in range(0, len(data)):
        with pytest.raises(errors.FormatError):
            decode(data[:cut])


def test_every_byte_flip_is_detected():
    data = encode([b"hello world" * 50], "none")
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x40
        with pytest.raises(errors.Rsyncv2Error):
            decode(bytes(bad))


def test_trailing_garbage_is_rejected():
    data = encode([b"abc"])
    with pytest.raises(errors.CorruptRecordError):
        decode(data + b"x")


def test_bad_magic_version_and_kind():
    data = encode([b"abc"])
    with pytest.raises(errors.BadMagicError):
        decode(b"NOTMAGIC" + data[8:])
    future = data[:8] + struct.pack(">H", frames.VERSION + 1) + data[10:]
    with pytest.raises(errors.UnsupportedVersionError):
        decode(future)
    with pytest.raises(errors.CorruptRecordError):
        decode(data, kind=frames.KIND_MANIFEST)


def test_swapped_frames_are_detected():
    enc = encoder.StreamEncoder(frames.KIND_DATA, compression.by_name("none"))
    pieces = list(enc.write(os.urandom(frames.FRAME_PLAIN * 2)))
    pieces += list(enc.close())
    header, f1, f2, last = pieces
    with pytest.raises(errors.IntegrityError):
        decode(header + f2 + f1 + last)
    with pytest.raises(errors.IntegrityError):
        decode(header + f1 + last)


def test_oversized_frame_declaration_is_refused():
    data = encode([b"abc"])
    header_len = 8 + 2 + 3 + 2
    bad = data[:header_len] + struct.pack(">BII", 1, 1 << 31, 3) + b"x" * 10
    with pytest.raises(errors.CorruptRecordError):
        decode(bad)


def test_segments_regroup_exactly():
    rng = random.Random(1)
    pieces = [os.urandom(rng.randrange(0, 9000)) for _ in range(50)]
    segs = list(encoder.segments(pieces, 4096))
    assert b"".join(bytes(s) for s in segs) == b"".join(pieces)
    assert all(len(s) == 4096 for s in segs[:-1])
    assert 0 < len(segs[-1]) <= 4096
    with pytest.raises(ValueError):
        list(encoder.segments([b"x"], 0))
    data = os.urandom(frames.FRAME_PLAIN)
    enc = encoder.StreamEncoder(frames.KIND_DATA, compression.by_name("none"))
    out = list(enc.write_many([data]))
    assert any(piece is data for piece in out)


def test_segments_of_views_split_exactly_without_copies():
    big = os.urandom(10000)
    pieces = [memoryview(big)[:3000], b"", memoryview(big)[3000:], b"z" * 5000]
    segs = list(encoder.segments(pieces, 4096))
    assert b"".join(bytes(s) for s in segs) == big + b"z" * 5000
    assert [len(s) for s in segs] == [4096] * 3 + [15000 - 3 * 4096]
    assert [sum(len(p) for p in s.pieces) for s in segs] == \
        [len(s) for s in segs]
    # every piece is the caller's object or a view of it
    for seg in segs:
        for piece in seg.pieces:
            assert piece is pieces[3] or piece.obj in (big, pieces[3])


def test_decoded_plaintext_is_the_same_for_every_chunking():
    payload = [os.urandom(frames.FRAME_PLAIN + 11), b"abc", os.urandom(70000)]
    data = encode(payload)
    expected = b"".join(payload)
    for chunk in (1, 13, 4096, frames.FRAME_PLAIN - 1, frames.FRAME_PLAIN + 13,
                  None):
        assert decode(data, chunk=chunk) == expected


@pytest.mark.parametrize("codec", ["gzip", "zstd", "bzip2"])
def test_threaded_compression_gives_the_serial_frames(codec):
    data = os.urandom(frames.FRAME_PLAIN * 5 // 2) + bytes(frames.FRAME_PLAIN * 4)
    writer = frames.FrameWriter(frames.KIND_DATA, compression.by_name(codec))
    n, step = len(data), frames.FRAME_PLAIN
    serial = writer.header() + b"".join(
        writer.frame(data[i:i + step], final=i + step >= n) for i in range(0, n, step))
    enc = encoder.StreamEncoder(frames.KIND_DATA, compression.by_name(codec))
    assert b"".join(enc.write(data)) + b"".join(enc.close()) == serial
    assert decode(serial, chunk=100000) == data


def test_null_cipher_checksum_by_version():
    aad, data = b"header+index", b"payload"
    v1, v2 = frames.NullCipher(1), frames.NullCipher(2)
    assert (v1.overhead, v2.overhead) == (4, 8)
    assert v1.seal(0, aad, data) == data + struct.pack(
        ">I", zlib.crc32(data, zlib.crc32(aad)))
    assert v2.seal(0, aad, data) == data + struct.pack(
        ">Q", xxhash.xxh3_64_intdigest(aad + data))
    for cipher in (v1, v2):
        sealed = cipher.seal(0, aad, data)
        assert cipher.open(0, aad, sealed) == data
        with pytest.raises(errors.IntegrityError):
            cipher.open(0, aad + b"x", sealed)
    assert frames.NullCipher().overhead == 8    # new streams: version 2


# -- the end of a stream (hostile storage, round 2, finding 4) ---------------

def _chunked(data, size, split_at=None):
    """``data`` in chunks of ``size``; with ``split_at``, a chunk (and an
    empty one) always ends there, so what follows arrives later."""
    if split_at is not None:
        return _chunked(data[:split_at], size) + [b""] + \
            _chunked(data[split_at:], size)
    if size is None:
        return [data]
    return [data[i:i + size] for i in range(0, len(data), size)]


def _two_frames(final: bool = True) -> bytes:
    writer = frames.FrameWriter(frames.KIND_DATA, compression.by_name("none"))
    return writer.header() + writer.frame(b"first") + \
        writer.frame(b"last", final=final)


@pytest.mark.parametrize("size", [1, 2, 7, 64, None])
@pytest.mark.parametrize("tail", [b"\x00", b"x" * 5000, "frame"])
def test_bytes_after_the_final_frame_in_any_chunk(size, tail):
    data = _two_frames()
    if tail == "frame":     # a whole valid-looking frame after the final
        tail = data[15:]
    for split in (None, len(data)):
        chunks = _chunked(data + tail, size, split)
        got = []
        with pytest.raises(errors.CorruptRecordError,
                           match="after the final frame") as exc:
            for plain in frames.decode_frames(chunks, frames.KIND_DATA):
                got.append(bytes(plain))
        assert type(exc.value) is errors.CorruptRecordError
        # refused before the final frame's plaintext is handed on: a
        # consumer that stops at its END record still gets the error
        assert got == [b"first"]


@pytest.mark.parametrize("size", [1, 3, 64, None])
def test_stream_without_a_final_frame_is_truncated(size):
    data = _two_frames(final=False)
    with pytest.raises(errors.TruncatedError, match="without its final") \
            as exc:
        list(frames.decode_frames(_chunked(data, size), frames.KIND_DATA))
    assert type(exc.value) is errors.TruncatedError


@pytest.mark.parametrize("size", [1, 9, None])
def test_empty_chunks_after_the_final_frame_are_fine(size):
    data = _two_frames()
    chunks = _chunked(data, size) + [b"", b""]
    assert [bytes(p) for p in frames.decode_frames(
        chunks, frames.KIND_DATA)] == [b"first", b"last"]
