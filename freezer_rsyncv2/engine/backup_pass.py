"""One backup level: merge the tree walk with the previous manifest, emit records.

The walk and the chain's effective manifest are both sorted by path, so they
are merged as two sorted streams.  Each entry is classified (new, changed,
metadata-only, unchanged, deleted); changed files are read once
(``file_reader``), feeding the whole-file digest, the next level's signature
and, when the previous level has a signature, the rsync matcher.  New large
files whose inode belonged to a deleted path are renames: they are held back
to the end of the pass and sent as deltas against the old path
(``prev_name``), which is deleted only after them.
"""

from __future__ import annotations

import collections
import itertools
import os
import tempfile
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import IO, Any

import msgpack
from oslo_log import log

from freezer_rsyncv2 import config as cfgmod
from freezer_rsyncv2 import digests
from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2 import manifest_writer as mw
from freezer_rsyncv2 import progress as prog
from freezer_rsyncv2 import threads
from freezer_rsyncv2.engine import chain_merge, digest_helper, file_reader
from freezer_rsyncv2.fs import entry as fsentry
from freezer_rsyncv2.fs import walk as fswalk
from freezer_rsyncv2.rsync import signature as rsig
from freezer_rsyncv2.stream import entrymap, place, records

LOG = log.getLogger(__name__)

RENAME_MIN = 64 * 1024          # smaller new files are not worth a rename search
RENAME_TRACK_MAX = 1 << 18      # deleted files a level remembers as rename sources (~40 MB)
RENAME_BATCH = 8192             # held files whose rename bases are looked up together
RENAME_BATCH_SIG = 32 << 20     # ... and the bytes of those bases' signatures
HOLD_LIMIT = 1 << 20            # record bytes held back per file (see _file)
WALK_AHEAD = 32768              # entries walked while the first manifest entry waits (~17 MB)
#: The keys whose values, with the kind, make an entry changed if they differ from its map below.
_STAT_KEYS = ("m", "u", "g", "un", "gn", "mt", "l", "rd", "h", "x")


_FILE_COUNTS = {"new": "files_new", "changed": "files_changed", "meta": "files_meta",
                "unchanged": "files_unchanged"}


#: Whether an entry has the values of its map below (unchecked) in ``_STAT_KEYS``; with the inode's too.
_same_stat = entrymap.same_values(_STAT_KEYS)
_same_inode_and_stat = entrymap.same_values(("ct", "i") + _STAT_KEYS)


class BackupPass:
    """Produces the record bytes of one level and fills its manifest."""

    def __init__(self, config: cfgmod.EngineConfig, root: str,
                 previous: Iterable[mf.Prior],
                 manifest: mw.ManifestWriter, level: int,
                 summary: prog.Summary,
                 progress: prog.Progress = prog.NULL,
                 rename_lookup: Callable[[set[bytes]], dict] | None = None,
                 where: place.Place | None = None,
                 read_range: file_reader.ReadRange | None = None) -> None:
        """``read_range``: replaces how file bytes are read (``file_reader.read_range``)."""
        self.config = config
        self.root = os.fsencode(root)
        self.previous = previous
        self.manifest = manifest
        self.level = level
        self.summary = summary
        self.progress = progress
        self.rename_lookup = rename_lookup
        self.where = where      # named in BEGIN (``stream.place``)
        self._rewritten: set[bytes] = set()
        self._absent: set[bytes] = set()    # files skipped with no old state
        self._deleted_inodes: dict[tuple[int, int], bytes] = {}
        self._untracked = False     # deleted files past RENAME_TRACK_MAX were not remembered
        # Both grow with the tree (new big files, deleted paths): past
        # SPILL_AFTER items they wait in temporary files, in walk order.
        self._held: Spilled = Spilled(entrymap.entry_map, lambda m: entrymap.entry_from_map(m)[0])
        self._deletes: Spilled = Spilled(bytes, bytes)
        self._deleted_dir: bytes | None = None    # removed at the end
        self._replaced_dir: bytes | None = None   # removed during the pass
        self._reader = file_reader.FileReader(config, self.root, summary, progress, self._warn, read_range)
        self._tickets: dict[bytes, int] = {}    # path -> the digest helper's ticket (_asked_ahead)
        self._offset = 0        # record bytes yielded so far: the next record's plaintext offset

    # -- the pass ---------------------------------------------------------
    def records(self) -> Iterator[bytes]:
        """The level's records; the manifest notes where each entry's start (its index)."""
        try:
            for rec in self._records():
                self._offset += len(rec)
                yield rec
        finally:
            self._reader.close()
            self._held.close()
            self._deletes.close()

    def _records(self) -> Iterator[bytes]:
        begin = self.where.fields() if self.where is not None \
            else {place.LEVEL: self.level}
        yield records.begin({**begin, "dg": digests.DEFAULT})
        prev = iter(self.previous)
        walker, found = fswalk.start(self.root, exclude=self.config.exclude,
                                     dereference=self.config.dereference,
                                     on_warning=self._warn,
                                     hardlinks=not self.config.hardlinks_as_copies)
        # The first manifest entry may wait for the key derivation: walk
        # meanwhile (the walk needs no key).
        old, walked = threads.first_while(prev, found, WALK_AHEAD)
        for f, match, unchanged in self._asked_ahead(chain_merge.matched(itertools.chain(walked, found), old, prev)):
            if f is None:
                assert match is not None
                self._deleted(match)
                continue
            ticket = self._tickets.pop(f.path, None) if self._tickets else None
            if unchanged:
                self._status(f.kind, f.path, "unchanged")
                continue
            e = walker.make_entry(f)
            if e is None:               # the walk skipped it, with a warning
                if match is not None:
                    self._deleted(match)
                continue
            yield from self._entry(e, match, ticket)
        yield from self._renames()
        for path in self._deletes:
            yield records.delete(path)
        yield records.end({"entries": self.summary.entries,
                           "deleted": self.summary.entries_deleted})

    def _asked_ahead(self, items: Iterator[chain_merge.Matched]) -> Iterator[chain_merge.Matched]:
        """``items``, ``digest_helper.READ_AHEAD`` late: each file the pass will check for
        its content below (``chain_merge.precheck``) is asked of the digest helper as it passes."""
        window: collections.deque[chain_merge.Matched] = collections.deque()
        for item in items:
            f, match, unchanged = item
            if f is not None and match is not None and not unchanged and chain_merge.precheck(f, match):
                ticket = self._reader.ask(f.abspath)
                if ticket is None:
                    yield from window
                    yield item
                    yield from items        # the helper is out of use
                    return
                self._tickets[f.path] = ticket
            window.append(item)
            if len(window) > digest_helper.READ_AHEAD:
                yield window.popleft()
        yield from window

    def _warn(self, path: bytes, message: str) -> None:
        warning = prog.EntryWarning(path, message, fswalk.show_path(path))
        LOG.warning("%s", warning)
        self.summary.add_warning(warning)
        self.progress.warning(path, message)

    def _deleted(self, prior: mf.Prior) -> None:
        old = prior.resolve()
        if old is None:
            return      # not in the chain as far as this level knows it
        path = old.entry.path
        self.manifest.tombstone(path)
        self.summary.entries_deleted += 1
        self.progress.entry(path, "deleted")
        if _under(path, self._replaced_dir):
            return      # gone with the directory a new entry replaced
        if not _under(path, self._deleted_dir):
            self._deletes.append(path)  # a deleted directory goes as a whole
            if old.entry.kind == fsentry.KIND_DIR:
                self._deleted_dir = path
        if old.entry.kind == fsentry.KIND_FILE and old.has_signature \
                and old.entry.size >= RENAME_MIN:
            if len(self._deleted_inodes) < RENAME_TRACK_MAX:
                self._deleted_inodes[(old.entry.dev, old.entry.ino)] = path
            elif not self._untracked:
                self._untracked = True
                LOG.info("more than %d deleted files of %d bytes or more: the others' new names, "
                         "if they were renamed, are stored whole", RENAME_TRACK_MAX, RENAME_MIN)

    def _entry(self, e: fsentry.Entry, match: mf.Prior | None, ticket: int | None = None
               ) -> Iterator[bytes]:
        """``e`` against its path's entry below, ``match``: compared with its map (``Prior.fields``),
        resolved only when its content is used (a file's delta basis)."""
        below = match.fields() if match is not None else None
        kind_below = below.get("k") if below is not None else None
        if kind_below == fsentry.KIND_DIR and e.kind != fsentry.KIND_DIR:
            self._replaced_dir = e.path  # restore replaces the whole tree
        if e.kind == fsentry.KIND_FILE:
            yield from self._file(e, match, below, ticket)
            return
        if e.kind == fsentry.KIND_HARDLINK:
            if e.hardlink_to in self._absent:
                self._warn(e.path, "skipped, it links to a file that could not be read")
                return
            changed = (below is None or kind_below != e.kind
                       or not _same_stat(e, below)
                       or e.hardlink_to in self._rewritten)
        else:
            changed = below is None or kind_below != e.kind or not _same_stat(e, below)
        if changed:
            self.manifest.add(mf.ManifestEntry(e), at=self._offset, below=below)
            self._status(e.kind, e.path, "new" if below is None else "changed")
            yield records.entry(e, data=entrymap.DATA_NONE)
        else:
            self._status(e.kind, e.path, "unchanged")

    def _status(self, kind: str, path: bytes, status: str) -> None:
        """Count an entry whose outcome is known (a skipped one never is) and report it."""
        self.summary.entries += 1
        if kind == fsentry.KIND_FILE:
            attr = _FILE_COUNTS[status]
            setattr(self.summary, attr, getattr(self.summary, attr) + 1)
        self.progress.entry(path, status)

    # -- regular files ----------------------------------------------------
    def _file(self, e: fsentry.Entry, match: mf.Prior | None, below: dict[str, Any] | None,
              ticket: int | None = None) -> Iterator[bytes]:
        """A regular file: ``below`` is its path's map below (any kind), ``match`` its entry."""
        if below is not None and below.get("k") == fsentry.KIND_FILE:
            if below.get("s") == e.size and below.get("mt") == e.mtime_ns:
                # rsync's quick check: same size and mtime means same content.
                if _same_inode_and_stat(e, below):
                    self._status(e.kind, e.path, "unchanged")
                    return
                yield from self._meta(e, below)
                return
            assert match is not None
            touched = self._reader.touched(e, below, ticket, match.signed)
            if touched is not None:     # the digest helper found the content below
                yield from self._meta(touched, below)
                return
            old = match.resolve()
            prior = old if old is not None and old.entry.kind == fsentry.KIND_FILE else None
            yield from self._send_file(e, prior, below)
            return
        if below is None and self.level > 0 and e.size >= RENAME_MIN:
            self._held.append(e)    # maybe a rename: decided after the walk
            return
        yield from self._send_file(e, None, below)

    def _meta(self, e: fsentry.Entry, below: dict[str, Any], late: bool = False, at: int | None = None
              ) -> Iterator[bytes]:
        """A file whose content is the one below: its metadata only."""
        self.manifest.add(mf.ManifestEntry(e), late=late, at=self._offset if at is None else at, below=below)
        self._status(e.kind, e.path, "meta")
        yield records.entry(e, data=entrymap.DATA_META)

    def _send_file(self, e: fsentry.Entry, prior: mf.ManifestEntry | None, below: dict[str, Any] | None,
                   prev_name: bytes | None = None, late: bool = False) -> Iterator[bytes]:
        """Read the file once; hold its records back while they are small, so
        an unchanged content (touched file) becomes a metadata-only record.

        ``prior``: the file's entry below (or a rename's old path's); its
        signature, if it has one, is the delta's basis.  ``below``: the
        path's map below (any kind), None for a new path."""
        basis = prior if prior is not None and prior.has_signature else None
        start = self._offset
        same_path = below if prev_name is None and below is not None and below.get("k") == fsentry.KIND_FILE else None
        read = self._reader.read(e, basis, prev_name, same_path)
        held: list[bytes] = []
        passed_on = yield from _hold_back(read.pieces(), held)
        result = read.result
        if result.skipped is not None:
            # Not readable: no record, so the chain keeps its old state.
            self._warn(e.path, f"skipped, {result.skipped}")
            if below is None:
                self._absent.add(e.path)
            return
        if result.changed:
            self._warn(e.path, "changed while being read; stored what was read, will be read again next time")
        if not passed_on and same_path is not None and _same_content(result, same_path):
            # The digest is the one below: the entry inherits it.
            yield from self._meta(result.entry, same_path, late, start)
            return
        yield from held
        # Counted once stored: a touched file's records were dropped above.
        self.summary.literal_bytes += result.literal_bytes
        self.summary.copied_bytes += result.copied_bytes
        if e.nlink > 1:     # only a file with links can be a hardlink's target
            self._rewritten.add(e.path)
        # Over the same path's signature, only the blocks that changed
        # are stored (a rename's basis is another path: stored whole).
        delta_basis = basis if prev_name is None else None
        self.manifest.add(mf.ManifestEntry(result.entry, result.digest, result.signature), late=late,
                          basis=delta_basis.signature() if delta_basis is not None else None, at=start,
                          data=entrymap.DATA_FULL if basis is None else entrymap.DATA_DELTA, prev_name=prev_name)
        self._status(e.kind, e.path, "new" if below is None else "changed")

    # -- renames ----------------------------------------------------------
    def _renames(self) -> Iterator[bytes]:
        """The held files, in walk order: a rename's as a delta over its old path's content.

        The old paths' entries (their signatures) are looked up for a batch
        of held files at a time (``_rename_batches``), so a level renaming a
        whole tree holds a bounded share of their signatures at once."""
        for batch in self._rename_batches():
            pairs: dict[bytes, bytes] = {}       # new path -> old path
            for e in batch:
                old_path = self._deleted_inodes.get((e.dev, e.ino))
                if old_path is not None:
                    pairs[e.path] = old_path
            bases = {}
            if pairs and self.rename_lookup is not None:
                bases = self.rename_lookup(set(pairs.values()))
            for e in batch:
                old_path = pairs.get(e.path)
                basis = bases.pop(old_path, None) if old_path else None
                yield from self._send_file(e, basis, None, late=True,
                                           prev_name=old_path if basis else None)

    def _rename_batches(self) -> Iterator[list[fsentry.Entry]]:
        """The held files in walk order, in lists of at most ``RENAME_BATCH`` files whose
        signatures come to about ``RENAME_BATCH_SIG`` bytes at most."""
        batch: list[fsentry.Entry] = []
        sig_bytes = 0
        for e in self._held:
            batch.append(e)
            sig_bytes += e.size // rsig.block_size_for(e.size) * (records.WEAK_LEN + records.STRONG_LEN)
            if len(batch) >= RENAME_BATCH or sig_bytes >= RENAME_BATCH_SIG:
                yield batch
                batch, sig_bytes = [], 0
        if batch:
            yield batch


#: Items a ``Spilled`` list keeps in memory before it writes them to a temporary file.
SPILL_AFTER = 4096


class Spilled:
    """A list that is appended to, then read in order, any number of times.

    Past ``SPILL_AFTER`` items they go to a temporary file (msgpack, through
    ``pack`` and back through ``unpack``), so that a level adding or
    deleting a million paths holds a few thousand at a time.
    """

    def __init__(self, pack: Callable[[Any], Any], unpack: Callable[[Any], Any]) -> None:
        self._pack, self._unpack = pack, unpack
        self._items: list[Any] = []
        self._file: IO[bytes] | None = None
        self._count = 0

    def append(self, item: Any) -> None:
        self._items.append(item)
        self._count += 1
        if len(self._items) >= SPILL_AFTER:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="rsyncv2-spill-")
            self._file.seek(0, os.SEEK_END)
            self._file.write(b"".join(records.pack(self._pack(x)) for x in self._items))
            self._items = []

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Any]:
        if self._file is not None:
            self._file.seek(0)
            for obj in msgpack.Unpacker(self._file, raw=False, strict_map_key=False, max_buffer_size=64 << 20):
                yield self._unpack(obj)
        yield from list(self._items)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _hold_back(pieces: Iterator[bytes], held: list[bytes]) -> Generator[bytes, None, bool]:
    """Keep ``pieces`` in ``held`` up to HOLD_LIMIT bytes; past it, pass them all on.

    Returns whether they were passed on (else they are all in ``held``).
    """
    size = 0
    for piece in pieces:
        held.append(piece)
        size += len(piece)
        if size > HOLD_LIMIT:
            yield from held
            held.clear()
            yield from pieces
            return True
    return False


def _same_content(result: file_reader.ReadResult, below: dict[str, Any]) -> bool:
    """Whether a complete read found the content of the map ``below`` again (a touched file)."""
    return (not result.changed and below.get("dg") is not None
            and result.digest == below["dg"] and result.entry.size == below.get("s"))


def _under(path: bytes, top: bytes | None) -> bool:
    return top is not None and path.startswith(top + b"/")
