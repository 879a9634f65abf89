"""Stream header and frames: the byte container that every stored object uses.

Layout (all integers big-endian; docs/format.rst is the full spec)::

    header  = MAGIC(8) version(u16) kind(u8) compression(u8) cipher(u8)
              ext_len(u16) ext(ext_len)
    frame   = flags(u8) stored_len(u32) plain_len(u32) payload(stored_len)

``payload`` is the frame's compressed plaintext sealed by the stream's cipher:
the null cipher appends a checksum (XXH3-64; CRC-32 in version 1), an AEAD
cipher appends its tag.  Both bind
the frame's index, flags and lengths, and the whole header, so a reordered,
dropped or spliced frame is detected.  The last frame carries FLAG_FINAL; a
stream that ends without it is truncated.
"""

from __future__ import annotations

import array
import bisect
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import xxhash

from freezer_rsyncv2 import errors
from freezer_rsyncv2.stream import compression

MAGIC = b"FRZRSV2\x00"
VERSION = 4
#: 1: file digests SHA-256, frame checksum CRC-32; 2: the digest is named
#: in BEGIN (BLAKE3), frame checksum XXH3-64; 3: signatures in SIGBLOCKS
#: records (any size, zero blocks left out, deltas over the level below),
#: HOLE records in deltas, the blake3-tree file digest; 4: compact
#: manifests (shared path prefixes, metadata entries as changes) and a
#: per-file index into the data stream (FRAMES records, ``o`` offsets)
READ_VERSIONS = (1, 2, 3, 4)
KIND_DATA = 1
KIND_MANIFEST = 2
KIND_NAMES = {KIND_DATA: "data stream", KIND_MANIFEST: "manifest"}

FLAG_FINAL = 0x01
_KNOWN_FLAGS = FLAG_FINAL

FRAME_PLAIN = 1 << 20          # plaintext bytes a writer puts in one frame
MAX_PLAIN = 4 << 20            # largest plaintext a reader accepts per frame
# A writer ends a frame after the piece that reaches FRAME_PLAIN, so that a
# record's data (at most FRAME_PLAIN bytes) stays in one frame and a reader
# takes it without a copy; it cuts only a bigger piece, or one that would
# take the frame past 2 x FRAME_PLAIN.
MAX_STORED = MAX_PLAIN + (1 << 16)
MAX_EXT = 4096
_HEAD = struct.Struct(">8sHBBBH")
_FRAME = struct.Struct(">BII")
_AAD = struct.Struct(">QBII")
_CRC = struct.Struct(">I")
_XXH = struct.Struct(">Q")

Piece = compression.Piece


class _Crc32:
    """Version 1's frame checksum."""

    size = _CRC.size

    def __init__(self, aad: bytes) -> None:
        self._crc = zlib.crc32(aad)

    def update(self, data: Piece) -> None:
        self._crc = zlib.crc32(data, self._crc)

    def digest(self) -> bytes:
        return _CRC.pack(self._crc)


class _Xxh3:
    """Version 2's frame checksum: XXH3-64, three times faster than CRC-32."""

    size = _XXH.size

    def __init__(self, aad: bytes) -> None:
        self._h = xxhash.xxh3_64(aad)

    def update(self, data: Piece) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return _XXH.pack(self._h.intdigest())


_CHECKSUMS: dict[int, type[_Crc32 | _Xxh3]] = {1: _Crc32, 2: _Xxh3, 3: _Xxh3, 4: _Xxh3}


class Cipher(Protocol):
    """What frames need of a stream's cipher (see ``NullCipher``)."""

    @property
    def id(self) -> int: ...

    @property
    def overhead(self) -> int: ...

    def params(self) -> bytes: ...

    def seal(self, index: int, aad: bytes, data: bytes) -> bytes: ...

    def open(self, index: int, aad: bytes, sealed: Piece) -> Piece: ...


#: ``cipher_factory(cipher_id, params)``: the cipher a stored stream names.
CipherFactory = Callable[[int, bytes], Cipher]


class NullCipher:
    """No secrecy; a checksum over header, index and frame catches accidents.

    The cipher interface: ``id`` (stored in the header), ``params()`` (bytes
    stored in the header's ext field), ``overhead`` (bytes ``seal`` adds),
    ``seal(index, aad, data)`` and ``open(index, aad, sealed)``; ``open``
    raises IntegrityError (AuthenticationError for AEAD ciphers) when the
    frame or its associated data was changed.
    """

    id = 0
    name = "none"

    def __init__(self, version: int | None = None) -> None:
        self.checksum = _CHECKSUMS[VERSION if version is None else version]
        self.overhead = self.checksum.size

    def params(self) -> bytes:
        return b""

    def sum(self, aad: bytes, pieces: Iterable[Piece]) -> bytes:
        """The checksum of the associated data, then the pieces."""
        check = self.checksum(aad)
        for piece in pieces:
            check.update(piece)
        return check.digest()

    def seal(self, index: int, aad: bytes, data: bytes) -> bytes:
        return data + self.sum(aad, (data,))

    def open(self, index: int, aad: bytes, sealed: Piece) -> Piece:
        size = self.overhead
        if len(sealed) < size:
            raise errors.CorruptRecordError("frame shorter than its checksum")
        data = sealed[:-size]
        if self.sum(aad, (data,)) != bytes(sealed[-size:]):
            raise errors.IntegrityError("frame checksum mismatch")
        return data


def null_cipher_for(cipher_id: int, params: bytes) -> NullCipher:
    """Resolve a stored cipher id when no key is given."""
    if cipher_id == NullCipher.id:
        return NullCipher()
    raise errors.ConfigError(
        f"this backup is encrypted (cipher id {cipher_id}); give the pass file (--encrypt-pass-file)")


class FrameWriter:
    """Turns plaintext blocks into a header and sealed, compressed frames."""

    def __init__(self, kind: int, codec: compression.Codec, cipher: Cipher | None = None) -> None:
        self.codec = codec
        self.cipher: Cipher = cipher or NullCipher()
        ext = self.cipher.params()
        if len(ext) > MAX_EXT:
            raise ValueError("cipher parameters too long")
        self._header = _HEAD.pack(MAGIC, VERSION, kind, codec.id, self.cipher.id, len(ext)) + ext
        self._index = 0
        self._done = False
        #: (stored_len, plain_len) of every frame written, in order: the
        #: index a manifest keeps of its level's data (``FrameTable``).
        self.table = FrameTable(len(self._header))

    def header(self) -> bytes:
        return self._header

    def frame(self, plain: bytes, final: bool = False) -> bytes:
        if self._done:
            raise ValueError("stream already finished")
        if len(plain) > MAX_PLAIN:
            raise ValueError("frame plaintext too large")
        return self.seal(self.codec.compress(plain), len(plain), final)

    def seal(self, packed: bytes, plain_len: int, final: bool = False) -> bytes:
        """The next frame, from its already compressed plaintext."""
        return b"".join(self.seal_pieces(packed, plain_len, final))

    def seal_pieces(self, packed: bytes, plain_len: int, final: bool = False) -> list[Piece]:
        """``seal`` as [frame head, sealed payload]: not joined."""
        if self._done:
            raise ValueError("stream already finished")
        flags = FLAG_FINAL if final else 0
        stored_len = len(packed) + self.cipher.overhead
        aad = self._header + _AAD.pack(self._index, flags, stored_len, plain_len)
        sealed = self.cipher.seal(self._index, aad, packed)
        self._index += 1
        self._done = final
        self.table.add(stored_len, plain_len)
        return [_FRAME.pack(flags, stored_len, plain_len), sealed]

    def frame_pieces(self, pieces: list[Piece], size: int, final: bool = False) -> list[Piece]:
        """The frame of the concatenated ``pieces`` (``size`` bytes), as pieces.

        Same bytes as ``frame(b"".join(pieces))``.  Without compression and
        encryption nothing is copied: the pieces are passed on between the
        frame head and the checksum.
        """
        if type(self.codec) is not compression.NoCompression or type(self.cipher) is not NullCipher:
            if size > MAX_PLAIN:
                raise ValueError("frame plaintext too large")
            plain = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            return self.seal_pieces(self.codec.compress(plain), size, final)
        if self._done:
            raise ValueError("stream already finished")
        if size > MAX_PLAIN:
            raise ValueError("frame plaintext too large")
        flags = FLAG_FINAL if final else 0
        stored_len = size + self.cipher.overhead
        head = _FRAME.pack(flags, stored_len, size)
        check = self.cipher.sum(self._header + _AAD.pack(self._index, flags, stored_len, size), pieces)
        self._index += 1
        self._done = final
        self.table.add(stored_len, size)
        return [head, *pieces, check]


class FrameTable:
    """Where each frame of a stream lies: the index of a level's data stream.

    ``header_len`` bytes of header, then frame ``i`` with ``stored[i]``
    bytes of payload after its 9-byte head and ``plain[i]`` bytes of
    plaintext.  A manifest carries its level's table (FRAMES records), so
    the records at plaintext offset ``o`` are found by a ranged read of a
    few frames (``span``) instead of reading the stream from its start.
    """

    def __init__(self, header_len: int) -> None:
        self.header_len = header_len
        self.stored = array.array("I")
        self.plain = array.array("I")
        self._starts: tuple[array.array[int], array.array[int]] | None = None

    def add(self, stored_len: int, plain_len: int) -> None:
        self.stored.append(stored_len)
        self.plain.append(plain_len)
        self._starts = None

    def __len__(self) -> int:
        return len(self.stored)

    @property
    def plain_size(self) -> int:
        return sum(self.plain)

    def _offsets(self) -> tuple[array.array[int], array.array[int]]:
        if self._starts is None:
            at, plain_at = self.header_len, 0
            stored_starts, plain_starts = array.array("Q"), array.array("Q")
            for stored_len, plain_len in zip(self.stored, self.plain):
                stored_starts.append(at)
                plain_starts.append(plain_at)
                at += _FRAME.size + stored_len
                plain_at += plain_len
            stored_starts.append(at)
            plain_starts.append(plain_at)
            self._starts = stored_starts, plain_starts
        return self._starts

    def span(self, plain_start: int, plain_end: int) -> tuple[int, int, int, int]:
        """The frames holding plaintext ``[plain_start, plain_end)``:
        ``(first frame, its plaintext offset, stored offset, stored length)``."""
        stored_starts, plain_starts = self._offsets()
        total = plain_starts[-1]
        if not 0 <= plain_start < plain_end <= total:
            raise errors.CorruptRecordError(
                f"index names plaintext bytes {plain_start}..{plain_end} of a stream of {total}")
        first = bisect.bisect_right(plain_starts, plain_start) - 1
        last = bisect.bisect_left(plain_starts, plain_end)       # first frame past the range
        return first, plain_starts[first], stored_starts[first], stored_starts[last] - stored_starts[first]


class _Buffer:
    """A byte queue fed by arbitrary chunks, read by exact counts.

    Reads that fall inside one chunk are views of it (no copy), so chunks
    must not be changed once yielded; only reads across chunks are joined.
    """

    def __init__(self, chunks: Iterable[Piece]) -> None:
        self._chunks = iter(chunks)
        self._view = memoryview(b"")    # unread part of the current chunk
        self.consumed = 0

    def read(self, n: int) -> bytes | memoryview | None:
        """Exactly n bytes, or None when the input ended first."""
        view = self._view
        if len(view) >= n:
            self._view = view[n:]
            self.consumed += n
            return view[:n]
        parts: list[Piece] = []
        need = n
        while len(view) < need:
            # A copy of the tail, so this chunk is let go before the next is
            # asked for (the producer may read the one after meanwhile).
            parts.append(bytes(view))
            need -= len(view)
            self._view = view = memoryview(b"")
            try:
                view = memoryview(next(self._chunks)).cast("B")
            except StopIteration:
                self._view = memoryview(b"")
                return None
        parts.append(view[:need])
        self._view = view[need:]
        self.consumed += n
        return b"".join(parts)

    def at_end(self) -> bool:
        if len(self._view):
            return False
        for chunk in self._chunks:
            if len(chunk):
                self._view = memoryview(chunk).cast("B")
                return False
        return True


def read_header(buf: _Buffer, kind: int) -> tuple[bytes, int, int, int, bytes]:
    """Parse and check a header:
    (raw header, version, codec id, cipher id, params)."""
    head = buf.read(_HEAD.size)
    if head is None:
        raise errors.TruncatedError("stream ends inside its header")
    magic, version, got_kind, codec_id, cipher_id, ext_len = _HEAD.unpack(head)
    if magic != MAGIC:
        raise errors.BadMagicError(f"not a freezer_rsyncv2 stream (magic {magic!r})")
    if version not in READ_VERSIONS:
        raise errors.UnsupportedVersionError(
            f"stream format version {version} is not supported (this library reads versions "
            f"{', '.join(map(str, READ_VERSIONS))})")
    if got_kind != kind:
        raise errors.CorruptRecordError(f"expected a {KIND_NAMES.get(kind)}, found kind {got_kind}")
    if ext_len > MAX_EXT:
        raise errors.CorruptRecordError(f"header ext_len {ext_len} too large")
    ext = buf.read(ext_len)
    if ext is None:
        raise errors.TruncatedError("stream ends inside its header")
    return bytes(head) + bytes(ext), version, codec_id, cipher_id, bytes(ext)


def decode_frames(chunks: Iterable[Piece], kind: int, cipher_factory: CipherFactory = null_cipher_for,
                  info: dict[str, int] | None = None) -> Iterator[Piece]:
    """Yield the plaintext of each frame; strict about every length and flag.

    Plaintexts are bytes-like (views of the input when nothing had to be
    inflated or decrypted), valid as long as the input chunks are.

    ``cipher_factory(cipher_id, params)`` returns the cipher to open frames
    with; the default only knows the null cipher.  ``info``, if given, gets
    the header's ``version`` before the first plaintext is yielded.
    """
    buf = _Buffer(chunks)
    header, version, codec_id, cipher_id, params = read_header(buf, kind)
    if info is not None:
        info["version"] = version
    yield from _frames(buf, header, version, codec_id, cipher_factory(cipher_id, params), 0, partial=False)


def decode_frame_run(header: bytes, chunks: Iterable[Piece], first: int, kind: int,
                     cipher_factory: CipherFactory = null_cipher_for,
                     info: dict[str, int] | None = None) -> Iterator[Piece]:
    """The plaintexts of consecutive frames from the middle of a stream.

    ``header``: the stream's header (as ``FrameTable.header_len`` bytes at
    its start); ``chunks``: stored bytes that start with the head of frame
    ``first`` and end after a whole frame (a ranged read of the object,
    ``FrameTable.span``).  Every frame is checked as in ``decode_frames``
    (its index and the header are bound into its checksum or tag, so a
    frame read from another place fails); the run may end without the final
    frame.
    """
    head_buf = _Buffer([header])
    raw, version, codec_id, cipher_id, params = read_header(head_buf, kind)
    if not head_buf.at_end():
        raise errors.CorruptRecordError("bytes after the stream header where the header was expected to end")
    if info is not None:
        info["version"] = version
    yield from _frames(_Buffer(chunks), raw, version, codec_id, cipher_factory(cipher_id, params), first,
                       partial=True)


def _frames(buf: _Buffer, header: bytes, version: int, codec_id: int, cipher: Cipher, index: int,
            partial: bool) -> Iterator[Piece]:
    codec = compression.by_id(codec_id)
    if type(cipher) is NullCipher:
        cipher = NullCipher(version)    # the checksum of the version
    while True:
        where = buf.consumed
        if partial and buf.at_end():
            return          # a run of frames ends between two frames
        head = buf.read(_FRAME.size)
        if head is None:
            raise errors.TruncatedError(f"stream ends after {index} frames ({where} bytes) without its final frame")
        flags, stored_len, plain_len = _FRAME.unpack(head)
        head = None     # a view: the chunk may end here (see sealed, below)
        if flags & ~_KNOWN_FLAGS:
            raise errors.CorruptRecordError(f"frame {index} at byte {where} has unknown flags 0x{flags:02x}")
        if stored_len > MAX_STORED or plain_len > MAX_PLAIN:
            raise errors.CorruptRecordError(
                f"frame {index} at byte {where} declares {stored_len} stored / {plain_len} plain bytes, "
                "over the limits")
        sealed = buf.read(stored_len)
        if sealed is None:
            raise errors.TruncatedError(f"stream ends inside frame {index} (byte {where})")
        aad = header + _AAD.pack(index, flags, stored_len, plain_len)
        try:
            packed = cipher.open(index, aad, sealed)
        except errors.IntegrityError as err:
            raise type(err)(f"frame {index} at byte {where}: {err}") from err
        plain = codec.decompress(packed, plain_len)
        del sealed, packed          # no view of this chunk kept meanwhile
        if flags & FLAG_FINAL:
            # Checked before the last plaintext is handed on: a consumer
            # stops at the END record and never resumes this generator, so
            # a check after the yield would never run.  The next storage
            # chunk is asked for here; it may hold the stray bytes.
            if not buf.at_end():
                raise errors.CorruptRecordError(
                    f"unexpected bytes after the final frame (frame {index}, byte {buf.consumed})")
            yield plain
            return
        yield plain
        del plain
        index += 1
