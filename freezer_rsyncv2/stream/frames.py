"""Stream header and frames: the byte container that every stored object uses.

Layout (all integers big-endian; docs/format.rst is the full spec)::

    header  = MAGIC(8) version(u16) kind(u8) compression(u8) cipher(u8)
              ext_len(u16) ext(ext_len)
    frame   = flags(u8) stored_len(u32) plain_len(u32) payload(stored_len)

``payload`` is the frame's compressed plaintext sealed by the stream's cipher:
the null cipher appends a CRC-32, an AEAD cipher appends its tag.  Both bind
the frame's index, flags and lengths, and the whole header, so a reordered,
dropped or spliced frame is detected.  The last frame carries FLAG_FINAL; a
stream that ends without it is truncated.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator

from freezer_rsyncv2 import errors
from freezer_rsyncv2.stream import compression

MAGIC = b"FRZRSV2\x00"
VERSION = 1
KIND_DATA = 1
KIND_MANIFEST = 2
KIND_NAMES = {KIND_DATA: "data stream", KIND_MANIFEST: "manifest"}

FLAG_FINAL = 0x01
_KNOWN_FLAGS = FLAG_FINAL

FRAME_PLAIN = 1 << 20          # plaintext bytes a writer puts in one frame
MAX_PLAIN = 4 << 20            # largest plaintext a reader accepts per frame
MAX_STORED = MAX_PLAIN + (1 << 16)
MAX_EXT = 4096

_HEAD = struct.Struct(">8sHBBBH")
_FRAME = struct.Struct(">BII")
_AAD = struct.Struct(">QBII")
_CRC = struct.Struct(">I")


class NullCipher:
    """No secrecy; a CRC-32 over header, index and frame catches accidents.

    The cipher interface: ``id`` (stored in the header), ``params()`` (bytes
    stored in the header's ext field), ``overhead`` (bytes ``seal`` adds),
    ``seal(index, aad, data)`` and ``open(index, aad, sealed)``; ``open``
    raises IntegrityError (AuthenticationError for AEAD ciphers) when the
    frame or its associated data was changed.
    """

    id = 0
    name = "none"
    overhead = _CRC.size

    def params(self) -> bytes:
        return b""

    def seal(self, index: int, aad: bytes, data: bytes) -> bytes:
        return data + _CRC.pack(zlib.crc32(data, zlib.crc32(aad)))

    def open(self, index: int, aad: bytes, sealed: bytes) -> bytes:
        if len(sealed) < _CRC.size:
            raise errors.CorruptRecordError("frame shorter than its checksum")
        data = sealed[:-_CRC.size]
        (crc,) = _CRC.unpack(sealed[-_CRC.size:])
        if zlib.crc32(data, zlib.crc32(aad)) != crc:
            raise errors.IntegrityError("frame checksum mismatch")
        return data


def null_cipher_for(cipher_id: int, params: bytes) -> NullCipher:
    """Resolve a stored cipher id when no key is given."""
    if cipher_id == NullCipher.id:
        return NullCipher()
    raise errors.ConfigError(
        "this backup is encrypted (cipher id %d); give the pass file "
        "(--encrypt-pass-file)" % cipher_id)


class FrameWriter:
    """Turns plaintext blocks into a header and sealed, compressed frames."""

    def __init__(self, kind: int, codec: compression.Codec,
                 cipher=None) -> None:
        self.codec = codec
        self.cipher = cipher or NullCipher()
        ext = self.cipher.params()
        if len(ext) > MAX_EXT:
            raise ValueError("cipher parameters too long")
        self._header = _HEAD.pack(MAGIC, VERSION, kind, codec.id,
                                  self.cipher.id, len(ext)) + ext
        self._index = 0
        self._done = False

    def header(self) -> bytes:
        return self._header

    def frame(self, plain: bytes, final: bool = False) -> bytes:
        if self._done:
            raise ValueError("stream already finished")
        if len(plain) > MAX_PLAIN:
            raise ValueError("frame plaintext too large")
        flags = FLAG_FINAL if final else 0
        packed = self.codec.compress(plain)
        stored_len = len(packed) + self.cipher.overhead
        aad = self._header + _AAD.pack(self._index, flags, stored_len,
                                       len(plain))
        sealed = self.cipher.seal(self._index, aad, packed)
        self._index += 1
        self._done = final
        return _FRAME.pack(flags, stored_len, len(plain)) + sealed


class StreamEncoder:
    """Collects record bytes and yields the stream's bytes, frame by frame."""

    def __init__(self, kind: int, codec: compression.Codec,
                 cipher=None) -> None:
        self._writer = FrameWriter(kind, codec, cipher)
        self._buf = bytearray()
        self._started = False

    def write(self, data: bytes) -> Iterator[bytes]:
        if not self._started:
            self._started = True
            yield self._writer.header()
        self._buf += data
        while len(self._buf) >= FRAME_PLAIN:
            plain = bytes(self._buf[:FRAME_PLAIN])
            del self._buf[:FRAME_PLAIN]
            yield self._writer.frame(plain)

    def close(self) -> Iterator[bytes]:
        if not self._started:
            self._started = True
            yield self._writer.header()
        plain = bytes(self._buf)
        self._buf.clear()
        yield self._writer.frame(plain, final=True)


class _Buffer:
    """A byte queue fed by arbitrary chunks, read by exact counts."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buf = bytearray()
        self._pos = 0
        self.consumed = 0

    def read(self, n: int) -> bytes | None:
        """Exactly n bytes, or None when the input ended first."""
        while len(self._buf) - self._pos < n:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                return None
            if self._pos:
                del self._buf[:self._pos]
                self._pos = 0
            self._buf += chunk
        out = bytes(self._buf[self._pos:self._pos + n])
        self._pos += n
        self.consumed += n
        return out

    def at_end(self) -> bool:
        if len(self._buf) > self._pos:
            return False
        for chunk in self._chunks:
            if chunk:
                self._buf = bytearray(chunk)
                self._pos = 0
                return False
        return True


def read_header(buf: _Buffer, kind: int) -> tuple[bytes, int, int, bytes]:
    """Parse and check a header: (raw header, codec id, cipher id, params)."""
    head = buf.read(_HEAD.size)
    if head is None:
        raise errors.TruncatedError("stream ends inside its header")
    magic, version, got_kind, codec_id, cipher_id, ext_len = _HEAD.unpack(head)
    if magic != MAGIC:
        raise errors.BadMagicError(
            "not a freezer_rsyncv2 stream (magic %r)" % magic)
    if version != VERSION:
        raise errors.UnsupportedVersionError(
            "stream format version %d is not supported (this library reads "
            "version %d)" % (version, VERSION))
    if got_kind != kind:
        raise errors.CorruptRecordError(
            "expected a %s, found kind %d" % (KIND_NAMES.get(kind), got_kind))
    if ext_len > MAX_EXT:
        raise errors.CorruptRecordError("header ext_len %d too large" % ext_len)
    ext = buf.read(ext_len)
    if ext is None:
        raise errors.TruncatedError("stream ends inside its header")
    return head + ext, codec_id, cipher_id, ext


def decode_frames(chunks: Iterable[bytes], kind: int,
                  cipher_factory=null_cipher_for) -> Iterator[bytes]:
    """Yield the plaintext of each frame; strict about every length and flag.

    ``cipher_factory(cipher_id, params)`` returns the cipher to open frames
    with; the default only knows the null cipher.
    """
    buf = _Buffer(chunks)
    header, codec_id, cipher_id, params = read_header(buf, kind)
    codec = compression.by_id(codec_id)
    cipher = cipher_factory(cipher_id, params)
    index = 0
    while True:
        where = buf.consumed
        head = buf.read(_FRAME.size)
        if head is None:
            raise errors.TruncatedError(
                "stream ends after %d frames (%d bytes) without its final "
                "frame" % (index, where))
        flags, stored_len, plain_len = _FRAME.unpack(head)
        if flags & ~_KNOWN_FLAGS:
            raise errors.CorruptRecordError(
                "frame %d at byte %d has unknown flags 0x%02x"
                % (index, where, flags))
        if stored_len > MAX_STORED or plain_len > MAX_PLAIN:
            raise errors.CorruptRecordError(
                "frame %d at byte %d declares %d stored / %d plain bytes, "
                "over the limits" % (index, where, stored_len, plain_len))
        sealed = buf.read(stored_len)
        if sealed is None:
            raise errors.TruncatedError(
                "stream ends inside frame %d (byte %d)" % (index, where))
        aad = header + _AAD.pack(index, flags, stored_len, plain_len)
        try:
            packed = cipher.open(index, aad, sealed)
        except errors.IntegrityError as err:
            raise type(err)("frame %d at byte %d: %s"
                            % (index, where, err)) from err
        yield codec.decompress(packed, plain_len)
        index += 1
        if flags & FLAG_FINAL:
            break
    if not buf.at_end():
        raise errors.CorruptRecordError(
            "unexpected bytes after the final frame (byte %d)" % buf.consumed)


def segments(pieces: Iterable[bytes], max_size: int) -> Iterator[bytes]:
    """Regroup byte pieces into segments of exactly max_size (last shorter)."""
    if max_size <= 0:
        raise errors.ConfigError("max_segment_size must be positive")
    buf = bytearray()
    for piece in pieces:
        buf += piece
        while len(buf) >= max_size:
            yield bytes(buf[:max_size])
            del buf[:max_size]
    if buf:
        yield bytes(buf)
