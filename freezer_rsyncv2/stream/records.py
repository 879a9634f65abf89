"""Records: the typed messages inside a stream's frames, with strict decoding.

Each record is one msgpack array ``[type, ...]``.  The encoder is the only
place that packs records and the decoder the only place that unpacks them;
decoding checks every field's type and bound before anything acts on it.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgpack

from freezer_rsyncv2 import errors
from freezer_rsyncv2.fs import entry as fsentry
from freezer_rsyncv2.stream import entrymap
from freezer_rsyncv2.stream.compression import Piece

BEGIN = 1        # [1, {meta}]                 first record of a stream
ENTRY = 2        # [2, {entry}]                one tree entry (data stream)
LITERAL = 3      # [3, bytes]                  file data
COPY = 4         # [4, first_block, count]     blocks of the basis file
HOLE = 5         # [5, length]                 a run of zero bytes, not stored
END_FILE = 6     # [6, size, digest]           closes one file's data
DELETE = 7       # [7, path]                   remove a path (data stream)
END = 8          # [8, {totals}]               last record of a stream
MANIFEST = 9     # [9, {entry + signature}]    manifest entry
TOMBSTONE = 10   # [10, path]                  manifest: path deleted
SIGBLOCKS = 11   # [11, first, weak, strong]   manifest: signature of data blocks
SIGZERO = 12     # [12, first, count]          manifest: zero blocks of a signature
FRAMES = 13      # [13, header_len, first, stored, plain]  manifest (v4): where the data's frames lie

NAMES = {BEGIN: "BEGIN", ENTRY: "ENTRY", LITERAL: "LITERAL", COPY: "COPY",
         HOLE: "HOLE", END_FILE: "END_FILE", DELETE: "DELETE", END: "END",
         MANIFEST: "MANIFEST", TOMBSTONE: "TOMBSTONE",
         SIGBLOCKS: "SIGBLOCKS", SIGZERO: "SIGZERO", FRAMES: "FRAMES"}

MAX_LITERAL = 1 << 20
DIGEST_LEN = 32
#: blocks in one SIGBLOCKS record (20 bytes each: a record stays < 1 MiB)
MAX_SIG_RUN = 32768
#: frames in one FRAMES record (8 bytes each)
MAX_FRAME_RUN = 65536
WEAK_LEN = 4
STRONG_LEN = 16
_MAX_RECORD = MAX_LITERAL + (1 << 16)

_PACKERS = threading.local()


def pack(obj: Any) -> bytes:
    """The msgpack bytes of a record (a Packer per thread, kept: ``msgpack.packb`` makes one a call)."""
    try:
        packer = _PACKERS.packer
    except AttributeError:
        packer = _PACKERS.packer = msgpack.Packer(use_bin_type=True)
    packed: bytes = packer.pack(obj)
    return packed


def begin(meta: dict[str, Any]) -> bytes:
    return pack([BEGIN, meta])


def entry(e: fsentry.Entry, **extra: Any) -> bytes:
    m = entrymap.stream_map(e, extra)
    return pack([ENTRY, m])


def manifest(e: fsentry.Entry, **extra: Any) -> bytes:
    return pack([MANIFEST, entrymap.entry_map(e, extra)])


def literal(data: bytes) -> bytes:
    return pack([LITERAL, data])


def literal_head(size: int) -> bytes:
    """The bytes of a LITERAL record that precede its ``size`` data bytes.

    ``literal_head(len(d)) + d == literal(d)``: a writer can hand the data on
    without copying it into the record.
    """
    if size < 0x100:
        return _LIT_HEAD + b"\xc4" + bytes((size,))
    if size < 0x10000:
        return _LIT_HEAD + b"\xc5" + size.to_bytes(2, "big")
    return _LIT_HEAD + b"\xc6" + size.to_bytes(4, "big")


_LIT_HEAD = bytes((0x92, LITERAL))      # msgpack: array of 2, positive fixint


def copy(first_block: int, count: int) -> bytes:
    return pack([COPY, first_block, count])


def hole(length: int) -> bytes:
    return pack([HOLE, length])


def end_file(size: int, digest: bytes) -> bytes:
    return pack([END_FILE, size, digest])


def sig_blocks(first_block: int, weak: bytes, strong: bytes) -> bytes:
    return pack([SIGBLOCKS, first_block, weak, strong])


def sig_zero(first_block: int, count: int) -> bytes:
    return pack([SIGZERO, first_block, count])


def frame_runs(header_len: int, stored: Any, plain: Any) -> Iterator[bytes]:
    """FRAMES records of a frame table (``u32`` big-endian lengths), MAX_FRAME_RUN frames each."""
    for first in range(0, len(stored), MAX_FRAME_RUN):
        part_s, part_p = stored[first:first + MAX_FRAME_RUN], plain[first:first + MAX_FRAME_RUN]
        yield pack([FRAMES, header_len, first, struct.pack(f">{len(part_s)}I", *part_s),
                    struct.pack(f">{len(part_p)}I", *part_p)])


def delete(path: bytes) -> bytes:
    return pack([DELETE, path])


def tombstone(path: bytes) -> bytes:
    return pack([TOMBSTONE, path])


def end(totals: dict[str, Any]) -> bytes:
    return pack([END, totals])


def _int(rec: list[Any], i: int, lo: int = 0) -> int:
    value = rec[i]
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= entrymap.MAX_INT:
        raise errors.CorruptRecordError(f"{NAMES[rec[0]]} record field {i} is not an integer in range: {value!r}")
    return value


_ARITY = {BEGIN: 2, ENTRY: 2, LITERAL: 2, COPY: 3, HOLE: 2, END_FILE: 3, DELETE: 2, END: 2, MANIFEST: 2,
          TOMBSTONE: 2, SIGBLOCKS: 4, SIGZERO: 3, FRAMES: 5}


def _check(rec: Any, v4: bool = True, lazy: bool = False) -> tuple[Any, ...]:
    """Validate one raw record's shape; returns it as a tuple.  ``v4``: a
    version-4 stream (FRAMES records and the manifest keys of version 4).
    ``lazy``: a MANIFEST record comes as ``(MANIFEST, map)``, its map
    checked only for its shape, its path and its keys (``entrymap.lazy_map``)."""
    if not isinstance(rec, list) or not rec:
        raise errors.CorruptRecordError("record is not a non-empty array")
    rtype = rec[0]
    arity = _ARITY
    if not isinstance(rtype, int) or rtype not in arity or (rtype == FRAMES and not v4):
        raise errors.CorruptRecordError(f"unknown record type {rtype!r}")
    if len(rec) != arity[rtype]:
        raise errors.CorruptRecordError(f"{NAMES[rtype]} record has {len(rec)} fields, expected {arity[rtype]}")
    if rtype in (BEGIN, END) and not isinstance(rec[1], dict):
        raise errors.CorruptRecordError(f"{NAMES[rtype]} record is not a map")
    elif lazy and rtype == MANIFEST:
        return (rtype, entrymap.lazy_map(rec[1]))
    elif rtype in (ENTRY, MANIFEST):
        e, extra = entrymap.entry_from_map(rec[1], v4 and rtype == MANIFEST)
        return (rtype, e, extra)
    elif rtype == LITERAL:
        if not isinstance(rec[1], (bytes, memoryview)) or not rec[1]:
            raise errors.CorruptRecordError("LITERAL record without data")
    elif rtype == COPY:
        _int(rec, 1)
        _int(rec, 2, lo=1)
    elif rtype == HOLE:
        _int(rec, 1, lo=1)
    elif rtype == END_FILE:
        _int(rec, 1)
        if not isinstance(rec[2], bytes) or len(rec[2]) != DIGEST_LEN:
            raise errors.CorruptRecordError("END_FILE digest is malformed")
    elif rtype in (DELETE, TOMBSTONE):
        entrymap.check_path(rec[1])
    elif rtype == SIGBLOCKS:
        _int(rec, 1)
        weak, strong = rec[2], rec[3]
        if not isinstance(weak, bytes) or not isinstance(strong, bytes):
            raise errors.CorruptRecordError("SIGBLOCKS hashes are not bytes")
        count = len(weak) // WEAK_LEN
        if not 1 <= count <= MAX_SIG_RUN or len(weak) != count * WEAK_LEN or len(strong) != count * STRONG_LEN:
            raise errors.CorruptRecordError(
                f"SIGBLOCKS record has {len(weak)} weak and {len(strong)} strong hash bytes")
    elif rtype == SIGZERO:
        _int(rec, 1)
        _int(rec, 2, lo=1)
    elif rtype == FRAMES:
        _int(rec, 1)
        _int(rec, 2)
        stored, plain = rec[3], rec[4]
        if not isinstance(stored, bytes) or not isinstance(plain, bytes) or len(stored) != len(plain) \
                or not 0 < len(stored) <= 4 * MAX_FRAME_RUN or len(stored) % 4:
            raise errors.CorruptRecordError("FRAMES record lengths are malformed")
    return tuple(rec)


def _unprefix(rec: Any, last: bytes) -> None:
    """Version 4: a MANIFEST path given as ``pp`` bytes of the previous path, then ``p``."""
    m = rec[1] if isinstance(rec, list) and len(rec) == 2 and rec[0] == MANIFEST else None
    if not isinstance(m, dict) or "pp" not in m:
        return
    shared, rest = m.pop("pp"), m.get("p")
    if not isinstance(shared, int) or isinstance(shared, bool) or not 0 < shared <= len(last) \
            or not isinstance(rest, bytes):
        raise errors.CorruptRecordError(f"MANIFEST record shares {shared!r} bytes with the path before it")
    m["p"] = last[:shared] + rest


def _path_of(rec: tuple[Any, ...]) -> bytes | None:
    if rec[0] in (ENTRY, MANIFEST):
        path: bytes = rec[1]["p"] if type(rec[1]) is dict else rec[1].path
        return path
    if rec[0] in (TOMBSTONE, DELETE):
        return bytes(rec[1])
    return None


_UNPACK_OPTS = dict(
    raw=False, use_list=True, strict_map_key=False,
    max_buffer_size=2 * _MAX_RECORD, max_bin_len=_MAX_RECORD,
    max_str_len=entrymap.MAX_PATH, max_array_len=16, max_map_len=2 * entrymap.MAX_XATTRS,
    max_ext_len=0)
_BIN_LEN = {0xc4: 1, 0xc5: 2, 0xc6: 4}     # msgpack bin 8/16/32: length bytes
_FIRST_FEED = 512


class _Reader:
    """Splits frame plaintexts (any boundaries) into raw records.

    A LITERAL record that lies inside one plaintext comes out as a view of
    it, its data neither copied nor parsed by msgpack (a restore's bulk);
    every other record is unpacked by msgpack from just its own bytes.
    """

    def __init__(self, plain_frames: Iterable[Piece]) -> None:
        self._frames = iter(plain_frames)
        self._view = memoryview(b"")
        self._pos = 0
        self._base = 0      # plaintext offset of _view's start

    @property
    def offset(self) -> int:
        """Plaintext offset of the next record (once ``at_end`` said there is one)."""
        return self._base + self._pos

    def _next_frame(self) -> bool:
        for plain in self._frames:
            if len(plain):
                self._base += len(self._view)
                self._view = memoryview(plain).cast("B")
                self._pos = 0
                return True
        return False

    def at_end(self) -> bool:
        return self._pos >= len(self._view) and not self._next_frame()

    def read(self) -> Any:
        """The next raw record (the stream must not be at its end)."""
        view, pos = self._view, self._pos
        if view[pos:pos + 2] == _LIT_HEAD:
            size_len = _BIN_LEN.get(view[pos + 2]) if pos + 2 < len(view) else None
            start = pos + 3 + (size_len or 0)
            if size_len and start <= len(view):
                size = int.from_bytes(view[pos + 3:start], "big")
                if 0 < size <= _MAX_RECORD:
                    self._pos = start
                    return [LITERAL, self._data(size)]
        return self._unpack()

    def _data(self, size: int) -> Any:
        """The next ``size`` bytes: a view if they lie in one plaintext."""
        view, pos = self._view, self._pos
        if pos + size <= len(view):
            self._pos = pos + size
            return view[pos:pos + size]
        parts, got = [], 0
        while got < size:
            if self._pos >= len(self._view) and not self._next_frame():
                raise errors.TruncatedError("stream ends inside a record")
            take = min(size - got, len(self._view) - self._pos)
            parts.append(self._view[self._pos:self._pos + take])
            self._pos += take
            got += take
        return b"".join(parts)      # the one copy, of data across frames

    def _unpack(self) -> Any:
        unpacker = msgpack.Unpacker(**_UNPACK_OPTS)
        step, fed = _FIRST_FEED, 0
        while True:
            if self._pos >= len(self._view) and not self._next_frame():
                raise errors.TruncatedError("stream ends inside a record")
            start = self._pos
            piece = self._view[start:start + step]
            unpacker.feed(piece)
            before, fed = fed, fed + len(piece)
            try:
                raw = unpacker.unpack()
            except msgpack.OutOfData:
                if fed > _MAX_RECORD:
                    raise errors.CorruptRecordError(f"record larger than {_MAX_RECORD} bytes") from None
                self._pos = start + len(piece)
                step = min(step * 4, _MAX_RECORD)
                continue
            self._pos = start + unpacker.tell() - before
            return raw


class _BulkReader:
    """``_Reader`` for streams of small records (manifests): one msgpack
    Unpacker for the whole stream, fed 64 KiB at a time (its buffer stays
    bounded), instead of one per record; LITERAL data is not spared a copy."""

    _FEED = 64 << 10

    def __init__(self, plain_frames: Iterable[Piece]) -> None:
        self._frames = iter(plain_frames)
        self._view = memoryview(b"")
        self._unpacker = msgpack.Unpacker(**_UNPACK_OPTS)
        self._fed = 0

    def _feed(self) -> bool:
        while not len(self._view):
            plain = next(self._frames, None)
            if plain is None:
                return False
            self._view = memoryview(plain).cast("B")
        piece, self._view = self._view[:self._FEED], self._view[self._FEED:]
        self._unpacker.feed(piece)
        self._fed += len(piece)
        return True

    def at_end(self) -> bool:
        return self._unpacker.tell() == self._fed and not self._feed()

    def read(self) -> Any:
        while True:
            try:
                return self._unpacker.unpack()
            except msgpack.OutOfData:
                if not self._feed():
                    raise errors.TruncatedError("stream ends inside a record") from None


def decode(plain_frames: Iterable[Piece], info: dict[str, int] | None = None,
           fragment: bool = False, small: bool = False,
           on_entry: Callable[[int, bytes], None] | None = None,
           lazy: bool = False) -> Iterator[tuple[Any, ...]]:
    """Yield validated records from frame plaintexts (any boundaries).

    Records come as tuples ``(type, ...)``; ENTRY and MANIFEST come as
    ``(type, Entry, extra)``; LITERAL data may be a read-only view of a
    plaintext (valid as long as the plaintext is).  The stream must open
    with BEGIN and close with END, after which nothing may follow.
    ``info``: what ``frames.decode_frames`` says of the stream (its
    ``version``, known once the first plaintext is out; the newest if not
    given).  ``fragment``: the records of a part of a stream (a partial
    restore's ranged read): records as they come, up to the end of the
    input (the caller knows which it expects).  ``small``: a stream of
    small records (a manifest), read faster (``_BulkReader``).  ``lazy``:
    MANIFEST records come as ``(MANIFEST, map)``, the map checked later
    (``entrymap.lazy_map``, ``entrymap.entry_from_map``).
    ``on_entry(offset, path)``: told where each ENTRY record starts in the
    plaintext (``verify`` checks a manifest's index with it).
    """
    if small and on_entry is not None:
        raise ValueError("on_entry needs the reader of data streams")
    reader: _Reader | _BulkReader = _BulkReader(plain_frames) if small else _Reader(plain_frames)
    first = True
    v4 = True
    last = b""
    while not reader.at_end():
        if first and info is not None:
            v4 = info.get("version", 4) >= 4
        try:
            at = reader.offset if on_entry is not None and isinstance(reader, _Reader) else 0
            raw = reader.read()
            if v4:
                _unprefix(raw, last)
            rec = _check(raw, v4, lazy)
        except (msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError,
                msgpack.exceptions.StackError, msgpack.exceptions.BufferFull,
                ValueError, TypeError) as err:
            raise errors.CorruptRecordError(f"undecodable record: {err}") from err
        path = _path_of(rec)
        if path is not None:
            last = path
            if on_entry is not None and rec[0] == ENTRY:
                on_entry(at, path)
        if fragment:
            yield rec
            continue
        if first and rec[0] != BEGIN:
            raise errors.CorruptRecordError(f"stream does not open with BEGIN ({NAMES.get(rec[0])})")
        if not first and rec[0] == BEGIN:
            raise errors.CorruptRecordError("second BEGIN record")
        first = False
        if rec[0] == END:
            # Checked before END is handed on: a consumer (a restore) stops
            # at END and never resumes this generator.  at_end() reads the
            # frames to their end, so the frame layer's own checks (a final
            # frame, nothing after it) run here too.
            if not reader.at_end():
                raise errors.CorruptRecordError("trailing bytes after END record")
            yield rec
            return
        yield rec
    if not fragment:
        raise errors.TruncatedError("stream ends before its END record")
