"""What our storages do about interrupted runs: abandon this run's writes, sweep older runs'.

``Cleanup`` is a base class of ``Storage`` (these are extras of our
storages, not part of Freezer's interface: the engine reaches them through
``sweep.ours``).  A storage records each ``write_backup`` in progress and
each level written but not yet published by ``put_metadata``; when a
backup fails or is interrupted, ``abandon(engine)`` stops that engine's
writes still running (their queue is force-stopped, so the writer removes
its temporary file or aborts its multipart upload) and removes the levels
it stored without publishing.  ``sweep`` removes what runs that could not
clean up (SIGKILL, power cut) left (``storage/sweep.py``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from oslo_log import log

from freezer_rsyncv2.errors import Rsyncv2Error
from freezer_rsyncv2.storage import sweep as sweeping
from freezer_rsyncv2.storage.layout import level_published, path_join

if TYPE_CHECKING:
    from freezer_rsyncv2.storage.base import Storage
    from freezer_rsyncv2.storage.layout import Backup

LOG = log.getLogger(__name__)

#: Seconds ``abandon`` waits for the writes it stopped to finish their cleanup.
ABANDON_TIMEOUT = 30.0

_STATE_LOCK = threading.Lock()


class _RunState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        # token -> (queue, backup, done): write_backup calls in progress
        self.writes: dict[object, tuple[Any, Backup, threading.Event]] = {}
        # data_prefix_path -> backup: levels stored, not yet published
        self.unpublished: dict[str, Backup] = {}


class Cleanup:
    """Abandon and sweep (see the module docstring); mixed into ``Storage``."""

    storage_path: str
    # rmtree(path) and the rest of the interface come from Storage.
    rmtree: Callable[[str], None]

    def _run_state(self) -> _RunState:
        state: _RunState | None = self.__dict__.get("_cleanup_state")
        if state is None:
            with _STATE_LOCK:
                state = self.__dict__.setdefault("_cleanup_state", _RunState())
        return state

    # -- this run ------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self, rich_queue: Any, backup: Backup) -> Iterator[None]:
        """Around a ``write_backup``: ``abandon`` can stop it and waits for its end.

        The level counts as unpublished from here until ``put_metadata``
        publishes it.
        """
        state = self._run_state()
        token = object()
        done = threading.Event()
        with state.lock:
            state.writes[token] = (rich_queue, backup, done)
            state.unpublished[backup.data_prefix_path] = backup
        try:
            yield
        finally:
            with state.lock:
                state.writes.pop(token, None)
            done.set()

    def _published(self, backup: Backup) -> None:
        """``put_metadata`` published this level: ``abandon`` leaves it alone."""
        state = self._run_state()
        with state.lock:
            state.unpublished.pop(backup.data_prefix_path, None)

    def abandon(self, engine: Any, timeout: float = ABANDON_TIMEOUT) -> bool:
        """Extra: undo what ``engine``'s failed or interrupted backup wrote here.

        Its writes still running are stopped (their queue force-stopped:
        the temporary file is removed, the multipart upload aborted) and
        waited for, at most ``timeout`` seconds; then each level it stored
        without publishing is removed.  Returns False if a write did not
        end in time (what it leaves, the next sweep finds).  Never raises a
        storage error (logged instead): the caller is already failing.
        """
        state = self._run_state()
        with state.lock:
            writes = [(q, done) for q, b, done in state.writes.values() if b.engine is engine]
            levels = [b for b in state.unpublished.values() if b.engine is engine]
            for b in levels:
                state.unpublished.pop(b.data_prefix_path, None)
        for rich_queue, _done in writes:
            stop = getattr(rich_queue, "force_stop", None)
            if stop is not None:
                stop()
        deadline = time.monotonic() + timeout
        ended = all(done.wait(max(0.0, deadline - time.monotonic())) for _q, done in writes)
        if not ended:
            LOG.warning("A storage write did not stop within %.0f s; the next sweep removes "
                        "what it leaves", timeout)
        for backup in levels:
            try:
                self._remove_unpublished(backup)
            except (Rsyncv2Error, OSError) as exc:
                LOG.warning("Could not remove the unfinished level %s: %s (the next sweep "
                            "removes it)", backup.data_prefix_path, exc)
        return ended

    def _remove_unpublished(self, backup: Backup) -> None:
        if level_published(self, backup.metadata_path):
            return
        LOG.info("Removing the unfinished level %s", backup.data_prefix_path)
        self.rmtree(backup.data_prefix_path)
        level_dir = backup.data_prefix_path.rsplit("/", 1)[1]
        self.rmtree(path_join(backup.increments_metadata_path, level_dir))
        self.remove_empty_dir(backup.increments_data_path)
        self.remove_empty_dir(backup.increments_metadata_path)

    # -- older runs -----------------------------------------------------------

    def sweep(self, engine: Any, hostname_backup_name: str,
              max_age: float = sweeping.DEFAULT_AGE) -> sweeping.SweepReport:
        """Extra: remove the leftovers of interrupted runs of one backup name.

        Temporary objects, incomplete multipart uploads and unfinished
        levels (stored without metadata) older than ``max_age`` seconds,
        none a running backup may still own (``storage/sweep.py``).
        """
        max_age = sweeping.parse_age(max_age, "sweep age")
        report = sweeping.SweepReport()
        sweeping.sweep(cast("Storage", self), engine, hostname_backup_name, time.time() - max_age, report)
        return report

    # -- what each storage supplies (defaults: nothing found, nothing removed) --

    def sweep_temporaries(self, roots: tuple[str, ...], cutoff: float,
                          report: sweeping.SweepReport) -> set[tuple[str, str]]:
        """Remove temporary objects and incomplete uploads under ``roots``
        last changed before ``cutoff``; return the levels, as (chain, level
        directory) (``sweep.level_key``), holding one that was kept."""
        return set()

    def subtree_info(self, path: str) -> tuple[float | None, int, int]:
        """(last change of the objects under ``path``, or None if it holds
        none; their bytes; their number).  The default cannot tell, so the
        sweep never removes anything."""
        return float("inf"), 0, 0

    def object_paths(self, root: str) -> set[str] | None:
        """The regular files (objects) below ``root``, as paths relative to
        it; None when the storage cannot list them in one go."""
        return None

    def remove_empty_dir(self, path: str) -> None:
        """Remove directory ``path`` if it is empty (no-op where directories are implicit)."""
