"""Verify a backup chain: decode every level and manifest, check every file digest.

The levels are replayed into a scratch directory that is removed afterwards,
so every record is decrypted, decompressed and decoded and every file's
digest is checked exactly as a restore would; nothing is written anywhere
else.
"""

from __future__ import annotations

import array
import dataclasses
import os

from freezer_rsyncv2 import errors
from freezer_rsyncv2 import scratch as scratch_dir
from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2.stream import place, records


@dataclasses.dataclass
class VerifyReport:
    """What a clean verification covered."""

    name: str
    levels: list[int]
    manifest_entries: int = 0


def verify(engine, hostname_backup_name: str,
           recent_to_date: int | None = None,
           scratch_parent: str | None = None) -> VerifyReport:
    """Raise the first problem (naming level and path); else a report."""
    storage = engine.storage
    backups = storage.get_latest_level_zero_increments(
        engine=engine, hostname_backup_name=hostname_backup_name,
        recent_to_date=recent_to_date)
    top = max(backups)
    missing = [lvl for lvl in range(top + 1) if lvl not in backups]
    if missing:
        raise errors.StorageError(
            "backup %s: level %d is missing from the chain"
            % (hostname_backup_name, missing[0]))
    report = VerifyReport(hostname_backup_name, list(range(top + 1)))
    manifests: list[str] = []
    places: list[place.Place | None] = []
    with scratch_dir.directory("verify", scratch_parent) as scratch:
        tree = os.path.join(scratch, "tree")
        os.mkdir(tree)
        with engine.restore_session(tree):
            for level in range(top + 1):
                backup = backups[level]
                _check_metadata(backup, level, hostname_backup_name)
                manifests.append(os.path.join(scratch, "manifest-%d" % level))
                places.append(place.Place.of(backup))
                count, index = _check_manifest(
                    engine, backup, manifests[-1], level,
                    hostname_backup_name)
                report.manifest_entries += count
                seen = _Positions()
                engine.entry_observer = seen.add if index is not None else None
                try:
                    engine.restore_one(tree, backup)
                finally:
                    engine.entry_observer = None
                if index is not None:
                    _check_index(index, seen, level, hostname_backup_name)
        _check_signatures(engine, manifests, places, hostname_backup_name)
    return report


def _check_metadata(backup, level: int, name: str) -> None:
    try:
        meta = backup.metadata()
    except Exception as err:
        raise errors.FormatError("level %d of %s: metadata unreadable: %s"
                                 % (level, name, err)) from err
    if not isinstance(meta, dict) or meta.get("engine_name") != "rsyncv2":
        raise errors.FormatError("level %d of %s: metadata is not an rsyncv2 "
                                 "engine's" % (level, name))


def _check_manifest(engine, backup, path: str, level: int, name: str) -> tuple[int, _Positions | None]:
    """The manifest's entry count and, for a level with an index (format 4), its entries' offsets."""
    backup.storage.get_file(backup.engine_metadata_path, path)
    count = 0
    listed = _Positions()
    tables: list = []
    try:
        for rec in mf.read(path, engine.cipher_factory(),
                           place.Place.of(backup), index=tables):
            count += 1
            if rec[0] == records.MANIFEST and "o" in rec[2]:
                listed.add(rec[2]["o"], rec[1].path)
    except errors.Rsyncv2Error as err:
        raise type(err)("level %d of %s: manifest: %s"
                        % (level, name, err)) from err
    return count, (listed if tables else None)


class _Positions:
    """(plaintext offset, path) pairs, 16 bytes each: a path is kept as its hash."""

    def __init__(self) -> None:
        self.offsets = array.array("q")
        self.paths = array.array("q")

    def add(self, offset: int, path: bytes) -> None:
        self.offsets.append(offset)
        self.paths.append(hash(path))

    def sorted(self) -> list[tuple[int, int]]:
        return sorted(zip(self.offsets, self.paths))


def _check_index(index: _Positions, seen: _Positions, level: int, name: str) -> None:
    """Every entry the manifest's index names starts where it says in the data, and no other.

    What a partial restore relies on (``partial``, ``docs/format.rst``
    "Index"); it also refuses a wrong index itself, so this finds one
    before a restore needs it.
    """
    listed, found = index.sorted(), seen.sorted()
    if listed == found:
        return
    wrong = next((a for a, b in zip(listed, found) if a != b), None)
    where = f"plaintext offset {wrong[0]}" if wrong else f"{len(listed)} entries listed, {len(found)} in the data"
    raise errors.IntegrityError(f"level {level} of {name}: the manifest's index does not match its data ({where})")


def _check_signatures(engine, manifests: list[str],
                      places: list[place.Place | None], name: str) -> None:
    """Build every signature the chain's next level would match against.

    A level stores only the signature blocks that changed, so each is
    checked over the chain below it (``docs/format.rst``).
    """
    try:
        for me in mf.overlay(manifests, engine.cipher_factory(),
                             places=places):
            if me.has_signature:
                me.signature()
    except errors.Rsyncv2Error as err:
        raise type(err)("backup %s: the signatures of levels 0-%d: %s"
                        % (name, len(manifests) - 1, err)) from err
