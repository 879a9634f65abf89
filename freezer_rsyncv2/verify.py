"""Verify a backup chain: decode every level and manifest, check every file digest.

The levels are replayed into a scratch directory that is removed afterwards,
so every record is decrypted, decompressed and decoded and every file's
digest is checked exactly as a restore would; nothing is written anywhere
else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile

from freezer_rsyncv2 import errors
from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2.stream import place


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
    scratch = tempfile.mkdtemp(prefix="rsyncv2-verify-", dir=scratch_parent)
    manifests: list[str] = []
    places: list[place.Place | None] = []
    try:
        tree = os.path.join(scratch, "tree")
        os.mkdir(tree)
        with engine.restore_session(tree):
            for level in range(top + 1):
                backup = backups[level]
                _check_metadata(backup, level, hostname_backup_name)
                manifests.append(os.path.join(scratch, "manifest-%d" % level))
                places.append(place.Place.of(backup))
                report.manifest_entries += _check_manifest(
                    engine, backup, manifests[-1], level,
                    hostname_backup_name)
                engine.restore_one(tree, backup)
        _check_signatures(engine, manifests, places, hostname_backup_name)
    finally:
        remove_scratch(scratch)
    return report


def remove_scratch(path: str) -> None:
    """Remove a scratch tree, read-only directories in it included.

    The restore gives directories their backed-up modes: without write
    permission on a directory (and without root's override) its entries
    could not be removed, and the scratch tree would stay behind.  Each
    directory is made writable (never through a symlink) before the walk
    descends into it.
    """
    for root, dirs, _files in os.walk(path):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), 0o700,
                         follow_symlinks=False)
    shutil.rmtree(path, ignore_errors=True)


def _check_metadata(backup, level: int, name: str) -> None:
    try:
        meta = backup.metadata()
    except Exception as err:
        raise errors.FormatError("level %d of %s: metadata unreadable: %s"
                                 % (level, name, err)) from err
    if not isinstance(meta, dict) or meta.get("engine_name") != "rsyncv2":
        raise errors.FormatError("level %d of %s: metadata is not an rsyncv2 "
                                 "engine's" % (level, name))


def _check_manifest(engine, backup, path: str, level: int, name: str) -> int:
    backup.storage.get_file(backup.engine_metadata_path, path)
    count = 0
    try:
        for _rec in mf.read(path, engine.cipher_factory(),
                            place.Place.of(backup)):
            count += 1
    except errors.Rsyncv2Error as err:
        raise type(err)("level %d of %s: manifest: %s"
                        % (level, name, err)) from err
    return count


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
