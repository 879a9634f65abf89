"""Writing one level's manifest (``manifest`` reads them): entries in sort
order, their signatures as full runs or deltas over the level below, paths
prefix-coded, and the level's frame table (its index) at the end."""

from __future__ import annotations

import heapq
import itertools
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import msgpack

from freezer_rsyncv2.fs.walk import sort_key
from freezer_rsyncv2.manifest import READ_CHUNK, ManifestEntry
from freezer_rsyncv2.rsync import sigdelta
from freezer_rsyncv2.rsync import signature as rsig
from freezer_rsyncv2.stream import compression, encoder, entrymap, frames, place, records


class ManifestWriter:
    """Writes one level's manifest; records must arrive in sort order.

    Records go to a spill file as they come (bounded memory), in their final
    form (paths prefix-coded); ``late`` records (files decided after the
    main pass, in sort order among themselves) go to a second one, merged
    in by ``close``, which then codes the paths again in their final order.  An entry with a
    signature is one MANIFEST record followed by its SIGBLOCKS (and, for a
    delta, SIGZERO) records, each under the record size cap.  ``frames``,
    set before ``close`` by whoever encoded the level's data, is written as
    FRAMES records: the index a partial restore reads the data by.
    """

    def __init__(self, path: str, codec: compression.Codec, cipher: frames.Cipher | None = None,
                 level: int = 0, where: place.Place | None = None) -> None:
        self._path = path
        self._codec = codec
        self._cipher = cipher
        self._begin = where.fields() if where is not None else {place.LEVEL: level}
        self._spill = _Spill(os.path.dirname(os.path.abspath(path)))
        self._late: _Spill | None = None      # made by the first late record
        self.count = 0
        self.frames: frames.FrameTable | None = None

    def _record(self, path: bytes, fields: dict[str, Any] | None, packed: list[bytes], late: bool) -> None:
        """One entry: its map (None: a tombstone) without ``p``, then its signature records."""
        self.count += 1
        spill = self._spill
        if late:
            if self._late is None:
                self._late = _Spill(self._spill.folder)
            spill = self._late
        spill.write(path, fields, packed)

    def add(self, me: ManifestEntry, late: bool = False, basis: rsig.Signature | None = None,
            at: int | None = None, data: str | None = None, below: Mapping[str, Any] | None = None,
            prev_name: bytes | None = None) -> None:
        """Record ``me``; with its signature if it has one.

        ``basis``: the signature of this path's entry in the chain below;
        when it has the same block length only the blocks that differ
        from it are stored (a delta), else the whole signature.  ``at``:
        where the entry's records start in the level's data plaintext;
        ``data``: how a file's content travelled there (``entrymap.DATA_FULL``
        or ``DATA_DELTA``, against ``prev_name`` for a rename).  ``below``:
        the path's map in the chain below (``manifest.Prior.fields``,
        unchecked); an entry without a signature is then written as its
        changes over it (``entrymap.change_map``).  New content (``data`` given)
        without a signature is written as such (``entrymap.SIG_NONE``).
        """
        extra: dict[str, Any] = {} if at is None else {"o": at}
        if data is not None and not me.has_signature:       # new content, no signature
            fields = entrymap.entry_map(me.entry, {"dg": me.digest, "sg": entrymap.SIG_NONE, "da": data,
                                                   "pn": prev_name, **extra})
            del fields["p"]
            self._record(me.entry.path, fields, [], late)
            return
        if not me.has_signature:
            changes = entrymap.change_map(me.entry, below) if below is not None else None
            fields = entrymap.entry_map(me.entry) if changes is None else changes
            if me.digest is not None:
                fields["dg"] = me.digest
            fields.update(extra)
            del fields["p"]
            self._record(me.entry.path, fields, [], late)
            return
        sig = me.signature()
        if basis is not None and basis.block_len == sig.block_len:
            kind, runs = entrymap.SIG_DELTA, sigdelta.diff(basis, sig, records.MAX_SIG_RUN)
        else:
            kind, runs = entrymap.SIG_FULL, sigdelta.runs(sig, records.MAX_SIG_RUN)
        if data is not None:
            extra["da"] = data
        if prev_name is not None:
            extra["pn"] = prev_name
        fields = entrymap.entry_map(me.entry, {"dg": me.digest, "B": sig.block_len, "sg": kind, **extra})
        del fields["p"]
        packed = []
        for run in runs:
            if run.weak is None or run.strong is None:       # zero blocks: both None
                packed.append(records.sig_zero(run.first, run.count))
            else:
                packed.append(records.sig_blocks(run.first, run.weak, run.strong))
        self._record(me.entry.path, fields, packed, late)

    def tombstone(self, path: bytes) -> None:
        self._record(path, None, [], False)

    def _merged(self) -> Iterator[bytes]:
        """The records in their final order: the spill as it is, or with the late ones merged in."""
        if self._late is None:
            yield from self._spill.chunks()
            return
        last = b""
        for _key, (path, fields, packed) in heapq.merge(self._spill.entries(), self._late.entries(),
                                                        key=lambda i: i[0]):
            yield _coded(path, fields, last)
            last = path
            yield from packed

    def close(self) -> int:
        """Encode everything to the manifest path; returns its size."""
        enc = encoder.StreamEncoder(frames.KIND_MANIFEST, self._codec, self._cipher)
        tmp = self._path + ".tmp"
        table = self.frames
        tail = [] if table is None else list(records.frame_runs(table.header_len, table.stored, table.plain))
        with open(tmp, "wb") as out:
            for piece in enc.write(records.begin(self._begin)):
                out.write(piece)
            for packed in itertools.chain(self._merged(), tail):
                for piece in enc.write(packed):
                    out.write(piece)
            for piece in enc.write(records.end({"entries": self.count})):
                out.write(piece)
            for piece in enc.close():
                out.write(piece)
        self._spill.close()
        if self._late is not None:
            self._late.close()
        os.replace(tmp, self._path)
        return os.path.getsize(self._path)


class _Spill:
    """A temporary file of manifest records in sort order, in their final form."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._file = tempfile.TemporaryFile(dir=folder)
        self._last_key: bytes | None = None
        self._last_path = b""

    def write(self, path: bytes, fields: dict[str, Any] | None, packed: list[bytes]) -> None:
        key = sort_key(path)
        if self._last_key is not None and key <= self._last_key:
            raise ValueError(f"manifest records out of order at {path!r}")
        self._last_key = key
        self._file.write(_coded(path, fields, self._last_path))
        self._last_path = path
        for piece in packed:
            self._file.write(piece)

    def chunks(self) -> Iterator[bytes]:
        self._file.seek(0)
        while chunk := self._file.read(READ_CHUNK):
            yield chunk

    def entries(self) -> Iterator[tuple[bytes, list[Any]]]:
        """(key, [path, fields, packed signature records]) of each entry, in order."""
        self._file.seek(0)
        unpacker = msgpack.Unpacker(self._file, raw=False, strict_map_key=False, max_buffer_size=64 << 20)
        entry: list[Any] | None = None
        last = b""
        for rec in unpacker:
            if rec[0] in (records.SIGBLOCKS, records.SIGZERO):
                if entry is None:
                    raise RuntimeError("manifest spill: signature records before any entry")
                entry[2].append(records.pack(rec))
                continue
            if entry is not None:
                yield sort_key(entry[0]), entry
            if rec[0] == records.TOMBSTONE:
                entry = [rec[1], None, []]
            else:
                fields = rec[1]
                path = last[:fields.pop("pp", 0)] + fields.pop("p")
                entry = [path, fields, []]
            last = entry[0]
        if entry is not None:
            yield sort_key(entry[0]), entry

    def close(self) -> None:
        self._file.close()


def _coded(path: bytes, fields: dict[str, Any] | None, last: bytes) -> bytes:
    """The record of an entry (``fields`` without ``p``; None: a tombstone), its path
    coded as the bytes it shares with ``last``, the path of the record before."""
    if fields is None:
        return records.tombstone(path)
    shared = _shared(last, path)
    if shared:
        return records.pack([records.MANIFEST, {"pp": shared, "p": path[shared:], **fields}])
    return records.pack([records.MANIFEST, {"p": path, **fields}])


def _shared(a: bytes, b: bytes) -> int:
    """Bytes ``b`` shares with ``a`` at their start (at most 255: one msgpack byte)."""
    n = min(len(a), len(b), 255)
    # The first differing byte is the highest set bit of the two heads XORed (big-endian).
    differ = int.from_bytes(a[:n], "big") ^ int.from_bytes(b[:n], "big")
    return n - (differ.bit_length() + 7) // 8
