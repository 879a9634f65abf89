"""Entry maps: a tree entry as a msgpack map in ENTRY and MANIFEST records, and its strict check.

The map's keys, their types and bounds, the keys a change entry (``dm``) and
a data stream's ENTRY carry, and the values of the keys that say how a
file's content and signature travel (``data``, ``da``, ``sg``).
``entry_map`` makes a map of an Entry, ``entry_from_map`` checks a map
read back and makes the Entry of it; ``stream.records`` packs and unpacks
the records around them.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Mapping
from typing import Any

from freezer_rsyncv2 import errors
from freezer_rsyncv2.fs import entry as fsentry
from freezer_rsyncv2.fs import safepath
from freezer_rsyncv2.rsync import signature as rsig

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
MAX_NAME = safepath.MAX_COMPONENT
MAX_XATTRS = 1024
MAX_XATTR_VALUE = 1 << 16
MAX_INT = (1 << 63) - 1
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
I64_MIN = -(1 << 63)

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


def entry_map(e: fsentry.Entry, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The msgpack map of an entry (a MANIFEST record's); None-valued and default fields left out."""
    return _map(e, extra, _KEYS_REQUIRED, _ALL_FIELDS)


def stream_map(e: fsentry.Entry, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``entry_map`` of a data stream's ENTRY record: without ``_MANIFEST_ONLY``'s keys."""
    return _map(e, extra, _STREAM_KEYS_REQUIRED, _STREAM_FIELDS)


def _map(e: fsentry.Entry, extra: dict[str, Any] | None, keys: tuple[tuple[str, bool], ...],
         fields: Callable[[fsentry.Entry], tuple[Any, ...]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for (key, required), value in zip(keys, fields(e)):
        if required or value not in (None, 0):
            out[key] = value
    if e.xattrs:
        out["x"] = dict(e.xattrs)
    if extra:
        out.update({k: v for k, v in extra.items() if v is not None})
    return out


def change_map(e: fsentry.Entry, below: Mapping[str, Any]) -> dict[str, Any] | None:
    """Version 4: the map of a ``dm`` entry, ``e`` as changes over ``below``, the
    path's map in the chain below (path, kind and the fields that differ);
    None when ``e`` lacks a field ``below`` has (a change entry cannot clear
    one) or the kinds differ.  ``below`` is unchecked: its values are only
    compared, and a value equal to ``e``'s stays below, where a restore
    checks it (``entry_from_map``)."""
    if e.kind != below.get("k"):
        return None
    out: dict[str, Any] = {"p": e.path, "k": e.kind}
    # entry_map's rule of which keys a map has, field by field on the entry and the map
    for (key, required), now in zip(_KEYS_REQUIRED, _ALL_FIELDS(e)):
        then = below.get(key)
        if required:
            if now != then and key not in out:
                out[key] = now
        elif now is None or now == 0:
            if then is not None and then != 0:
                return None         # a change entry cannot clear a field
        elif now != then:
            out[key] = now
    if e.xattrs != below.get("x", {}):
        if not e.xattrs:
            return None
        out["x"] = dict(e.xattrs)
    out["dm"] = True
    return out


def same_values(keys: tuple[str, ...]) -> Callable[[fsentry.Entry, Mapping[str, Any]], bool]:
    """A test of whether an entry has a map's values in ``keys`` (two or more
    entry keys or ``x``).  A key the map lacks stands for its Entry default
    (``entry_from_map``'s); the map is unchecked: only compared."""
    attrs = operator.attrgetter(*("xattrs" if key == "x" else _ENTRY_FIELDS[key][0] for key in keys))
    plan: tuple[tuple[str, Any], ...] = tuple(
        (key, {} if key == "x" else _ENTRY_DEFAULTS[_ENTRY_FIELDS[key][0]]) for key in keys)

    def same(e: fsentry.Entry, m: Mapping[str, Any]) -> bool:
        for (key, default), value in zip(plan, attrs(e)):
            if m.get(key, default) != value:
                return False
        return True
    return same


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
