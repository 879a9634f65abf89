"""Records: the typed messages inside a stream's frames, with strict decoding.

Each record is one msgpack array ``[type, ...]``.  The encoder is the only
place that packs records and the decoder the only place that unpacks them;
decoding checks every field's type and bound before anything acts on it.
"""

from __future__ import annotations

import dataclasses
import operator
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgpack

from freezer_rsyncv2 import errors
from freezer_rsyncv2.fs import entry as fsentry
from freezer_rsyncv2.fs import safepath
from freezer_rsyncv2.rsync import signature as rsig
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

# How a file entry's content travels in a data stream.
DATA_NONE = "none"      # no content (not a file, or hardlink)
DATA_FULL = "full"      # LITERAL/HOLE records, no basis
DATA_DELTA = "delta"    # COPY/LITERAL records against a basis file
DATA_META = "meta"      # content unchanged: metadata only
DATA_KINDS = (DATA_NONE, DATA_FULL, DATA_DELTA, DATA_META)

# How a MANIFEST record's signature travels (version 3, key ``sg``).
SIG_FULL = "f"          # SIGBLOCKS records follow: the data blocks
SIG_DELTA = "d"         # SIGBLOCKS/SIGZERO records follow: blocks changed since the path's entry in an earlier level
SIG_NONE = "n"          # version 4: new content, no signature (a small file: the next change sends it whole)
SIG_KINDS = (SIG_FULL, SIG_DELTA, SIG_NONE)

MAX_PATH = safepath.MAX_PATH
MAX_LITERAL = 1 << 20
MAX_NAME = safepath.MAX_COMPONENT
MAX_XATTRS = 1024
MAX_XATTR_VALUE = 1 << 16
MAX_INT = (1 << 63) - 1
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
I64_MIN = -(1 << 63)
DIGEST_LEN = 32
#: blocks in one SIGBLOCKS record (20 bytes each: a record stays < 1 MiB)
MAX_SIG_RUN = 32768
#: frames in one FRAMES record (8 bytes each)
MAX_FRAME_RUN = 65536
WEAK_LEN = 4
STRONG_LEN = 16
_MAX_RECORD = MAX_LITERAL + (1 << 16)

# Entry fields: key -> (Entry attribute, type, required).
_ENTRY_FIELDS = {
    "p": ("path", bytes, True),
    "k": ("kind", str, True),
    "m": ("mode", int, True),
    "u": ("uid", int, True),
    "g": ("gid", int, True),
    "un": ("uname", str, False),
    "gn": ("gname", str, False),
    "s": ("size", int, True),
    "mt": ("mtime_ns", int, True),
    "at": ("atime_ns", int, True),
    "ct": ("ctime_ns", int, False),
    "i": ("ino", int, False),
    "d": ("dev", int, False),
    "n": ("nlink", int, False),
    "rd": ("rdev", int, False),
    "l": ("link_target", bytes, False),
    "h": ("hardlink_to", bytes, False),
}
#: Entry attributes of a key the map lacks, and the keys a whole entry must have (in field order).
_ENTRY_DEFAULTS = {attr: None if typ is not int else 0 for attr, typ, _r in _ENTRY_FIELDS.values()}
_REQUIRED = tuple(key for key, (_a, _t, required) in _ENTRY_FIELDS.items() if required)
_REQUIRED_SET = frozenset(_REQUIRED)
_KEYS_REQUIRED = tuple((key, required) for key, (_a, _t, required) in _ENTRY_FIELDS.items())
_ALL_FIELDS = operator.attrgetter(*(attr for attr, _t, _r in _ENTRY_FIELDS.values()))
#: Entry keys a data stream's ENTRY leaves out (version 4): a restore makes
#: its own inode, device and ctime; only a manifest's change detection and
#: rename search use them.
_MANIFEST_ONLY = ("i", "d", "n", "ct")
_STREAM_KEYS_REQUIRED = tuple(item for item in _KEYS_REQUIRED if item[0] not in _MANIFEST_ONLY)
_STREAM_FIELDS = operator.attrgetter(*(_ENTRY_FIELDS[key][0] for key, _r in _STREAM_KEYS_REQUIRED))
# Keys that ride along an entry map but are not Entry attributes.
_EXTRA_FIELDS = {
    "data": str, "pn": bytes, "bl": int, "bs": int, "sp": bool,
    "dg": bytes, "B": int, "w": bytes, "S": bytes, "x": dict, "sg": str,
    "o": int, "da": str, "dm": bool,
}
#: Keys of version 4 only (manifests): ``o`` where the entry's records
#: start in the level's data plaintext, ``da`` how its content travelled
#: there, ``dm`` an entry that names only what changed since the level
#: below, ``pp`` the bytes its path shares with the previous record's.
V4_KEYS = frozenset(("o", "da", "dm", "pp"))
#: Every key an entry map may have (``pp`` is gone once the path is whole).
_MAP_KEYS = frozenset(_ENTRY_FIELDS) | frozenset(_EXTRA_FIELDS)
#: Inclusive bounds of every integer key of an entry map.  A value a
#: restore's system call cannot take would surface as a bare OverflowError
#: (or do something else than the backup meant) far from the record, so
#: each is refused when decoded.  The bounds are what the backup side can
#: produce (``os.lstat`` on Linux) and what restore hands the value to.
INT_BOUNDS: dict[str, tuple[int, int]] = {
    # Permission bits only: the walk stores stat.S_IMODE (os.chmod takes a
    # C int and a file type has no meaning here; "k" carries the type).
    "m": (0, 0o7777),
    # uid_t/gid_t are 32 bits; (uid_t)-1 is no id but chown's "leave it
    # unchanged": the file would silently keep the restoring user's id.
    "u": (0, U32_MAX - 1),
    "g": (0, U32_MAX - 1),
    "s": (0, MAX_INT),                  # off_t
    # Nanoseconds: anything msgpack carries (int64 up to uint64), since
    # os.utime takes every such value (the seconds fit a 64-bit time_t;
    # the file system clamps).  Honest files may be dated before 1970 or
    # after 2262 (2**63 ns), and a backup writes -1 to force a re-read.
    "mt": (I64_MIN, U64_MAX),
    "at": (I64_MIN, U64_MAX),
    "ct": (I64_MIN, U64_MAX),
    # ino_t, dev_t, nlink_t as stat gives them (64 bits on Linux; an
    # overlayfs inode number may use the top bit); a restore only keeps
    # them.
    "i": (0, U64_MAX),
    "d": (0, U64_MAX),
    "n": (0, U64_MAX),
    # A device number as Linux's stat gives it and mknod takes it (major
    # below 2**12, minor below 2**20: 32 bits in glibc's encoding); a
    # larger value is refused here rather than by the kernel, so a
    # restore that skips devices (not root) and verify refuse it too.
    "rd": (0, U32_MAX),
    # Block lengths as rsync.signature accepts them (a fixed block size of
    # at most 16 MiB); the basis size is an off_t.
    "bl": (1, rsig.MAX_FIXED_BLOCK),
    "bs": (0, MAX_INT),
    "B": (1, rsig.MAX_FIXED_BLOCK),
    "o": (0, MAX_INT),
}
#: key -> (Entry attribute, type, low, high): an int's inclusive bounds, a bytes' length at most
#: ``high`` (a str is not bounded here); ``entry_from_map``'s one lookup per key.
_FIELD_CHECKS: dict[str, tuple[Any, ...]] = {
    key: (attr, typ) + INT_BOUNDS.get(key, (0, MAX_PATH)) for key, (attr, typ, _r) in _ENTRY_FIELDS.items()}


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
    m = entry_map(e, extra, _STREAM_KEYS_REQUIRED, _STREAM_FIELDS)
    return pack([ENTRY, m])


def manifest(e: fsentry.Entry, **extra: Any) -> bytes:
    return pack([MANIFEST, entry_map(e, extra)])


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


def entry_map(e: fsentry.Entry, extra: dict[str, Any] | None = None,
              keys: tuple[tuple[str, bool], ...] | None = None,
              fields: Callable[[fsentry.Entry], tuple[Any, ...]] | None = None) -> dict[str, Any]:
    """The msgpack map of an entry; None-valued and default fields left out.
    ``keys``/``fields``: only these keys (``entry``'s, without ``_MANIFEST_ONLY``)."""
    out: dict[str, Any] = {}
    for (key, required), value in zip(keys or _KEYS_REQUIRED, (fields or _ALL_FIELDS)(e)):
        if required or value not in (None, 0):
            out[key] = value
    if e.xattrs:
        out["x"] = dict(e.xattrs)
    if extra:
        out.update({k: v for k, v in extra.items() if v is not None})
    return out


def change_map(e: fsentry.Entry, below: fsentry.Entry) -> dict[str, Any] | None:
    """Version 4: the map of a ``dm`` entry, ``e`` as changes over ``below``
    (path, kind and the fields that differ); None when ``e`` lacks a field
    ``below`` has (a change entry cannot clear one) or the kinds differ."""
    if e.kind != below.kind:
        return None
    out: dict[str, Any] = {"p": e.path, "k": e.kind}
    # entry_map's rule of which keys a map has, field by field on both entries
    for (key, required), now, then in zip(_KEYS_REQUIRED, _ALL_FIELDS(e), _ALL_FIELDS(below)):
        if required:
            if now != then and key not in out:
                out[key] = now
        elif now is None or now == 0:
            if then is not None and then != 0:
                return None         # a change entry cannot clear a field
        elif now != then:
            out[key] = now
    if e.xattrs != below.xattrs:
        if not e.xattrs:
            return None
        out["x"] = dict(e.xattrs)
    out["dm"] = True
    return out


def merge_changes(below: fsentry.Entry, e: fsentry.Entry, keys: frozenset[str]) -> fsentry.Entry:
    """A ``dm`` entry ``e`` (its fields ``keys``) completed from ``below``."""
    merged = dataclasses.replace(below, path=e.path)
    for key in keys:
        if key == "x":
            merged.xattrs = e.xattrs
        elif key != "p":
            attr = _ENTRY_FIELDS[key][0]
            setattr(merged, attr, getattr(e, attr))
    return merged


def check_path(path: Any, what: str = "path") -> bytes:
    """A stored path: relative, normalized, bounded (``fs.safepath.check_path``); raises
    UnsafePathError naming ``what``, or CorruptRecordError for a value that is not bytes."""
    if not isinstance(path, bytes):
        raise errors.CorruptRecordError(f"{what} is not bytes: {path!r}")
    try:
        safepath.check_path(path)
    except errors.UnsafePathError as err:
        raise errors.UnsafePathError(f"{what}: {err}") from None
    return path


def entry_from_map(m: Any, v4: bool = False) -> tuple[fsentry.Entry, dict[str, Any]]:
    """Validate an entry map: (Entry, extra fields). Raises CorruptRecordError.

    ``v4``: a version-4 MANIFEST map, which may carry ``o``, ``da`` and
    ``dm``.  A ``dm`` entry names its path, its kind and what changed since
    the level below: the fields it lacks are zero in the Entry returned,
    and ``extra["dm"]`` is the set of entry keys it has (the overlay fills
    the others in from the level below).
    """
    if not isinstance(m, dict):
        raise errors.CorruptRecordError(f"entry is not a map: {type(m)!r}")
    path = m.get("p")
    changes = v4 and m.get("dm") is True
    # One pass over the map (the hot path of reading a manifest): each key
    # is looked up, typed and bounded; then what is missing is named.
    kwargs: dict[str, Any] = dict(_ENTRY_DEFAULTS)
    extra: dict[str, Any] = {}
    for key, value in m.items():
        raw: Any = value        # checked below; isinstance would narrow ``value`` to object
        spec = _FIELD_CHECKS.get(key)
        if spec is None:
            extra_type = _EXTRA_FIELDS.get(key)
            if extra_type is None or (key in V4_KEYS and not v4):
                raise errors.CorruptRecordError(f"entry {path!r} has unknown field {key!r}")
            if not isinstance(value, extra_type) or (extra_type is int and isinstance(value, bool)):
                raise errors.CorruptRecordError(f"entry {path!r} field {key!r} has type {type(value).__name__}")
            if extra_type is int:
                _check_bounds(path, key, raw)
            extra[key] = raw
            continue
        attr, typ, lo, hi = spec
        if type(value) is not typ:      # msgpack gives exact types; a bool is no int
            if not isinstance(value, typ) or isinstance(value, bool):
                raise errors.CorruptRecordError(f"entry {path!r} field {key!r} has type {type(value).__name__}")
        if typ is int:
            if not lo <= raw <= hi:
                _check_bounds(path, key, raw)
        elif typ is bytes and len(raw) > hi:
            raise errors.CorruptRecordError(f"entry {path!r} field {key!r} too long")
        kwargs[attr] = raw
    if not m.keys() >= _REQUIRED_SET:
        for key in _REQUIRED:
            if key not in m and (not changes or key in ("p", "k")):
                raise errors.CorruptRecordError(f"entry {path!r} lacks field {key!r}")
    check_path(kwargs["path"])
    if kwargs["kind"] not in fsentry.KINDS:
        raise errors.CorruptRecordError(f"entry {path!r} has unknown kind {kwargs['kind']!r}")
    kwargs["xattrs"] = _check_xattrs(path, extra.pop("x", {}))
    data = extra.get("data", DATA_NONE)
    if data not in DATA_KINDS:
        raise errors.CorruptRecordError(f"entry {path!r} has unknown data kind {data!r}")
    if "pn" in extra:
        check_path(extra["pn"], "basis path")
    if "sg" in extra and (extra["sg"] not in SIG_KINDS
                          or kwargs["kind"] != fsentry.KIND_FILE
                          or "w" in extra
                          or (extra["sg"] == SIG_NONE) != ("B" not in extra)
                          or (extra["sg"] == SIG_NONE and (not v4 or "da" not in extra))):
        raise errors.CorruptRecordError(f"entry {path!r} has a malformed signature kind {extra['sg']!r}")
    if "da" in extra and (extra["da"] not in (DATA_FULL, DATA_DELTA) or "sg" not in extra):
        raise errors.CorruptRecordError(f"entry {path!r} has a malformed data kind {extra['da']!r}")
    if "dm" in extra:
        if extra["dm"] is not True or "sg" in extra or "da" in extra:
            raise errors.CorruptRecordError(f"entry {path!r} is a malformed change entry")
        extra["dm"] = frozenset(key for key in m if key in _ENTRY_FIELDS or key == "x")
    return fsentry.Entry(**kwargs), extra


def lazy_map(m: Any) -> dict[str, Any]:
    """An entry map checked only as far as its path and keys: a dict of known
    keys whose ``p`` is bytes.  ``entry_from_map`` checks the rest when the
    entry is used; a backup compares most maps of its previous levels with
    a file's stat and uses none of their values (``manifest.Prior``)."""
    if type(m) is not dict or type(m.get("p")) is not bytes or not m.keys() <= _MAP_KEYS:
        entry_from_map(m, True)     # raises, saying what is wrong
        raise errors.CorruptRecordError("entry map is malformed")
    return m


def _check_bounds(path: Any, key: str, value: int) -> None:
    """Refuse an integer field outside ``INT_BOUNDS``, naming it."""
    lo, hi = INT_BOUNDS[key]
    if not lo <= value <= hi:
        spec = "#o" if key == "m" else "d"    # modes read best in octal
        raise errors.CorruptRecordError(
            f"entry {path!r} field {key!r} out of range: {value:{spec}} (allowed {lo:{spec}}..{hi:{spec}})")


def _check_xattrs(path: Any, x: dict[Any, Any]) -> dict[bytes, bytes]:
    if len(x) > MAX_XATTRS:
        raise errors.CorruptRecordError(f"entry {path!r} has too many xattrs")
    for k, v in x.items():
        if (not isinstance(k, bytes) or not isinstance(v, bytes)
                or not k or len(k) > MAX_NAME or b"\0" in k
                or len(v) > MAX_XATTR_VALUE):
            raise errors.CorruptRecordError(f"entry {path!r} has a malformed xattr {k!r}")
    return x


def _int(rec: list[Any], i: int, lo: int = 0) -> int:
    value = rec[i]
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= MAX_INT:
        raise errors.CorruptRecordError(f"{NAMES[rec[0]]} record field {i} is not an integer in range: {value!r}")
    return value


_ARITY = {BEGIN: 2, ENTRY: 2, LITERAL: 2, COPY: 3, HOLE: 2, END_FILE: 3, DELETE: 2, END: 2, MANIFEST: 2,
          TOMBSTONE: 2, SIGBLOCKS: 4, SIGZERO: 3, FRAMES: 5}


def _check(rec: Any, v4: bool = True, lazy: bool = False) -> tuple[Any, ...]:
    """Validate one raw record's shape; returns it as a tuple.  ``v4``: a
    version-4 stream (FRAMES records and the manifest keys of version 4).
    ``lazy``: a MANIFEST record comes as ``(MANIFEST, map)``, its map
    checked only for its shape, its path and its keys (``lazy_map``)."""
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
        return (rtype, lazy_map(rec[1]))
    elif rtype in (ENTRY, MANIFEST):
        e, extra = entry_from_map(rec[1], v4 and rtype == MANIFEST)
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
        check_path(rec[1])
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
    max_str_len=MAX_PATH, max_array_len=16, max_map_len=2 * MAX_XATTRS,
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
    (``lazy_map``, ``entry_from_map``).
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
