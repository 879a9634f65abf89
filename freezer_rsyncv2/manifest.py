"""Engine metadata: per-level delta manifests, sorted by path, and their overlay.

A level's manifest holds only what changed at that level: full entries (with
the file's signature and digest) for new or rewritten files, stat-only
entries (no signature: inherit it) for metadata changes, and tombstones for
deletions.  Every manifest is sorted by ``sort_key(path)`` so the overlay of a
chain and the tree walk merge as sorted streams with bounded memory.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator

import msgpack

from freezer_rsyncv2 import errors
from freezer_rsyncv2.fs import entry as fsentry
from freezer_rsyncv2.rsync import signature as rsig
from freezer_rsyncv2.stream import compression, encoder, frames, records

READ_CHUNK = 1 << 20


def sort_key(path: bytes) -> list[bytes]:
    """Tree order: by path components, so a directory precedes its children."""
    return path.split(b"/")


@dataclasses.dataclass
class ManifestEntry:
    """One path's state at some level: its entry and, for files, signature."""

    entry: fsentry.Entry
    digest: bytes | None = None
    block_len: int = 0
    weak: bytes | None = None
    strong: bytes | None = None

    @property
    def has_signature(self) -> bool:
        return self.weak is not None

    def signature(self) -> rsig.Signature:
        return rsig.Signature.from_bytes(
            self.block_len, self.entry.size, self.weak, self.strong)


class ManifestWriter:
    """Writes one level's manifest; records must arrive in sort order.

    Records go to a spill file as they come (bounded memory); ``late`` records
    (files decided after the main pass) are merged in by ``close``.
    """

    def __init__(self, path: str, codec: compression.Codec, cipher=None,
                 level: int = 0) -> None:
        self._path = path
        self._codec = codec
        self._cipher = cipher
        self._level = level
        self._spill = tempfile.TemporaryFile(
            dir=os.path.dirname(os.path.abspath(path)))
        self._late: list[tuple[list[bytes], bytes]] = []
        self._last: list[bytes] | None = None
        self.count = 0

    def _record(self, path: bytes, packed: bytes, late: bool) -> None:
        key = sort_key(path)
        self.count += 1
        if late:
            self._late.append((key, packed))
            return
        if self._last is not None and key <= self._last:
            raise ValueError("manifest records out of order at %r" % path)
        self._last = key
        self._spill.write(records.pack([path, packed]))

    def add(self, me: ManifestEntry, late: bool = False) -> None:
        extra = {}
        if me.has_signature:
            extra = {"dg": me.digest, "B": me.block_len, "w": me.weak,
                     "S": me.strong}
        elif me.digest is not None:
            extra = {"dg": me.digest}
        self._record(me.entry.path, records.manifest(me.entry, **extra), late)

    def tombstone(self, path: bytes) -> None:
        self._record(path, records.tombstone(path), False)

    def _merged(self) -> Iterator[bytes]:
        self._spill.seek(0)
        unpacker = msgpack.Unpacker(self._spill, raw=False,
                                    strict_map_key=False,
                                    max_buffer_size=64 << 20)
        main = ((sort_key(path), packed) for path, packed in unpacker)
        late = sorted(self._late, key=lambda item: item[0])
        for _key, packed in heapq.merge(main, late, key=lambda i: i[0]):
            yield packed

    def close(self) -> int:
        """Encode everything to the manifest path; returns its size."""
        enc = encoder.StreamEncoder(frames.KIND_MANIFEST, self._codec,
                                    self._cipher)
        tmp = self._path + ".tmp"
        with open(tmp, "wb") as out:
            for piece in enc.write(records.begin({"level": self._level})):
                out.write(piece)
            for packed in self._merged():
                for piece in enc.write(packed):
                    out.write(piece)
            for piece in enc.write(records.end({"entries": self.count})):
                out.write(piece)
            for piece in enc.close():
                out.write(piece)
        self._spill.close()
        os.replace(tmp, self._path)
        return os.path.getsize(self._path)


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while True:
            chunk = f.read(READ_CHUNK)
            if not chunk:
                return
            yield chunk


def read(path: str, cipher_factory: Callable = frames.null_cipher_for
         ) -> Iterator[tuple]:
    """Yield one manifest's records: (MANIFEST, Entry, extra) or (TOMBSTONE, path)."""
    plain = frames.decode_frames(_file_chunks(path), frames.KIND_MANIFEST,
                                 cipher_factory)
    last = None
    for rec in records.decode(plain):
        if rec[0] == records.MANIFEST:
            path_ = rec[1].path
        elif rec[0] == records.TOMBSTONE:
            path_ = rec[1]
        elif rec[0] in (records.BEGIN, records.END):
            continue
        else:
            raise errors.CorruptRecordError(
                "%s record in a manifest" % records.NAMES[rec[0]])
        key = sort_key(path_)
        if last is not None and key <= last:
            raise errors.CorruptRecordError(
                "manifest %s is not sorted at %r" % (path, path_))
        last = key
        yield rec


def _to_entry(rec: tuple, base: ManifestEntry | None) -> ManifestEntry:
    _t, e, extra = rec
    if "w" in extra:
        return ManifestEntry(e, extra.get("dg"), extra.get("B", 0),
                             extra["w"], extra.get("S", b""))
    if e.kind == fsentry.KIND_FILE and base is not None \
            and base.entry.kind == fsentry.KIND_FILE:
        # Stat-only record: the content (and so its signature) is unchanged.
        return ManifestEntry(e, extra.get("dg", base.digest), base.block_len,
                             base.weak, base.strong)
    return ManifestEntry(e, extra.get("dg"))


def overlay(paths: Iterable[str], cipher_factory: Callable = frames.null_cipher_for
            ) -> Iterator[ManifestEntry]:
    """The effective manifest of a chain: levels 0..N merged, later wins."""
    streams = []
    for level, path in enumerate(paths):
        streams.append(((sort_key(r[1].path if r[0] == records.MANIFEST
                                  else r[1]), level, r)
                        for r in read(path, cipher_factory)))
    current_key = None
    current: ManifestEntry | None = None
    for key, _level, rec in heapq.merge(*streams, key=lambda i: (i[0], i[1])):
        if key != current_key:
            if current is not None:
                yield current
            current_key, current = key, None
        if rec[0] == records.TOMBSTONE:
            current = None
        else:
            current = _to_entry(rec, current)
    if current is not None:
        yield current
