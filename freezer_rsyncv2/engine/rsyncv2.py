"""Rsyncv2Engine: orchestrates walk -> delta -> records -> segments, and back on restore.

It takes freezer-agent's constructor keywords, so freezer-agent can load it
in place of Freezer's own rsyncv2 engine, and it is the engine behind our
CLI.  The work itself lives elsewhere: ``backup_pass`` decides what each
entry needs, ``stream`` encodes it, ``restore_pass`` and ``fs.restore`` put
it back safely.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing.connection
import os
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from oslo_log import log

import freezer_rsyncv2
from freezer_rsyncv2 import config as cfgmod
from freezer_rsyncv2 import errors
from freezer_rsyncv2 import interrupt
from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2 import manifest_writer as mw
from freezer_rsyncv2 import progress as prog
from freezer_rsyncv2 import handoff, threads
from freezer_rsyncv2.engine import backup_pass
from freezer_rsyncv2.engine import base
from freezer_rsyncv2.engine import restore_pass
from freezer_rsyncv2.fs import restore as fsrestore
from freezer_rsyncv2.fs import walk as fswalk
from freezer_rsyncv2.storage import sweep as sweeping
from freezer_rsyncv2.stream import compression, encoder, frames, place, records

if TYPE_CHECKING:
    from freezer_rsyncv2.stream import crypto

LOG = log.getLogger(__name__)

_BATCH = 1 << 20            # record bytes handed over per queue item
_QUEUE_ITEMS = 2            # batches waiting for the encoder
_RECV_PIECE = 4 << 20       # restore: bytes read from the pipe per piece
_PIPE_SIZE = 1 << 20
_FRAMES_AHEAD = 2           # restore: frames opened ahead of their records


class Rsyncv2Engine(base.BackupEngine):
    """The rsync-algorithm engine, built from freezer-agent's keywords."""

    def __init__(self, storage: Any = None, compression: str | None = "gzip",
                 encrypt_key: str | None = None, symlinks: Any = None,
                 exclude: Any = None, max_segment_size: int | None = None,
                 rsync_block_size: int | None = None, dry_run: bool = False,
                 progress: prog.Progress | None = None, **kwargs: Any) -> None:
        super().__init__(storage)
        self.config = cfgmod.EngineConfig.from_kwargs(
            compression=compression, encrypt_key=encrypt_key,
            symlinks=symlinks, exclude=exclude,
            max_segment_size=max_segment_size,
            rsync_block_size=rsync_block_size, dry_run=dry_run)
        self.dry_run = self.config.dry_run
        self.progress = progress or prog.NULL
        self.last_summary: prog.Summary | None = None
        # The pass file is read at first use, not here (cheap constructor).
        self._keyring: Any = None
        self._session: tuple[str, fsrestore.RestoreTree] | None = None
        #: Told ``(offset, path)`` of each ENTRY a restore applies (``records.decode``'s
        #: ``on_entry``): how ``verify`` checks a level's index against its data.
        self.entry_observer: Callable[[int, bytes], None] | None = None

    @property
    def name(self) -> str:
        return "rsyncv2"

    # -- Freezer's metadata -------------------------------------------------
    def metadata(self, backup_resource: str = "") -> dict:
        meta = {"engine_name": self.name,
                "engine_version": freezer_rsyncv2.__version__,
                "format_version": frames.VERSION,
                "compression": self.config.compression,
                "rsync_block_size": self.config.block_size or 0,
                "encryption": bool(self.config.encrypt_key)}
        if self.last_summary is not None:
            meta["summary"] = self.last_summary.as_dict()
        return meta

    def can_extend(self, prev: Any) -> bool:
        """Encryption on or off cannot change inside a chain."""
        try:
            was = bool(prev.metadata().get("encryption"))
        except Exception as err:     # unreadable metadata: do not build on it
            LOG.warning("cannot read the metadata of level %s: %s",
                        getattr(prev, "level", "?"), err)
            return False
        return was == bool(self.config.encrypt_key)

    def _codec(self) -> compression.Codec:
        return compression.by_name(self.config.compression)

    def _cipher(self):
        """A cipher for one new stream (None without encryption).

        Reads the pass file at first call (so ``backup()`` fails early on a
        bad one); the KDF runs when the stream's header is written (or
        earlier, from ``prepare_chain``), reusing the salt of the chain's
        level 0 when it can (docs/encryption.rst).
        """
        if not self.config.encrypt_key:
            return None
        return self._pass_keyring().writing_cipher(
            chain=self.chain_manifests[:1])

    def cipher_factory(self) -> Callable:
        """The cipher factory for reading streams, keyed by the pass file."""
        if not self.config.encrypt_key:
            return frames.null_cipher_for
        return self._pass_keyring().open_cipher

    def _pass_keyring(self) -> crypto.Keyring:
        if self._keyring is None:
            if not self.config.encrypt_key:
                raise ValueError("no pass file: this engine does not encrypt")
            # Imported here: cryptography's bindings cost a backup without encryption 10-15 ms.
            from freezer_rsyncv2.stream import crypto
            self._keyring = crypto.Keyring.from_pass_file(self.config.encrypt_key)
        return self._keyring

    def prepare_chain(self, level_zero_manifest: str | None) -> None:
        """Start deriving the level's keys on a background thread.

        The derivation (about 0.2 s) then overlaps the storage work that
        follows (listing, fetching the other manifests, starting the
        upload) instead of starting when the first stream needs its key.
        """
        if self.config.encrypt_key:
            self._pass_keyring().prefetch_chain(level_zero_manifest)

    # -- backup ---------------------------------------------------------------
    def backup(self, backup_resource: str, hostname_backup_name: str,
               incremental: bool, max_level: int | None,
               always_level: int | None, restart_always_level: float | None,
               queue_size: int = 0, sweep_age: float | None = None) -> int:
        """Write one level (``BackupEngine.backup``), stoppable by a signal.

        SIGINT, SIGTERM and SIGHUP raise ``interrupt.Interrupted`` here
        (where the host left their default action: ``interrupt.handling``).
        On our storages (``sweep.ours``) the leftovers of earlier runs of
        the name older than ``sweep_age`` seconds are swept first
        (``last_sweep``; default $FREEZER_RSYNCV2_SWEEP_AGE or a day), on
        any storage the scratch directories killed runs left here
        (``scratch.sweep``), and
        a failed or interrupted run removes what it wrote (``abandon``).
        """
        self.last_sweep: sweeping.SweepReport | None = None
        with interrupt.handling():
            self._cipher()
            if not os.path.lexists(backup_resource):
                raise errors.SourceError(f"backup source {backup_resource} does not exist")
            if os.path.islink(backup_resource):
                # The root itself is always followed, as `cd SRC && tar .` would.
                backup_resource = os.path.realpath(backup_resource)
            storage = sweeping.ours(self.storage)
            if not self.dry_run:
                age = sweeping.resolve_age(sweep_age)
                report = sweeping.SweepReport()
                try:
                    if storage is not None:
                        report = storage.sweep(self, hostname_backup_name, age)
                except (errors.Rsyncv2Error, OSError) as err:
                    LOG.warning("%s: the sweep of earlier runs' leftovers "
                                "failed: %s", hostname_backup_name, err)
                self.last_sweep = report.sweep_scratch(age)
            try:
                return super().backup(backup_resource, hostname_backup_name,
                                      incremental, max_level, always_level,
                                      restart_always_level, queue_size)
            except BaseException as err:
                if isinstance(err, interrupt.Interrupted):
                    LOG.warning("Backup of %s %s: removing what it wrote",
                                hostname_backup_name, err)
                if storage is not None:
                    storage.abandon(self)
                raise

    def _previous_paths(self, manifest_path: str) -> list[str]:
        if self.chain_manifests:
            return list(self.chain_manifests)
        # Called directly (as Freezer's base does) with only the previous
        # level's manifest: use it alone.
        if manifest_path and os.path.isfile(manifest_path) \
                and os.path.getsize(manifest_path) > 0:
            return [manifest_path]
        return []

    def backup_data(self, backup_path: str, manifest_path: str
                    ) -> Iterator[bytes]:
        """Yield the level's segments; the new manifest replaces manifest_path."""
        previous, summary, writer = self._start_level(manifest_path)
        self.progress.phase(f"backup level {len(previous)}")
        write_queue = handoff.RichQueue(_QUEUE_ITEMS)
        # A dry run stores nothing: the cheapest form.
        form = encoder.STREAM if self.dry_run else self.message_form()
        # The walk and delta run on a helper thread, the encoding here; an
        # error of either stops the other (threads.TaskGroup).  The walk
        # starts first: the encoder's cipher may wait for the key derivation.
        with threads.TaskGroup(on_stop=write_queue.force_stop) as group:
            group.go(self._produce, backup_path, previous, writer, summary,
                     write_queue, name="rsyncv2-sign-delta")
            stream = encoder.StreamEncoder(frames.KIND_DATA, self._codec(),
                                           self._cipher())
            pieces = self._encode(stream, write_queue.get_messages())
            for segment in encoder.messages(pieces, form,
                                            self._segment_size()):
                summary.stored_bytes += len(segment)
                yield segment
                del segment     # the storage may free it once stored
        if not self.dry_run:
            writer.frames = stream.table    # the per-file index of the data (docs/format.rst)
        self._finish_level(manifest_path, writer, summary)

    def _segment_size(self) -> int:
        """``max_segment_size``, or less where our own storage asks for it."""
        block = self.storage.io_block_size
        return self.config.max_segment_size if block is None else min(self.config.max_segment_size, block)

    def _start_level(self, manifest_path: str
                     ) -> tuple[list[str], prog.Summary, mw.ManifestWriter]:
        """The chain below, a fresh summary and the new level's manifest writer."""
        previous = self._previous_paths(manifest_path)
        summary = prog.Summary(level=len(previous))
        self.last_summary = None
        writer = mw.ManifestWriter(manifest_path + ".new", self._codec(),
                                   self._cipher(), level=len(previous),
                                   where=self.place)
        return previous, summary, writer

    def _finish_level(self, manifest_path: str, writer: mw.ManifestWriter,
                      summary: prog.Summary) -> None:
        summary.manifest_bytes = self.write_engine_meta(manifest_path, writer)
        summary.finish()
        self.last_summary = summary

    @staticmethod
    def _encode(stream: encoder.StreamEncoder, batches: Iterable[list]
                ) -> Iterator:
        for batch in batches:
            yield from stream.write_many(batch)
        yield from stream.close_many()

    def _produce(self, backup_path: str, previous: list[str],
                 writer: mw.ManifestWriter, summary: prog.Summary,
                 write_queue: handoff.RichQueue) -> None:
        """Helper thread: the level's records into the queue."""
        self._sign_delta(backup_path, previous, writer, summary, write_queue)
        write_queue.finish()

    def get_sign_delta(self, fs_path: str, manifest_path: str,
                       write_queue: Any) -> None:
        """Walk and delta ``fs_path`` against the chain; records onto write_queue.

        The records are queued in batches (lists of byte strings); the
        caller encodes them.  The new manifest is written to
        ``manifest_path`` when done.
        """
        previous, summary, writer = self._start_level(manifest_path)
        self._sign_delta(fs_path, previous, writer, summary, write_queue)
        self._finish_level(manifest_path, writer, summary)

    def _sign_delta(self, fs_path: str, previous: list[str],
                    writer: mw.ManifestWriter, summary: prog.Summary,
                    write_queue: Any) -> None:
        """Queue the level's record bytes in lists of pieces.

        Pieces are handed on uncopied (a file's data is read once into them).
        """
        cipher = self.cipher_factory()
        whole = bool(self.chain_manifests)
        places = self.chain_places if whole else None

        def chain() -> Iterator[mf.Prior]:
            return mf.overlay_lazy(previous, cipher, whole, places)

        def lookup(paths: set[bytes]) -> dict:
            found = ((prior.path, prior.resolve()) for prior in chain() if prior.path in paths)
            return {path: me for path, me in found if me is not None}

        bpass = backup_pass.BackupPass(
            self.config, fs_path, chain(), writer, len(previous), summary,
            self.progress, rename_lookup=lookup, where=self.place)
        batch: list[bytes] = []
        size = 0
        for rec in bpass.records():
            batch.append(rec)
            size += len(rec)
            if size >= _BATCH:
                write_queue.put(batch)
                batch, size = [], 0
        if batch:
            write_queue.put(batch)

    def write_engine_meta(self, manifest_path: str,
                          files_meta: mw.ManifestWriter) -> int:
        """Encode the level's manifest (engine metadata) at manifest_path."""
        size = files_meta.close()
        os.replace(manifest_path + ".new", manifest_path)
        return size

    # -- restore --------------------------------------------------------------
    @contextlib.contextmanager
    def restore_session(self, restore_path: str
                        ) -> Iterator[fsrestore.RestoreTree]:
        """One restore tree for all the levels of a restore.

        A big file that later levels patch in place is then written once
        and renamed when the last level is done (``fs.regular``); a failed
        restore removes what is still staged.
        """
        tree = fsrestore.RestoreTree(restore_path,
                                     on_warning=self._restore_warning)
        self._session = (restore_path, tree)
        try:
            with tree:
                yield tree
        finally:
            self._session = None

    def restore_level(self, restore_path: str, read_pipe: Any, backup: Any,
                      except_queue: Any = None) -> None:
        """Apply one level read from read_pipe; errors are raised, naming the level.

        ``except_queue`` is in Freezer's signature only: nothing is put there.
        """
        level = getattr(backup, "level", "?")
        self.progress.phase(f"restore level {level}")
        # Frames are checked (and decrypted) on a helper thread, a few
        # ahead of the records being applied.
        info: dict = {}
        plain = threads.read_ahead(
            frames.decode_frames(_recv_all(read_pipe), frames.KIND_DATA,
                                 self.cipher_factory(), info),
            _FRAMES_AHEAD, "rsyncv2-frames")
        self.apply_records(restore_path, backup, records.decode(plain, info, on_entry=self.entry_observer), info)

    def apply_records(self, restore_path: str, backup: Any, recs: Iterable[tuple], info: dict) -> None:
        """Apply one level's records (``records.decode``'s tuples, BEGIN to END) into restore_path.

        Inside ``restore_session`` the levels share its restore tree.
        Errors are raised naming the level.  ``info``: what the frame layer
        says of the stream (its version).
        """
        level = getattr(backup, "level", "?")
        try:
            session = self._session
            tree_cm: Any = (contextlib.nullcontext(session[1])
                            if session and session[0] == restore_path else
                            fsrestore.RestoreTree(
                                restore_path,
                                on_warning=self._restore_warning))
            with tree_cm as tree:
                restore_pass.RestorePass(tree, self.progress).run(
                    recs, level if isinstance(level, int) else None,
                    place.Place.of(backup), info)
        except errors.Rsyncv2Error as err:
            named = type(err)(f"level {level} of {getattr(backup, 'hostname_backup_name', '?')}: {err}")
            raise named from err

    def _restore_warning(self, path: bytes, message: str) -> None:
        LOG.warning("%s: %s", fswalk.show_path(path), message)
        self.progress.warning(path, message)


def _recv_all(read_pipe: Any) -> Iterator[bytes | bytearray]:
    """The bytes sent through read_pipe, in pieces of any size."""
    if sys.platform != "win32" \
            and type(read_pipe) is multiprocessing.connection.Connection:
        yield from _recv_raw(read_pipe.fileno())
        return
    while True:
        try:
            yield read_pipe.recv_bytes()
        except EOFError:
            return


def _recv_raw(fd: int) -> Iterator[bytearray]:
    """Read a multiprocessing Connection's messages from its descriptor.

    Same bytes as ``recv_bytes()`` until EOFError, without its cost (it
    allocates a message-sized buffer per read(2) and copies twice; about
    0.6 s of CPU per 512 MiB), and in pieces of at most _RECV_PIECE bytes
    whatever the storage's chunk size.  The framing is the Connection's:
    a ``!i`` length, or -1 and a ``!Q`` length.
    """
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)   # fewer switches
    while True:
        head = _read_exact(fd, 4, at_start=True)
        if head is None:
            return
        (size,) = struct.unpack("!i", head)
        if size == -1:
            (size,) = struct.unpack("!Q", _read_exact(fd, 8))
        elif size < 0:
            raise errors.CorruptRecordError(
                "pipe message with negative length %d" % size)
        while size:
            piece = _read_exact(fd, min(size, _RECV_PIECE))
            size -= len(piece)
            yield piece


def _read_exact(fd: int, n: int, at_start: bool = False) -> Any:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if not k:
            if at_start and not got:
                return None
            raise errors.TruncatedError(
                "the storage stream ends inside a pipe message")
        got += k
    return buf
