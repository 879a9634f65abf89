"""Partial restore: the paths matching ``--include`` patterns, reading only what they need.

A plan is made from the chain's manifests alone (``plan``), from the top
level down: a path whose level wrote its whole content (or a directory, a
link...) needs nothing below it; a delta needs its basis (the same path, or
the old path of a rename) at the level below; a metadata-only change or no
change at all needs the path itself below.  Each level is then replayed
with only the records of the paths planned there (``level_records``).

Version-4 manifests carry an index (``docs/format.rst``, "Index"): where
each entry's records start in the level's data plaintext, and where each
frame lies in the stored object.  An indexed level is read with ranged
reads of just the frames that hold those records; a level without an index
(written by an older version) is read whole and filtered.
"""

from __future__ import annotations

import array
import bisect
import dataclasses
import fnmatch
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from oslo_log import log

from freezer_rsyncv2 import errors
from freezer_rsyncv2 import interrupt
from freezer_rsyncv2 import inventory
from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2.engine import base
from freezer_rsyncv2.fs import entry as fsentry
from freezer_rsyncv2.stream import entrymap, frames, place, records

LOG = log.getLogger(__name__)

#: Plaintext ``[start, end)`` of one entry's records and its path (None: BEGIN's).
Span = tuple[int, int, "bytes | None"]

#: Frames between two needed ones that are read rather than skipped with a new request.
_GAP = 1 << 20


class NothingSelectedError(errors.ConfigError):
    """No path of the backup matches the ``--include`` patterns."""


@dataclasses.dataclass
class Restored:
    """What a partial restore did: the level restored and the paths written (matches and their parents)."""

    level: int
    paths: int


@dataclasses.dataclass
class LevelPlan:
    """What one level contributes: ``take`` path -> its records' plaintext offset
    (None: the level has no index), ``deletes`` the old paths of renames it
    consumes, ``offsets`` every entry's offset in the level (sorted: where
    each entry's records end), ``table`` its frames (None: no index)."""

    take: dict[bytes, int | None]
    deletes: list[bytes]
    offsets: array.array
    table: frames.FrameTable | None

    @property
    def indexed(self) -> bool:
        return self.table is not None and all(o is not None for o in self.take.values())


def matcher(patterns: Sequence[str]) -> Any:
    """A test of a stored path: it, or a directory above it, matches one of ``patterns``.

    A pattern is a path relative to the backed-up root or a glob
    (``fnmatch``: ``*`` also crosses ``/``), as a user writes it
    (``./a/b/`` is ``a/b``).
    """
    pats = [inventory.path_filter(p) for p in patterns]
    if not pats or any(not p for p in pats):
        raise errors.ConfigError("--include needs a path or a pattern below the backed-up root")

    def match(path: bytes) -> bool:
        parts = path.split(b"/")
        for n in range(1, len(parts) + 1):
            head = b"/".join(parts[:n])
            if any(head == p or fnmatch.fnmatchcase(head, p) for p in pats):
                return True
        return False
    return match


def selection(entries: Iterable[mf.ManifestEntry], patterns: Sequence[str]) -> set[bytes]:
    """The paths a partial restore writes: the matches, the directories above
    them, and the targets of hardlinks among them (a link needs its file)."""
    match = matcher(patterns)
    chosen: set[bytes] = set()
    for me in entries:
        if match(me.entry.path):
            chosen.add(me.entry.path)
            if me.entry.kind == fsentry.KIND_HARDLINK and me.entry.hardlink_to:
                chosen.add(me.entry.hardlink_to)
    if not chosen:
        raise NothingSelectedError(f"no path of the backup matches {', '.join(patterns)}")
    for path in list(chosen):
        parts = path.split(b"/")
        chosen.update(b"/".join(parts[:n]) for n in range(1, len(parts)))
    return chosen


def plan(tree: inventory.Tree, wanted: set[bytes]) -> list[LevelPlan]:
    """What each level of ``tree`` must replay so that ``wanted`` ends up as at its top level."""
    plans: list[LevelPlan | None] = [None] * len(tree.levels)
    need = set(wanted)          # paths whose state at the end of this level is needed
    for level in range(len(tree.levels) - 1, -1, -1):
        take: dict[bytes, int | None] = {}
        below: set[bytes] = set()
        deletes: list[bytes] = []
        offsets = array.array("q")
        tables: list[frames.FrameTable] = []
        tombstones: list[bytes] = []
        unsaid = False          # an older level's content record: full, delta or rename?
        where = place.Place.of(tree.levels[level])
        for rec in mf.read(tree.manifests[level], tree.cipher_factory, where, index=tables):
            if rec[0] == records.TOMBSTONE:
                if rec[1] in need:
                    raise errors.CorruptRecordError(
                        f"level {level} deletes {rec[1]!r}, which a later level keeps unchanged")
                tombstones.append(rec[1])
                continue
            _t, e, extra, _runs = rec
            if "o" in extra:
                offsets.append(extra["o"])
            if e.path not in need:
                continue
            take[e.path] = extra.get("o")
            if e.kind != fsentry.KIND_FILE:
                continue            # the entry alone makes it
            if "sg" not in extra:
                below.add(e.path)   # metadata only: the content is below
            elif "da" not in extra:
                # Versions 1 to 3 do not say whether the content went whole,
                # as a delta or as a rename's delta: the path itself may be
                # needed below (absent there, it costs nothing), and so may
                # any path this level deleted (a rename's old path is one).
                below.add(e.path)
                unsaid = True
            elif extra["da"] == entrymap.DATA_DELTA:
                basis = extra.get("pn", e.path)
                below.add(basis)
                if basis != e.path:
                    deletes.append(basis)
        if unsaid:
            below.update(tombstones)
            deletes.extend(tombstones)
        below.update(p for p in need if p not in take)
        plans[level] = LevelPlan(take, deletes, array.array("q", sorted(offsets)), tables[0] if tables else None)
        need = below
    return [p for p in plans if p is not None]


def restore(engine: Any, name: str, restore_path: str, patterns: Sequence[str], date: int | None = None,
            overwrite: bool = False) -> Restored:
    """Restore the paths of ``name`` (as at ``date``) matching ``patterns`` into restore_path.

    NothingSelectedError when nothing matches; the restore directory is
    then left as it was.
    """
    with interrupt.handling(), inventory.tree_at(engine, name, date) as tree:
        wanted = selection(tree.entries(), patterns)
        plans = plan(tree, wanted)
        base.prepare_restore_dir(restore_path, overwrite)
        with engine.restore_session(restore_path):
            for backup, level_plan in zip(tree.levels, plans):
                if not level_plan.take and not level_plan.deletes:
                    continue
                LOG.info("Restoring %d paths of %s level %d", len(level_plan.take), name, backup.level)
                info: dict[str, int] = {}
                recs = level_records(engine.storage, backup, level_plan, tree.cipher_factory, info)
                engine.apply_records(restore_path, backup, recs, info)
        return Restored(int(tree.top.level), len(wanted))


def level_records(storage: Any, backup: Any, level_plan: LevelPlan, cipher_factory: Any, info: dict[str, int]
                  ) -> Iterator[tuple[Any, ...]]:
    """The records of one level a partial restore applies: BEGIN, the planned
    entries with their data, DELETE of the renames' old paths, END.

    ``storage``: the engine's (``storage.protocol.EngineStorage``), for
    ranged reads of an indexed level; an older level is read whole from
    the storage that holds it (``backup.storage``)."""
    if level_plan.indexed:
        recs = _indexed(storage, backup, level_plan, cipher_factory, info)
    else:
        plain = frames.decode_frames(backup.storage.backup_blocks(backup), frames.KIND_DATA, cipher_factory, info)
        recs = records.decode(plain, info)
    return _only(recs, level_plan, backup.level)


def _only(recs: Iterable[tuple[Any, ...]], level_plan: LevelPlan, level: int) -> Iterator[tuple[Any, ...]]:
    """BEGIN, the records of the planned entries (in stream order), the DELETEs, END."""
    seen: set[bytes] = set()
    keep = False
    for rec in recs:
        rtype = rec[0]
        if rtype == records.BEGIN:
            yield rec
        elif rtype == records.ENTRY:
            keep = rec[1].path in level_plan.take
            if keep:
                seen.add(rec[1].path)
                yield rec
        elif rtype in (records.DELETE, records.END):
            break
        elif keep:
            yield rec
    missing = [p for p in level_plan.take if p not in seen]
    if missing:
        raise errors.CorruptRecordError(
            f"the data of level {level} lacks {missing[0]!r}, which its manifest lists")
    for path in level_plan.deletes:
        yield (records.DELETE, path)
    yield (records.END, {})


def _indexed(storage: Any, backup: Any, level_plan: LevelPlan, cipher_factory: Any, info: dict[str, int]
             ) -> Iterator[tuple[Any, ...]]:
    """BEGIN and the planned entries' records, from ranged reads of the frames holding them."""
    table = level_plan.table
    assert table is not None
    header = b"".join(storage.read_data(backup, 0, table.header_len))
    if len(header) != table.header_len:
        raise errors.TruncatedError(f"the data of level {backup.level} ends inside its header")
    offsets = level_plan.offsets
    total = table.plain_size
    spans: list[Span] = [(0, offsets[0] if offsets else total, None)]    # BEGIN
    for path, at in sorted(level_plan.take.items(), key=lambda item: item[1] or 0):
        assert at is not None
        i = bisect.bisect_right(offsets, at)
        spans.append((at, offsets[i] if i < len(offsets) else total, path))
    for run in _runs(table, spans):
        yield from _run_records(storage, backup, table, header, run, cipher_factory, info)


def _runs(table: frames.FrameTable, spans: list[Span]
          ) -> Iterator[list[Span]]:
    """Spans grouped into runs of frames read with one request (close ones share it)."""
    run: list[Span] = []
    run_end = -1
    for span in spans:
        first, _plain_at, stored_at, stored_len = table.span(span[0], span[1])
        if run and stored_at > run_end + _GAP:
            yield run
            run = []
        run.append(span)
        run_end = max(run_end, stored_at + stored_len)
    if run:
        yield run


def _run_records(storage: Any, backup: Any, table: frames.FrameTable, header: bytes, run: list[Span],
                 cipher_factory: Any, info: dict[str, int]) -> Iterator[tuple[Any, ...]]:
    first, plain_at, stored_at, _len = table.span(run[0][0], run[0][1])
    last_end = max(end for _s, end, _p in run)
    _f, _p, last_at, last_len = table.span(last_end - 1, last_end)
    chunks = storage.read_data(backup, stored_at, last_at + last_len - stored_at)
    plains = frames.decode_frame_run(header, chunks, first, frames.KIND_DATA, cipher_factory, info)
    cursor = _Cursor(plains, plain_at)
    for start, end, path in run:
        recs = records.decode(cursor.pieces(start, end), info, fragment=True)
        head = next(recs, None)
        if path is None:
            if head is None or head[0] != records.BEGIN:
                raise errors.CorruptRecordError(f"the data of level {backup.level} does not open with BEGIN")
            yield head
            continue
        if head is None or head[0] != records.ENTRY or head[1].path != path:
            found = "nothing" if head is None else f"{records.NAMES[head[0]]} {getattr(head[1], 'path', '')!r}"
            raise errors.CorruptRecordError(
                f"the index of level {backup.level} points at {found}, not at the entry of {path!r}")
        yield head
        for rec in recs:
            if rec[0] in (records.ENTRY, records.DELETE, records.END):
                break
            yield rec


class _Cursor:
    """Plaintext of consecutive frames, handed out as the pieces of forward ranges."""

    def __init__(self, plains: Iterator[Any], at: int) -> None:
        self._plains = plains
        self._view = memoryview(b"")
        self._at = at               # plaintext offset of _view's start

    def pieces(self, start: int, end: int) -> Iterator[memoryview]:
        while start < end:
            if start >= self._at + len(self._view):
                self._at += len(self._view)
                plain = next(self._plains, None)
                if plain is None:
                    raise errors.TruncatedError("the stored data ends before the records its index names")
                self._view = memoryview(plain).cast("B")
                continue
            if start < self._at:
                raise ValueError("partial restore ranges must go forward")
            lo = start - self._at
            hi = min(end - self._at, len(self._view))
            yield self._view[lo:hi]
            start = self._at + hi
