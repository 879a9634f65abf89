"""Compression codecs, each a small class with a stored id, looked up by id on decode.

Every frame of a stream is compressed on its own (see ``frames.py``), so a
decoder knows the plaintext length before it inflates anything and can refuse
a decompression bomb: ``decompress`` never returns more than ``plain_len``
bytes and fails if the frame does not inflate to exactly that.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from typing import Protocol, Union

import zstandard

from freezer_rsyncv2 import errors

#: Bytes as the stream modules pass them on: views where nothing is copied.
Piece = Union[bytes, bytearray, memoryview]


class Codec:
    """A compressor: ``id`` is stored in stream headers, ``name`` is what users type."""

    id: int = -1
    name: str = ""

    def compress(self, data: Piece) -> bytes:
        raise NotImplementedError

    def decompress(self, data: Piece, plain_len: int) -> Piece:
        raise NotImplementedError

    def _check(self, out: Piece, plain_len: int, complete: bool) -> Piece:
        if not complete or len(out) != plain_len:
            raise errors.CorruptRecordError(f"{self.name} frame does not inflate to its declared {plain_len} bytes")
        return out


class NoCompression(Codec):
    id = 0
    name = "none"

    def compress(self, data: Piece) -> bytes:
        return bytes(data)

    def decompress(self, data: Piece, plain_len: int) -> Piece:
        return self._check(data, plain_len, True)


class _Decompressor(Protocol):
    """What zlib, bz2 and lzma decompressor objects have in common."""

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: Piece, max_length: int, /) -> bytes: ...


class _StreamCodec(Codec):
    """Shared decode for the stdlib codecs whose decompressors take max_length."""

    def _decompressor(self) -> _Decompressor:  # pragma: no cover - overridden
        raise NotImplementedError

    def decompress(self, data: Piece, plain_len: int) -> Piece:
        dec = self._decompressor()
        try:
            # One byte more than declared tells "too long" from "exact".
            out = dec.decompress(data, plain_len + 1)
        except (zlib.error, OSError, lzma.LZMAError, EOFError, ValueError) as err:
            raise errors.CorruptRecordError(f"{self.name} frame does not decompress: {err}") from err
        complete = dec.eof and not dec.unused_data
        return self._check(out, plain_len, complete)


class Gzip(_StreamCodec):
    id = 1
    name = "gzip"

    def compress(self, data: Piece) -> bytes:
        # Data deflate cannot shrink (random, already compressed) is
        # stored: deflate's stored blocks, still gzip, read as any other,
        # at memory speed instead of about 40 MB/s.
        level = 0 if _incompressible(data) else 6
        # compressobj: zlib.compress() takes wbits only from Python 3.11 on.
        gzip = zlib.compressobj(level, wbits=31)
        return gzip.compress(data) + gzip.flush()

    def _decompressor(self) -> _Decompressor:
        return zlib.decompressobj(31)


#: Data whose samples deflate does not shrink below this fraction is stored.
_STORE_ABOVE = 0.98
_SAMPLE = 4096                  # bytes per sample, four samples


def _incompressible(data: Piece) -> bool:
    """True if deflate's fastest level shrinks none of four samples of ``data``.

    The samples are at the start, the quarters and the end, so data that
    mixes compressible and random parts is compressed; they cost about 1%
    of compressing the whole.  Small inputs are always compressed.
    """
    n = len(data)
    if n < 8 * _SAMPLE:
        return False
    view = memoryview(data).cast("B")
    for start in (0, n // 4, n // 2, n - _SAMPLE):
        if len(zlib.compress(view[start:start + _SAMPLE], 1)) < _STORE_ABOVE * _SAMPLE:
            return False
    return True


class Bzip2(_StreamCodec):
    id = 2
    name = "bzip2"

    def compress(self, data: Piece) -> bytes:
        return bz2.compress(data, 9)

    def _decompressor(self) -> _Decompressor:
        return bz2.BZ2Decompressor()


class Xz(_StreamCodec):
    id = 3
    name = "xz"

    def compress(self, data: Piece) -> bytes:
        return lzma.compress(data, format=lzma.FORMAT_XZ, preset=6)

    def _decompressor(self) -> _Decompressor:
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)


class Zstd(Codec):
    id = 4
    name = "zstd"

    def __init__(self) -> None:
        self._comp = zstandard.ZstdCompressor(level=3, write_content_size=True)
        self._dec = zstandard.ZstdDecompressor()

    def compress(self, data: Piece) -> bytes:
        return self._comp.compress(data)

    def decompress(self, data: Piece, plain_len: int) -> Piece:
        # zstd trusts the content size in its own frame header: check it
        # against ours before inflating, so a bomb is refused unopened.
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError as err:
            raise errors.CorruptRecordError(f"zstd frame header is corrupt: {err}") from err
        if declared != plain_len:
            raise errors.CorruptRecordError(f"zstd frame declares {declared} bytes, stream header says {plain_len}")
        try:
            out = self._dec.decompress(data, max_output_size=plain_len)
        except zstandard.ZstdError as err:
            raise errors.CorruptRecordError(f"zstd frame does not decompress: {err}") from err
        return self._check(out, plain_len, True)


_CODECS: dict[int, type[Codec]] = {c.id: c for c in (NoCompression, Gzip, Bzip2, Xz, Zstd)}
NAMES = tuple(c.name for c in _CODECS.values())


def by_name(name: str | None) -> Codec:
    """The codec a user named (None and "" mean none)."""
    key = (name or "none").lower()
    for cls in _CODECS.values():
        if cls.name == key:
            return cls()
    raise errors.ConfigError(f"unknown compression {name!r} (choose from {', '.join(NAMES)})")


def by_id(codec_id: int) -> Codec:
    """The codec a stored header names."""
    try:
        return _CODECS[codec_id]()
    except KeyError:
        raise errors.UnsupportedVersionError(f"unknown compression id {codec_id} in stream header") from None
