"""BackupEngine: Freezer's backup/restore workflow, talking to any Freezer-style storage.

The base class does what freezer-agent's does (find the previous level, run
the engine's ``backup_data`` generator and the storage's ``write_backup``
on a bounded queue, upload engine metadata and then the metadata that makes
the level visible; on restore replay levels 0..N through ``restore_level``),
using only the storage methods Freezer's own base class uses.  Unlike
Freezer's, it fetches the whole chain's manifests (each level stores a delta
manifest), never hangs when one side fails, and re-raises the engine's own
typed error instead of a generic one.

Both hand-offs pass references, one message or block at a time: on backup
the queue holds none (``put`` waits for the storage to take each message),
so the two sides hold two messages between them; on restore the storage's
blocks reach ``restore_level`` through a ``QueuePipe`` of the same kind
instead of a ``multiprocessing`` pipe (no copies through the kernel).

What a backup message is depends on the storage (``message_form``): a
storage that appends every message to one object gets the stream in
chunks of at most 1 MiB, one that stores each message as an object or a
part gets segments spooled to temporary files, so in both cases no
segment is held in memory (docs/freezer-agent.rst, "Memory").
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from typing import Any

from oslo_log import log

from freezer_rsyncv2 import errors, handoff, interrupt, scratch, threads
from freezer_rsyncv2.storage import foreign
from freezer_rsyncv2.storage import layout as slayout
from freezer_rsyncv2.storage.protocol import EngineStorage
from freezer_rsyncv2.stream import place

LOG = log.getLogger(__name__)


class BackupEngine(metaclass=abc.ABCMeta):
    """Freezer's engine contract; subclasses supply the data format."""

    def __init__(self, storage: Any) -> None:
        #: The storage as the engine speaks to it (``storage.protocol``):
        #: ours as they are, any other wrapped once (``storage.foreign``).
        self.storage: EngineStorage = foreign.for_engine(storage)
        # Manifests of the chain below the level being written (0..N-1),
        # fetched by backup(); backup_data() reads them.
        self.chain_manifests: list[str] = []
        #: where the storage holds each of chain_manifests, and where the
        #: level being written goes (named in its streams: stream/place.py)
        self.chain_places: list[place.Place | None] = []
        self.place: place.Place | None = None
        # A dry run reads and deltas everything but stores nothing.
        self.dry_run = False
        # Bytes handed to the storage for the level being written.
        self.handed_bytes = 0

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The engine name used in storage paths."""

    @abc.abstractmethod
    def metadata(self, backup_resource: str) -> dict:
        """The JSON-able dict stored beside each level."""

    @abc.abstractmethod
    def backup_data(self, backup_path: str, manifest_path: str
                    ) -> Iterator[bytes]:
        """Yield the level's byte segments; (re)write the manifest at manifest_path."""

    @abc.abstractmethod
    def restore_level(self, restore_path: str, read_pipe: Any, backup: Any,
                      except_queue: Any = None) -> None:
        """Apply one level read from ``read_pipe.recv_bytes()`` until EOFError."""

    def can_extend(self, prev: Any) -> bool:
        """Whether a new level may build on ``prev`` (else a new level 0)."""
        return True

    def prepare_chain(self, level_zero_manifest: str | None) -> None:
        """Called as soon as the chain the new level extends is known.

        With the fetched level-0 manifest of that chain, or None when a new
        level 0 starts.  An engine may start slow preparations here (the
        key derivation); the default does nothing.
        """

    # -- backup -----------------------------------------------------------
    def message_form(self) -> str:
        """How the storage takes the level's bytes (``encoder.MESSAGE_FORMS``):
        ours take segments as pieces, Freezer's what ``freezer_compat`` says."""
        return self.storage.message_form

    def backup_stream(self, backup_resource: str, rich_queue: Any,
                      manifest_path: str) -> None:
        segments = self.backup_data(backup_resource, manifest_path)
        try:
            rich_queue.put_messages(self._counted(segments))
        finally:
            close = getattr(segments, "close", None)
            if close is not None:
                close()     # the generator's cleanup runs now, not at GC

    def _counted(self, segments: Iterator[Any]) -> Iterator[Any]:
        """The segments as they are, their bytes added up in ``handed_bytes``.

        No reference is kept once a segment is handed over: the storage
        frees it as soon as it has stored it.
        """
        self.handed_bytes = 0
        for segment in segments:
            self.handed_bytes += len(segment)
            yield segment
            del segment

    def backup(self, backup_resource: str, hostname_backup_name: str,
               incremental: bool, max_level: int | None,
               always_level: int | None, restart_always_level: float | None,
               queue_size: int = 0) -> int:
        """Write one level; returns its level number.

        ``queue_size`` segments may wait between the engine and the storage
        besides the one each side holds; 0 (a hand-off) bounds the memory to
        two segments.
        """
        prev = self.storage.previous_backup(
            engine=self, hostname_backup_name=hostname_backup_name,
            incremental=incremental, max_level=max_level,
            always_level=always_level,
            restart_always_level=restart_always_level)
        if prev is not None and not self.can_extend(prev):
            LOG.warning("%s: the settings changed in a way the chain cannot "
                        "follow; starting a new level 0", hostname_backup_name)
            prev = None
        if prev is None:
            self.prepare_chain(None)
        try:
            with scratch.directory("backup") as tmpdir:
                engine_meta = os.path.join(tmpdir, "engine_meta")
                freezer_meta = os.path.join(tmpdir, "freezer_meta")
                self.chain_manifests = self._fetch_chain(
                    prev, hostname_backup_name, tmpdir)
                if self.chain_manifests:
                    shutil.copyfile(self.chain_manifests[-1], engine_meta)
                timestamp = slayout.now()
                if prev is not None:
                    timestamp = max(timestamp, int(prev.timestamp) + 1)
                    level_zero = prev.level_zero_timestamp
                else:
                    timestamp = self._fresh_level_zero(hostname_backup_name,
                                                       timestamp)
                    level_zero = timestamp
                backup = slayout.Backup(
                    engine=self, hostname_backup_name=hostname_backup_name,
                    level_zero_timestamp=level_zero, timestamp=timestamp,
                    level=prev.level + 1 if prev is not None else 0)
                self.place = place.Place.of(backup)
                if self.dry_run:
                    for _segment in self.backup_data(backup_resource, engine_meta):
                        pass
                    return backup.level
                self._run_backup(backup_resource, engine_meta, backup, queue_size)
                self._check_stored(backup)
                with open(freezer_meta, "wb") as out:
                    out.write(json.dumps(self.metadata(backup_resource)).encode())
                self.storage.put_metadata(engine_meta, freezer_meta, backup)
                return backup.level
        finally:
            self.place = None

    def _fetch_chain(self, prev: Any, name: str, tmpdir: str) -> list[str]:
        """The chain's manifests, fetched; their places in chain_places."""
        self.chain_places = []
        if prev is None:
            return []
        levels = self.storage.get_latest_level_zero_increments(
            engine=self, hostname_backup_name=name)
        paths = []
        for level in range(prev.level + 1):
            # Freezer's Backup objects or ours: the storage holding the level.
            b: Any = prev if level == prev.level else levels.get(level)
            if b is None or b.level_zero_timestamp != prev.level_zero_timestamp:
                raise errors.StorageError(
                    "backup %s: level %d of the chain started at %s is "
                    "missing" % (name, level, prev.level_zero_timestamp))
            path = os.path.join(tmpdir, "manifest_%d" % level)
            b.storage.get_file(b.engine_metadata_path, path)
            paths.append(path)
            self.chain_places.append(place.Place.of(b))
            if level == 0:
                self.prepare_chain(path)
        return paths

    def _fresh_level_zero(self, name: str, timestamp: int) -> int:
        """A level-0 timestamp not used by an existing chain of this name."""
        try:
            zeros = self.storage.get_level_zero(engine=self,
                                                hostname_backup_name=name)
        except IndexError:
            zeros = []
        used = [int(z.level_zero_timestamp) for z in zeros]
        if used and timestamp <= max(used):
            timestamp = max(used) + 1
        return timestamp

    def _run_backup(self, backup_resource: str, engine_meta: str,
                    backup: Any, queue_size: int) -> None:
        """Producer and storage writer on a bounded queue; first error wins."""
        rich_queue = handoff.RichQueue(queue_size)
        # Interrupted (a signal in the main thread), both sides stop at their
        # next hand-off, and the storage's own cleanup runs before the
        # caller's; the wait for them is bounded (threads.STOP_WAIT).
        with threads.TaskGroup(on_stop=rich_queue.force_stop) as group:
            group.go(self.backup_stream, backup_resource, rich_queue, engine_meta,
                     name="rsyncv2-backup-read")
            group.go(self.storage.write_backup, rich_queue, backup,
                     name="rsyncv2-backup-write")

    def _check_stored(self, backup: Any) -> None:
        """Raise StorageError unless the level's data holds every byte handed over.

        Before any metadata is written, so a level whose data did not make
        it is never published.  Asked of each storage that can tell an
        object's size (a ``stored_size(path)`` method: ours, and Freezer's
        S3 storage once ``freezer_compat`` adapted it, whose uploads can
        fail without an error); the others are trusted.  One stat or HEAD
        request per storage and level.
        """
        for path, stored in self.storage.stored_sizes(backup):
            if stored == self.handed_bytes:
                continue
            found = "is missing" if stored is None else \
                "holds %d bytes" % stored
            raise errors.StorageError(
                "backup %s level %d: %s %s after %d bytes were written to it: "
                "the upload failed (the storage's own log lines may say "
                "why), so the level is not recorded" % (
                    backup.hostname_backup_name, backup.level, path, found,
                    self.handed_bytes))

    # -- restore ----------------------------------------------------------
    def restore(self, hostname_backup_name: str, restore_resource: str,
                overwrite: bool, recent_to_date: int | None,
                backup_media: str | None = None) -> int:
        """Replay levels 0..N of the newest chain; returns the level restored.

        SIGINT, SIGTERM and SIGHUP raise ``interrupt.Interrupted`` here
        (where the host left their default action): the level being
        restored removes its staged files, every final name stays old or
        complete.
        """
        with interrupt.handling():
            return self._restore(hostname_backup_name, restore_resource,
                                 overwrite, recent_to_date, backup_media)

    def _restore(self, hostname_backup_name: str, restore_resource: str,
                 overwrite: bool, recent_to_date: int | None,
                 backup_media: str | None) -> int:
        if backup_media in (None, "fs"):
            prepare_restore_dir(restore_resource, overwrite)
        backups = self.storage.get_latest_level_zero_increments(
            engine=self, hostname_backup_name=hostname_backup_name,
            recent_to_date=recent_to_date)
        backups = newest_per_level(self, backups, recent_to_date)
        top = max(backups)
        for level in range(top + 1):
            if level not in backups:
                raise errors.StorageError(
                    "backup %s: level %d is missing from the chain, cannot "
                    "restore level %d" % (hostname_backup_name, level, top))
        with self.restore_session(restore_resource):
            for level in range(top + 1):
                LOG.info("Restoring %s level %d", hostname_backup_name, level)
                self.restore_one(restore_resource, backups[level])
        return top

    def restore_session(self, restore_path: str
                        ) -> contextlib.AbstractContextManager:
        """State the levels of one restore share (none by default); the
        restore calls ``restore_level`` for each level inside it."""
        return contextlib.nullcontext()

    def restore_one(self, restore_path: str, backup: Any) -> None:
        """One level: the storage's blocks, read on a thread, into restore_level.

        The blocks are handed over by reference, one at a time (a hand-off
        queue read through a pipe-like ``QueuePipe``): at most the block
        being restored and the one read next are held.  A storage failure
        is the error reported (the reader sees the stream end early); a
        reader failure closes the queue, which stops the storage thread.
        """
        rich_queue = handoff.RichQueue(0)
        read_pipe = handoff.QueuePipe(rich_queue)

        def send() -> None:
            blocks = iter(backup.storage.backup_blocks(backup))
            try:
                rich_queue.put_messages(blocks)
            except handoff.QueueStopped:
                return          # the reader stopped first; it reports why
            finally:
                close = getattr(blocks, "close", None)
                if close is not None:
                    close()     # a generator's cleanup runs now, not at GC

        # A storage failure stops the queue: the reader sees the stream end
        # early, and whatever it raises, the storage's error is the cause
        # reported (it explains any error of the reader).
        with threads.TaskGroup(on_stop=rich_queue.force_stop,
                               explained=(Exception,)) as group:
            group.go(send, name="rsyncv2-restore-read")
            self.restore_level(restore_path, read_pipe, backup)
            read_pipe.close()       # the storage thread stops if blocks remain


def newest_per_level(engine: BackupEngine, backups: dict, recent_to_date: int | None) -> dict:
    """With --always-level a chain holds several entries for one level;
    Freezer's storages keep whichever they list last: take the newest."""
    sample = next(iter(backups.values()))
    out = dict(backups)
    for lvl, ts in engine.storage.newest_levels(sample, recent_to_date).items():
        b = out.get(lvl)
        if b is not None and int(b.timestamp) != ts:
            out[lvl] = type(b)(engine=engine,
                               hostname_backup_name=b.hostname_backup_name,
                               level_zero_timestamp=b.level_zero_timestamp,
                               timestamp=ts, level=lvl, storage=b.storage)
    return out


def prepare_restore_dir(path: str, overwrite: bool) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise errors.RestoreError(f"cannot create restore directory {path}: {err.strerror}") from err
    if not os.path.isdir(path):
        raise errors.RestoreError(f"restore path {path} is not a directory")
    if not overwrite and os.listdir(path):
        raise errors.RestoreError(
            f"restore directory {path} is not empty; use --overwrite or choose another path")
