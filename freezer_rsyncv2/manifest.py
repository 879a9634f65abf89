"""Engine metadata: per-level delta manifests, sorted by path, and their overlay.

A level's manifest holds only what changed at that level: full entries (with
the file's signature and digest) for new or rewritten files, stat-only
entries (no signature: inherit it) for metadata changes, and tombstones for
deletions.  Every manifest is sorted by ``fs.walk.sort_key(path)`` so the overlay of a
chain and the tree walk merge as sorted streams with bounded memory.  This
module reads them (``read``, ``overlay``); ``manifest_writer`` writes one.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from freezer_rsyncv2 import errors
from freezer_rsyncv2.fs import entry as fsentry
from freezer_rsyncv2.fs.walk import sort_key
from freezer_rsyncv2.rsync import sigdelta
from freezer_rsyncv2.rsync import signature as rsig
from freezer_rsyncv2.stream import entrymap, frames, place, records

READ_CHUNK = 1 << 20


class ManifestEntry:
    """One path's state at some level: its entry and, for files, signature.

    The signature is built on first use (``signature()``): most entries of
    an overlay are only compared by their stat fields, and a stored
    signature may be a delta over the path's entry at an earlier level.
    """

    __slots__ = ("entry", "digest", "block_len", "_sig", "_make")

    def __init__(self, entry: fsentry.Entry, digest: bytes | None = None,
                 sig: rsig.Signature | None = None, block_len: int = 0,
                 make: Callable[[], rsig.Signature] | None = None) -> None:
        self.entry = entry
        self.digest = digest
        self._sig = sig
        self._make = make
        self.block_len = sig.block_len if sig is not None else block_len

    @property
    def has_signature(self) -> bool:
        return self._sig is not None or self._make is not None

    def signature(self) -> rsig.Signature:
        if self._sig is None:
            if self._make is None:
                raise ValueError(f"{self.entry.path!r} has no signature")
            self._sig, self._make = self._make(), None
        return self._sig

    def stat_only(self, entry: fsentry.Entry, digest: bytes | None) -> ManifestEntry:
        """``entry`` (new stat fields) with this entry's content."""
        return ManifestEntry(entry, digest if digest is not None
                             else self.digest, self._sig, self.block_len,
                             self._make)


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while True:
            chunk = f.read(READ_CHUNK)
            if not chunk:
                return
            yield chunk


def read(path: str, cipher_factory: frames.CipherFactory = frames.null_cipher_for,
         where: place.Place | None = None, index: list[frames.FrameTable] | None = None
         ) -> Iterator[tuple[Any, ...]]:
    """Yield one manifest's entries, sorted by path.

    ``(MANIFEST, Entry, extra, runs)``, where ``runs`` are the entry's
    signature records as ``sigdelta.SigRun`` (version 3), or
    ``(TOMBSTONE, path)``.  ``where``: the level the storage holds it as;
    a manifest that names another place is refused (``stream.place``).
    ``index``: gets the level's frame table (version 4) once the entries
    are read; nothing for older manifests.
    """
    for _key, rec in _read(path, cipher_factory, where, index):
        if rec[0] == records.MANIFEST:
            _t, m, v4, runs = rec
            yield (records.MANIFEST, *entrymap.entry_from_map(m, v4), runs)
        else:
            yield rec


def read_lazy(path: str, cipher_factory: frames.CipherFactory = frames.null_cipher_for,
              where: place.Place | None = None, index: list[frames.FrameTable] | None = None
              ) -> Iterator[tuple[Any, ...]]:
    """``read``, an entry's map left to be checked when it is used: its
    records are ``(MANIFEST, map, v4, runs)`` (``entrymap.lazy_map``;
    ``entrymap.entry_from_map(map, v4)`` checks the rest)."""
    for _key, rec in _read(path, cipher_factory, where, index):
        yield rec


def _read(path: str, cipher_factory: frames.CipherFactory, where: place.Place | None,
          index: list[frames.FrameTable] | None) -> Iterator[tuple[bytes, tuple[Any, ...]]]:
    """``read_lazy``'s records with their path's ``sort_key``."""
    info: dict[str, int] = {}
    plain = frames.decode_frames(_file_chunks(path), frames.KIND_MANIFEST, cipher_factory, info)
    last = b""          # the key of the path before (none sorts below b"", a path is never empty)
    held: list[Any] | None = None        # the MANIFEST whose signature is read
    table: frames.FrameTable | None = None
    v4 = True
    for rec in records.decode(plain, info, small=True, lazy=True):
        rtype = rec[0]
        if rtype == records.BEGIN:
            place.check(rec[1], where, f"manifest of level {where.level if where else '?'}", info["version"] >= 3)
            v4 = info["version"] >= 4
            continue
        if rtype in (records.SIGBLOCKS, records.SIGZERO):
            if held is None or held[1].get("sg") not in (entrymap.SIG_FULL, entrymap.SIG_DELTA):
                raise errors.CorruptRecordError(f"{records.NAMES[rtype]} record without its MANIFEST record in {path}")
            held[3].append(
                sigdelta.SigRun(rec[1], len(rec[2]) // records.WEAK_LEN,
                                rec[2], rec[3])
                if rtype == records.SIGBLOCKS else
                sigdelta.SigRun(rec[1], rec[2], None, None))
            continue
        if held is not None:
            yield last, tuple(held)
            held = None
        if rtype == records.FRAMES:
            table = _frames_record(rec, table, path)
            continue
        if rtype == records.END and table is not None and index is not None:
            index.append(table)
        if table is not None and rtype != records.END:
            raise errors.CorruptRecordError(f"{records.NAMES[rtype]} record after the FRAMES records in {path}")
        if rtype == records.MANIFEST:
            path_ = rec[1]["p"]
        elif rtype == records.TOMBSTONE:
            path_ = rec[1]
        elif rtype in (records.BEGIN, records.END):
            continue
        else:
            raise errors.CorruptRecordError(f"{records.NAMES[rtype]} record in a manifest")
        key = sort_key(path_)
        if key <= last:
            raise errors.CorruptRecordError(f"manifest {path} is not sorted at {path_!r}")
        last = key
        if rtype == records.MANIFEST:
            held = [rtype, rec[1], v4, []]
        else:
            yield key, rec


def _frames_record(rec: tuple[Any, ...], table: frames.FrameTable | None, path: str) -> frames.FrameTable:
    """Add one FRAMES record to the level's frame table (they come in order, none missing)."""
    _t, header_len, first, stored, plain = rec
    if table is None:
        table = frames.FrameTable(header_len)
    if header_len != table.header_len or first != len(table):
        raise errors.CorruptRecordError(f"FRAMES records of {path} are out of order")
    count = len(stored) // 4
    for stored_len, plain_len in zip(struct.unpack(f">{count}I", stored), struct.unpack(f">{count}I", plain)):
        table.add(stored_len, plain_len)
    return table


def _to_entry(rec: tuple[Any, ...], base: ManifestEntry | None, whole_chain: bool) -> ManifestEntry | None:
    _t, e, extra, runs = rec
    digest = extra.get("dg")
    if "dm" in extra:       # version 4: what changed since the level below
        if base is None or base.entry.kind != e.kind:
            if not whole_chain:
                return None     # the levels below are not at hand: sent again next time
            raise errors.CorruptRecordError(f"change entry of {e.path!r} has no entry of its kind below")
        return base.stat_only(entrymap.merge_changes(base.entry, e, extra["dm"]), digest)
    if "w" in extra:        # versions 1 and 2: the whole signature inline
        block_len, weak, strong = extra.get("B", 0), extra["w"], extra.get("S", b"")
        return ManifestEntry(e, digest, block_len=block_len, make=lambda: (
            rsig.Signature.from_bytes(block_len, e.size, weak, strong)))
    kind = extra.get("sg")
    if kind == entrymap.SIG_NONE:
        return ManifestEntry(e, digest)
    if kind == entrymap.SIG_FULL:
        block_len = extra["B"]
        return ManifestEntry(e, digest, block_len=block_len, make=lambda: (
            sigdelta.apply(None, block_len, e.size, runs, delta=False)))
    if kind == entrymap.SIG_DELTA:
        block_len = extra["B"]
        if base is None or not base.has_signature or base.block_len != block_len:
            if not whole_chain:     # the levels below are not at hand
                return ManifestEntry(e, digest)
            raise errors.CorruptRecordError(
                f"signature delta of {e.path!r} has no basis of block length {block_len} in the level below")
        return ManifestEntry(e, digest, block_len=block_len, make=lambda: (
            sigdelta.apply(base.signature(), block_len, e.size, runs,
                           delta=True)))
    if e.kind == fsentry.KIND_FILE and base is not None and base.entry.kind == fsentry.KIND_FILE:
        # Stat-only record: the content (and so its signature) is unchanged.
        return base.stat_only(e, digest)
    return ManifestEntry(e, digest)


def _levelled(level: int, keyed: Iterator[tuple[bytes, tuple[Any, ...]]]
              ) -> Iterator[tuple[bytes, int, tuple[Any, ...]]]:
    """(key, level, record): a path is once in a level, so two are never
    compared past their level (``heapq.merge`` takes them as they are)."""
    for key, rec in keyed:
        yield key, level, rec


class Prior:
    """One path's entry in a chain's overlay, checked and built when used.

    ``fields()`` is its map as the chain leaves it (a change entry's keys
    over the map below), unchecked: a backup compares it with what the
    walk (or the digest helper) found and uses nothing from it but what a
    change entry leaves below, for a restore to check: its stat when the
    object is unchanged or only its metadata changed, its digest when a
    touched file holds the same content.  ``resolve()`` checks the maps of
    the path's levels (``entrymap.entry_from_map``) and builds its
    ManifestEntry; None when a change entry's level below is not at hand
    (``overlay``'s ``whole_chain``).  Both are made once.
    """

    __slots__ = ("path", "key", "map", "v4", "runs", "below", "whole_chain", "_fields", "_resolved")

    def __init__(self, key: bytes, rec: tuple[Any, ...], below: Prior | None, whole_chain: bool) -> None:
        _t, self.map, self.v4, self.runs = rec
        self.path: bytes = self.map["p"]
        self.key = key
        self.below = below          # the same path's entry one level down
        self.whole_chain = whole_chain
        self._fields: list[dict[str, Any] | None] = []
        self._resolved: list[ManifestEntry | None] = []

    def fields(self) -> dict[str, Any] | None:
        """The effective map (unchecked), or None if a change entry has no base of its kind."""
        if not self._fields:
            self._fields.append(self._merged())
        return self._fields[0]

    def _merged(self) -> dict[str, Any] | None:
        changes: list[dict[str, Any]] = []
        prior: Prior | None = self
        while prior is not None and prior.map.get("dm") is True:
            changes.append(prior.map)
            prior = prior.below
        if prior is None:
            return None
        m: dict[str, Any] = prior.map
        for change in reversed(changes):
            if change.get("k") != m.get("k"):
                return None
            m = {**m, **change}
        return m

    def signed(self) -> bool:
        """Whether ``resolve()`` gives an entry with a signature: said by the
        map when it holds one (a full signature, or over the whole chain a
        delta), else by ``resolve()``."""
        m = self.fields()
        if m is not None and (m.get("sg") == entrymap.SIG_FULL
                              or (m.get("sg") == entrymap.SIG_DELTA and self.whole_chain)):
            return True
        me = self.resolve()
        return me is not None and me.has_signature

    def resolve(self) -> ManifestEntry | None:
        if not self._resolved:
            chain: list[Prior] = []
            prior: Prior | None = self
            while prior is not None and not prior._resolved:
                chain.append(prior)
                prior = prior.below
            base = prior._resolved[0] if prior is not None else None
            for prior in reversed(chain):       # iterative: a chain may have many levels
                e, extra = entrymap.entry_from_map(prior.map, prior.v4)
                base = _to_entry((records.MANIFEST, e, extra, prior.runs), base, prior.whole_chain)
                prior._resolved.append(base)
        return self._resolved[0]


def overlay(paths: Sequence[str], cipher_factory: frames.CipherFactory = frames.null_cipher_for,
            whole_chain: bool = True,
            places: Sequence[place.Place | None] | None = None
            ) -> Iterator[ManifestEntry]:
    """The effective manifest of a chain: levels 0..N merged, later wins.

    ``whole_chain`` false: ``paths`` are only the top levels of a chain, so
    a signature delta over a level not given is no error; its file is left
    without a signature (the next level sends it whole).  ``places``: where
    the storage holds each manifest (checked, see ``read``).
    """
    for prior in overlay_lazy(paths, cipher_factory, whole_chain, places):
        me = prior.resolve()
        if me is not None:
            yield me


def overlay_lazy(paths: Sequence[str], cipher_factory: frames.CipherFactory = frames.null_cipher_for,
                 whole_chain: bool = True,
                 places: Sequence[place.Place | None] | None = None
                 ) -> Iterator[Prior]:
    """``overlay`` as ``Prior`` items, each checked when it is resolved.

    A path whose entry resolves to None (see ``Prior``) is one the chain
    does not hold for this purpose.
    """
    streams = [_read(path, cipher_factory, places[level] if places else None, None)
               for level, path in enumerate(paths)]
    merged = streams[0] if len(streams) == 1 else (
        (key, rec) for key, _level, rec in heapq.merge(*(_levelled(level, s) for level, s in enumerate(streams))))
    current_key = None
    current: Prior | None = None
    for key, rec in merged:
        if key != current_key:
            if current is not None:
                yield current
            current_key, current = key, None
        if rec[0] == records.TOMBSTONE:
            current = None
        else:
            current = Prior(key, rec, current, whole_chain)
    if current is not None:
        yield current
