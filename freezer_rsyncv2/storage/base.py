"""The storage contract: the Storage ABC and its chain logic (Freezer's, plus CLI extras).

The path layout and the ``Backup`` handle live in ``layout.py``; their
names are re-exported here, so ``storage.base`` still offers them all.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator
from typing import Any

from oslo_log import log

from freezer_rsyncv2 import scratch
from freezer_rsyncv2.errors import BackupNotFoundError, ConfigError, FormatError, StorageError
from freezer_rsyncv2.storage import layout
from freezer_rsyncv2.storage.cleanup import Cleanup
from freezer_rsyncv2.storage.layout import (
    MAX_LEVEL, MAX_TIMESTAMP, Backup, EngineLike, NamedEngine, newest_level_timestamps, parse_chain_dir,
    path_join, validate_name, warn_ignored)
from freezer_rsyncv2.stream import encoder

LOG = log.getLogger(__name__)


class StorageFileNotFoundError(StorageError):
    """A file (object) asked for does not exist in the storage; ``path`` names it."""

    def __init__(self, path: str, message: str | None = None) -> None:
        super().__init__(message or f"no such file in storage: {path}")
        self.path = path


class LevelZeroNotFoundError(BackupNotFoundError, IndexError):
    """No complete chain matches; also an IndexError because Freezer's callers catch that."""


#: Largest block our storages exchange with the engine (``io_block_size``).
IO_BLOCK = 8 << 20

#: Largest object ``get_file`` copies out of our storages (the engine fetches
#: manifests with it).  A manifest holds an entry per file and the changed
#: signature blocks, so tens of GiB are possible for huge trees; the bound is
#: there so that a hostile sparse or growing object cannot fill the local
#: disk without end.  An attribute of each storage (``max_file_size``).
MAX_FILE_SIZE = 64 << 30


def check_range(offset: int, length: int) -> None:
    """ValueError unless ``offset`` and ``length`` (a ``read_data`` range) are ints >= 0."""
    for name, value in (("offset", offset), ("length", length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"read_data {name} must be an int >= 0, got {value!r}")


class Storage(Cleanup, abc.ABC):
    """Freezer's storage interface (base.Storage + physical.PhysicalStorage) plus CLI extras.

    Invariant: a level is visible (listed, restorable, usable as a parent)
    only once its ``metadata`` file exists, and ``put_metadata`` writes that
    file last; everything else in the layout may be partial garbage.  What
    failed or interrupted runs leave, ``abandon`` and ``sweep`` remove
    (``Cleanup``, ``storage/cleanup.py``).
    """

    _type: str | None = None
    #: Bytes ``get_file`` copies at most; past it the copy is refused.
    max_file_size: int = MAX_FILE_SIZE
    #: ``write_backup`` takes the engine's segments as they are: bytes-like
    #: or ``encoder.Segment`` (its ``pieces``, not joined): the engine's
    #: ``stream.encoder.PIECES`` (``storage.protocol.EngineStorage``).
    message_form = encoder.PIECES

    def __init__(self, storage_path: str, max_segment_size: int,
                 skip_prepare: bool = False) -> None:
        if (isinstance(max_segment_size, bool) or not isinstance(max_segment_size, int)
                or max_segment_size <= 0):
            raise ValueError(f"max_segment_size must be a positive int, got {max_segment_size!r}")
        self.storage_path = storage_path
        self.max_segment_size = max_segment_size
        if not skip_prepare:
            self.prepare()

    @property
    def io_block_size(self) -> int:
        """Bytes per block ``backup_blocks`` yields and per segment the engine
        hands ``write_backup``: the segment size, at most IO_BLOCK.

        Our storages keep no segment as an object (a file; S3 parts of their
        own size), so the size only bounds memory: two blocks on restore
        (with encryption, the key derivation's 64 MiB besides), two segments
        in flight on backup.  Freezer's storages get ``max_segment_size``
        segments (Swift stores each as an object, its S3 storage each as a
        part of at least 5 MiB).
        """
        return min(self.max_segment_size, IO_BLOCK)

    @property
    def type(self) -> str | None:
        """Short storage kind ('local', 's3', ...), as Freezer's ``Storage.type``."""
        return self._type

    # -- primitives every storage implements ---------------------------------

    @abc.abstractmethod
    def get_file(self, from_path: str, to_path: str) -> None:
        """Copy storage file ``from_path`` to local file ``to_path``; missing → StorageError."""

    @abc.abstractmethod
    def put_file(self, from_path: str, to_path: str) -> None:
        """Copy local file ``from_path`` to storage ``to_path`` (replace, never half-written)."""

    @abc.abstractmethod
    def write_backup(self, rich_queue: Any, backup: Backup) -> None:
        """Store the byte segments of ``rich_queue.get_messages()`` as ``backup``'s data.

        On any error nothing is left under the final data name.
        """

    @abc.abstractmethod
    def backup_blocks(self, backup: Backup) -> Iterator[bytes]:
        """Yield ``backup``'s data in chunks of at most ``max_segment_size`` bytes."""

    def read_data(self, backup: Backup, offset: int, length: int) -> Iterator[bytes]:
        """``EngineStorage.read_data``: bytes [offset, offset + length) of the level's data object.

        Chunks of at most ``io_block_size``; the backend is asked for the
        range only (pread, ranged GET).  ValueError from the call itself for
        a bad range; length 0 reads nothing; a missing object is the
        StorageFileNotFoundError of ``backup_blocks`` (at the first chunk).
        The size the level's metadata declares is not checked: the range
        bounds what is read.
        """
        check_range(offset, length)
        if length == 0:
            return iter(())
        return self._read_range(backup.copy(self), offset, length)

    @abc.abstractmethod
    def _read_range(self, backup: Backup, offset: int, length: int) -> Iterator[bytes]:
        """``read_data`` once its range is checked: ``length`` > 0, ``backup`` names this storage."""

    @abc.abstractmethod
    def listdir(self, path: str) -> list[str]:
        """Names directly under ``path``; a missing directory gives []."""

    @abc.abstractmethod
    def create_dirs(self, path: str) -> None:
        """Create ``path`` and its parents (no-op where directories are implicit)."""

    @abc.abstractmethod
    def rmtree(self, path: str) -> None:
        """Remove ``path`` and everything under it; a missing path is a no-op."""

    @abc.abstractmethod
    def prepare(self) -> None:
        """Create the container/root so that later writes succeed."""

    def info(self) -> list[dict[str, Any]]:
        """Freezer's ``info`` job output: one dict with container_name, size and objects_count."""
        total, count = self.usage()
        megabytes = max(1, total // (1024 * 1024))
        size = f"{megabytes} MB" if megabytes < 1024 else f"{megabytes // 1024} GB"
        return [{"container_name": self.storage_path, "size": size, "objects_count": count}]

    @abc.abstractmethod
    def usage(self) -> tuple[int, int]:
        """(bytes, objects) stored below ``storage_path``."""

    @abc.abstractmethod
    def stored_size(self, path: str) -> int | None:
        """Bytes of the file (object) at ``path``; None when there is none.

        The engine checks a level's data with it before publishing the level.
        """

    def stored_sizes(self, backup: Backup) -> Iterator[tuple[str, int | None]]:
        """``EngineStorage.stored_sizes``: the size of the level's data object."""
        path = backup.copy(self).data_path
        yield path, self.stored_size(path)

    def newest_levels(self, sample: Backup, recent_to_date: int | None) -> dict[int, int]:
        """``EngineStorage.newest_levels``, from a listing of the chain's metadata directory."""
        return newest_level_timestamps(self, sample.copy(self).increments_metadata_path, recent_to_date)

    def read_object(self, path: str, limit: int) -> bytes:
        """Extra: the whole object at ``path``; StorageError if it holds more than ``limit`` bytes.

        For small objects (a level's metadata).  This default copies with
        ``get_file`` (bounded by ``max_file_size``) and checks afterwards;
        ours check the size before reading anything, so a hostile object
        costs no more than ``limit``.
        """
        with scratch.directory("object") as tmp:
            local = os.path.join(tmp, "object")
            self.get_file(path, local)
            with open(local, "rb") as handle:
                raw = handle.read(limit + 1)
        if len(raw) > limit:
            raise StorageError(f"{path} holds more than {limit} bytes, the most expected there")
        return raw

    def is_published(self, metadata_path: str) -> bool:
        """Extra: whether ``metadata_path`` (a level's ``metadata``) exists as a stored object.

        The default asks the listing of its directory; our storages refine
        it so that a directory, a symlink or a FIFO under that name does not
        publish a level.
        """
        head, _, name = metadata_path.rpartition("/")
        return name in self.listdir(head)

    def declared_data_size(self, backup: Backup) -> int | None:
        """Extra: bytes the level's metadata says its data holds (``summary.stored_bytes``).

        ``backup_blocks`` refuses data larger than this, so a hostile data
        object is read no further than the level's own metadata allows.
        None when the metadata does not exist or declares no size (levels of
        other engines); a declared value that is not a non-negative int is a
        FormatError.
        """
        try:
            meta = backup.copy(self).metadata()
        except StorageFileNotFoundError:
            return None
        summary = meta.get("summary")
        if not isinstance(summary, dict) or "stored_bytes" not in summary:
            return None
        value = summary["stored_bytes"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise FormatError(f"{backup.copy(self).metadata_path} declares stored_bytes {value!r}: "
                              f"not a size")
        return value

    # -- Freezer's concrete logic ---------------------------------------------

    def metadata_path(self, engine: EngineLike, hostname_backup_name: str) -> str:
        """Root of all chains of one backup name: ``<storage>/metadata/<engine>/<name>``."""
        return path_join(self.storage_path, "metadata", validate_name(engine.name, "engine name"),
                         validate_name(hostname_backup_name))

    def get_level_zero(self, engine: EngineLike, hostname_backup_name: str,
                       recent_to_date: int | None = None) -> list[Backup]:
        """Level-0 backups (one per chain), oldest first, not after ``recent_to_date``.

        A chain counts only if its level-0 metadata file exists. As in
        Freezer, a falsy ``recent_to_date`` means "no limit".
        """
        root = self.metadata_path(engine, hostname_backup_name)
        zeros = []
        for name in self.listdir(root):
            ts = self._chain_timestamp(root, name)
            if ts is None or (recent_to_date and ts > recent_to_date):
                continue
            zero = Backup(engine=engine, hostname_backup_name=hostname_backup_name,
                          level_zero_timestamp=ts, timestamp=ts, level=0, storage=self)
            if self.is_published(zero.metadata_path):
                zeros.append(zero)
        return sorted(zeros, key=lambda b: b.timestamp)

    def _chain_timestamp(self, parent: str, name: str) -> int | None:
        """The timestamp of chain directory ``name`` under ``parent``; None (warned) if it is none.

        Hidden names (temporary files) are skipped silently, anything else
        that does not parse once per storage handle with a warning.
        """
        ts = parse_chain_dir(name)
        if ts is None and not name.startswith("."):
            warn_ignored(self, path_join(parent, name),
                         f"not a chain directory (a timestamp 0..{MAX_TIMESTAMP} in ASCII digits)")
        return ts

    def get_latest_level_zero_increments(self, engine: EngineLike, hostname_backup_name: str,
                                         recent_to_date: int | None = None) -> dict[int, Backup]:
        """Levels of the newest chain not after ``recent_to_date``, limited to that date.

        Raises LevelZeroNotFoundError (a BackupNotFoundError and an
        IndexError) when no complete chain matches.
        """
        zeros = self.get_level_zero(engine, hostname_backup_name, recent_to_date)
        if not zeros:
            when = f" at or before {recent_to_date}" if recent_to_date else ""
            raise LevelZeroNotFoundError(
                f'No backup named "{hostname_backup_name}" (engine "{engine.name}") found{when} '
                f"in {self.metadata_path(engine, hostname_backup_name)}")
        latest = max(zeros, key=lambda b: b.timestamp)
        return {level: backup for level, backup in latest.get_increments().items()
                if not recent_to_date or backup.timestamp <= recent_to_date}

    def previous_backup(self, engine: EngineLike, hostname_backup_name: str, incremental: bool,
                        max_level: int | None, always_level: int | None,
                        restart_always_level: float | None) -> Backup | None:
        """The level the next backup should build on, or None for a new level 0.

        Same decision order as Freezer: not incremental; no chain; chain
        at/over ``max_level``; chain over ``always_level``; newest level older
        than ``restart_always_level`` days; at ``always_level`` exactly,
        return the level below so the new backup replaces that level.
        """
        if not incremental:
            return None
        try:
            increments = self.get_latest_level_zero_increments(engine, hostname_backup_name)
        except IndexError:
            return None
        highest_level = max(increments)
        highest = increments[highest_level]
        if highest_level >= MAX_LEVEL:
            # A level past MAX_LEVEL would be written, then never listed.
            LOG.warning("Chain %s of %s holds level %d, the highest a chain may hold; "
                        "starting a new level 0", highest.level_zero_timestamp,
                        hostname_backup_name, highest_level)
            return None
        if max_level and max_level <= highest_level:
            return None
        if always_level and highest_level > always_level:
            return None
        if restart_always_level and layout.now() > highest.timestamp + restart_always_level * 86400:
            return None
        if always_level and highest_level == always_level:
            below = increments.get(highest_level - 1)
            if below is None:
                # Freezer would raise KeyError; a broken chain is safer restarted.
                LOG.warning("Chain %s lacks level %d; starting a new level 0",
                            highest.level_zero_timestamp, highest_level - 1)
            return below
        return highest

    def put_metadata(self, engine_metadata_path: str, freezer_metadata_path: str,
                     backup: Backup) -> None:
        """Upload the engine metadata, then the metadata file LAST (this publishes the level)."""
        backup = backup.copy(self)
        self.create_dirs(backup.data_prefix_path)
        self.put_file(engine_metadata_path, backup.engine_metadata_path)
        self.create_dirs(backup.metadata_path.rsplit("/", 1)[0])
        self.put_file(freezer_metadata_path, backup.metadata_path)
        self._published(backup)

    def remove_older_than(self, engine: EngineLike, remove_older_timestamp: float,
                          hostname_backup_name: str) -> None:
        """Remove every chain whose level 0 is at or before ``remove_older_timestamp``.

        As in Freezer, a whole chain goes even if its later levels are newer.
        Beyond Freezer, chains left incomplete by failed runs (data without
        level-0 metadata) in that range are removed too, since nothing else
        would ever clean them up. Unlike Freezer, a timestamp of 0 removes
        nothing (Freezer's falsy check would remove every chain).
        """
        cutoff = remove_older_timestamp
        if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)):
            raise ConfigError(f"remove_older_timestamp must be a number, got {cutoff!r}")
        name = validate_name(hostname_backup_name)
        ename = validate_name(engine.name, "engine name")
        chains: set[int] = set()
        for kind in ("metadata", "data"):
            parent = path_join(self.storage_path, kind, ename, name)
            for entry in self.listdir(parent):
                ts = self._chain_timestamp(parent, entry)
                if ts is not None and ts <= cutoff:
                    chains.add(ts)
        for ts in sorted(chains):
            LOG.info("Removing chain %s of %s", ts, name)
            Backup(engine=engine, hostname_backup_name=name, level_zero_timestamp=ts,
                   timestamp=ts, level=0, storage=self).remove()

    # -- extras for our CLI (not part of Freezer's interface) -----------------

    def backup_names(self, engine_name: str) -> list[str]:
        """Extra: sorted backup names of ``engine_name`` having at least one complete chain."""
        ename = validate_name(engine_name, "engine name")
        engine = NamedEngine(ename)
        names = []
        parent = path_join(self.storage_path, "metadata", ename)
        for entry in self.listdir(parent):
            try:
                validate_name(entry)
            except ConfigError:
                continue
            if not entry.isprintable():
                # A control character (or a byte that is not UTF-8) would
                # corrupt or break the listing printed from these names.
                warn_ignored(self, path_join(parent, entry), "not a printable backup name")
                continue
            if self.get_level_zero(engine, entry):
                names.append(entry)
        return sorted(names)

    def list_chains(self, engine: EngineLike,
                    hostname_backup_name: str) -> list[dict[int, Backup]]:
        """Extra: every complete chain of a name, oldest first, each as {level: Backup}."""
        return [zero.get_increments()
                for zero in self.get_level_zero(engine, hostname_backup_name)]

    def level_size(self, backup: Backup) -> int:
        """Extra: stored bytes of one level (data + engine_metadata; missing counts as 0)."""
        backup = backup.copy(self)
        return sum(self.stored_size(path) or 0
                   for path in (backup.data_path, backup.engine_metadata_path))
