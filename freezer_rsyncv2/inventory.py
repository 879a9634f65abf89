"""What a backup holds at a date, and what changed between two dates: from manifests only.

``tree_at`` fetches the manifests of the levels a restore at that date
would replay (never their data) and overlays them (``manifest.overlay``:
later levels win, tombstones remove), giving the backed-up tree in
``fs.walk.sort_key`` order.  ``select`` limits a tree to some paths and
what is below them; ``diff`` merges two trees into restic's change
letters.  The command line's ``ls`` and ``diff`` print these.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from freezer_rsyncv2 import errors
from freezer_rsyncv2 import scratch as scratch_dir
from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2.engine.base import newest_per_level
from freezer_rsyncv2.fs import entry as fsentry
from freezer_rsyncv2.fs.walk import sort_key
from freezer_rsyncv2.stream import place

ADDED, REMOVED, MODIFIED, METADATA, TYPE_CHANGED = "+", "-", "M", "U", "T"

#: Fields whose change is a metadata-only change (``U``).
META_FIELDS = ("mode", "uid", "gid", "uname", "gname", "mtime_ns", "xattrs")


@dataclasses.dataclass
class Tree:
    """The levels of one chain a restore at some date replays, and their manifests (fetched)."""

    name: str
    levels: list[Any]               # storage Backup handles, level 0 first
    manifests: list[str]
    cipher_factory: Any

    @property
    def top(self) -> Any:
        return self.levels[-1]

    def entries(self) -> Iterator[mf.ManifestEntry]:
        """The effective entries of the tree, in ``sort_key`` order."""
        places: list[place.Place | None] = [place.Place.of(b) for b in self.levels]
        return mf.overlay(self.manifests, self.cipher_factory, places=places)


def chain_at(engine: Any, name: str, date: int | None = None) -> list[Any]:
    """Levels 0..N a restore of ``name`` at ``date`` (None: newest) replays, as ``Backup`` handles.

    BackupNotFoundError when no chain of the name starts at or before the
    date; StorageError when a level of the chain is missing.
    """
    backups = engine.storage.get_latest_level_zero_increments(
        engine=engine, hostname_backup_name=name, recent_to_date=date)
    backups = newest_per_level(engine, backups, date)
    top = max(backups)
    missing = [level for level in range(top + 1) if level not in backups]
    if missing:
        raise errors.StorageError(f"backup {name}: level {missing[0]} is missing from the chain")
    return [backups[level] for level in range(top + 1)]


@contextlib.contextmanager
def tree_at(engine: Any, name: str, date: int | None = None,
            scratch_parent: str | None = None) -> Iterator[Tree]:
    """The tree of ``name`` as restored at ``date``; its manifests live in a scratch directory until exit.

    Only the levels' manifests are read (with the engine's cipher): no
    data object is fetched.
    """
    levels = chain_at(engine, name, date)
    with scratch_dir.directory("inventory", scratch_parent) as scratch:
        manifests = []
        for backup in levels:
            path = os.path.join(scratch, f"manifest-{backup.level}")
            backup.storage.get_file(backup.engine_metadata_path, path)
            manifests.append(path)
        yield Tree(name, levels, manifests, engine.cipher_factory())


def path_filter(text: str | bytes) -> bytes:
    """A path as a user names it (``./a/b/``) in the form entries carry (``a/b``)."""
    raw = os.fsencode(text)
    while raw.startswith(b"./"):
        raw = raw[2:]
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    return b"/".join(parts)


def select(entries: Iterable[mf.ManifestEntry], paths: Sequence[str | bytes]) -> Iterator[mf.ManifestEntry]:
    """The entries at one of ``paths`` or below it; all of them when ``paths`` is empty."""
    wanted = [sort_key(p) for p in map(path_filter, paths) if p]
    if not paths or len(wanted) < len(paths):       # "." or "/" names the whole tree
        yield from entries
        return
    below = tuple(w + b"\0" for w in wanted)     # sort_key joins components with NUL
    for me in entries:
        key = sort_key(me.entry.path)
        if key in wanted or key.startswith(below):
            yield me


@dataclasses.dataclass
class Change:
    """One path that differs between two trees: ``letter`` is ``+ - M U T``."""

    letter: str
    path: bytes
    old: fsentry.Entry | None
    new: fsentry.Entry | None


def classify(old: mf.ManifestEntry, new: mf.ManifestEntry) -> str | None:
    """The letter of a path present in both trees; None when it did not change."""
    a, b = old.entry, new.entry
    if a.kind != b.kind:
        return TYPE_CHANGED
    if _content_differs(old, new):
        return MODIFIED
    if any(getattr(a, f) != getattr(b, f) for f in META_FIELDS):
        return METADATA
    return None


def _content_differs(old: mf.ManifestEntry, new: mf.ManifestEntry) -> bool:
    a, b = old.entry, new.entry
    if (a.size, a.link_target, a.hardlink_to, a.rdev) != (b.size, b.link_target, b.hardlink_to, b.rdev):
        return True
    if a.kind != fsentry.KIND_FILE:
        return False
    if old.digest is not None and new.digest is not None:
        return old.digest != new.digest
    return a.mtime_ns != b.mtime_ns         # no digest to compare (older levels): rsync's quick check


def diff(old: Iterable[mf.ManifestEntry], new: Iterable[mf.ManifestEntry]) -> Iterator[Change]:
    """The changes from tree ``old`` to tree ``new`` (both in ``sort_key`` order), in that order."""
    olds, news = iter(old), iter(new)
    a, b = next(olds, None), next(news, None)
    while a is not None or b is not None:
        if b is None or (a is not None and sort_key(a.entry.path) < sort_key(b.entry.path)):
            assert a is not None
            yield Change(REMOVED, a.entry.path, a.entry, None)
            a = next(olds, None)
        elif a is None or sort_key(b.entry.path) < sort_key(a.entry.path):
            yield Change(ADDED, b.entry.path, None, b.entry)
            b = next(news, None)
        else:
            letter = classify(a, b)
            if letter is not None:
                yield Change(letter, b.entry.path, a.entry, b.entry)
            a, b = next(olds, None), next(news, None)
