"""Helper threads: a task group, ordered background work, read-ahead.

``TaskGroup`` is the one way the library runs threads that stand or fall
together (Go's errgroup): the first error wins, stops the others, and is
raised by the caller.  Hand-offs between threads go through
``handoff.RichQueue``, which wakes the other side on every change (no
polling) and which either side can force-stop.

Hashing (BLAKE3, block signatures) releases the GIL, so feeding it from
another thread (``OrderedWorker``) lets it run on a second core while the
caller reads, matches or writes.  Every backlog is bounded, so memory stays
bounded too.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from freezer_rsyncv2.handoff import QueueStopped, RichQueue

#: Below this many bytes a file is hashed inline: a hand-off costs more.
PARALLEL_MIN = 4 << 20

#: Seconds a stopped group waits for its threads when leaving by an error
#: (a signal): a thread stuck in a network call must not keep the run alive.
STOP_WAIT = 30.0


class TaskGroup:
    """Threads that stand or fall together: the first error wins.

    ``go`` runs a call on a new (daemon) thread.  When one raises, the group
    stops: ``stopped`` is set and ``on_stop`` runs once (a queue's
    ``force_stop``, so that the other side stops at its next hand-off).
    A ``QueueStopped`` is what a stop causes: a thread's other error wins
    over it.  Leaving the ``with`` block normally joins every thread and
    raises the first error.  Leaving it by an exception stops the group and
    joins for at most ``stop_wait`` seconds; the exception goes on, unless
    it is of a kind in ``explained`` (what the owner sees when a thread
    failed: by default ``QueueStopped``) and a thread failed: then the
    thread's error is raised, from it.
    """

    def __init__(self, on_stop: Callable[[], None] | None = None,
                 explained: tuple[type[BaseException], ...] = (QueueStopped,),
                 stop_wait: float | None = STOP_WAIT) -> None:
        self.stopped = threading.Event()
        self._on_stop = on_stop
        self._explained = explained
        self._stop_wait = stop_wait
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()

    def go(self, fn: Callable[..., Any], *args: Any, name: str) -> None:
        def run() -> None:
            try:
                fn(*args)
            except BaseException as err:     # raised by the group's owner
                with self._lock:
                    self._errors.append(err)
                self.stop()

        thread = threading.Thread(target=run, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self) -> None:
        """Stop the group (idempotent): ``stopped`` is set, ``on_stop`` runs once."""
        with self._lock:
            if self.stopped.is_set():
                return
            self.stopped.set()
        if self._on_stop is not None:
            self._on_stop()

    def error(self) -> BaseException | None:
        """The first error of a thread; a ``QueueStopped`` only if there is no other."""
        with self._lock:
            errors = list(self._errors)
        real = [e for e in errors if not isinstance(e, QueueStopped)]
        first = real or errors
        return first[0] if first else None

    def running(self) -> bool:
        """Whether a thread of the group is still running."""
        return any(thread.is_alive() for thread in self._threads)

    def join(self, timeout: float | None = None) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def __enter__(self) -> TaskGroup:
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.join()
            error = self.error()
            if error is not None:
                raise error
            return
        self.stop()
        self.join(self._stop_wait)
        error = self.error()
        if error is not None and not isinstance(error, QueueStopped) \
                and isinstance(exc, self._explained):
            raise error from exc


class OrderedWorker:
    """One helper thread; ``submit`` blocks while ``depth`` calls are pending.

    Errors surface in the caller: from ``submit`` (of an earlier call) or from
    ``wait``.  The thread starts at the first ``submit``.
    """

    def __init__(self, name: str, depth: int = 4) -> None:
        self._name = name
        self._depth = depth
        self._pool: ThreadPoolExecutor | None = None
        self._pending: collections.deque[Future] = collections.deque()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix=self._name)
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) > self._depth:
            self._pending.popleft().result()

    def wait(self) -> None:
        """Wait until every submitted call has run; raise the first error."""
        while self._pending:
            self._pending.popleft().result()

    def discard(self) -> None:
        """Drop pending calls (those not started) and wait for the running one."""
        pending, self._pending = self._pending, collections.deque()
        for future in pending:
            future.cancel()
        for future in pending:
            if not future.cancelled():
                future.exception()

    def close(self) -> None:
        """Discard pending work and stop the thread (idempotent)."""
        self.discard()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def first_while(slow: Iterator[Any], fast: Iterator[Any], limit: int,
                name: str = "rsyncv2-first") -> tuple[Any, list[Any]]:
    """``next(slow, None)`` on a helper thread while this one takes from ``fast``.

    Returns that first item and the items taken from ``fast`` meanwhile (at
    most ``limit``; fewer if ``fast`` ends or ``slow`` answers first).  An
    error of ``slow`` is raised here; the helper has always ended on return.
    Used where the first item of ``slow`` waits for something (a key
    derivation) that ``fast`` (a tree walk) does not need.
    """
    out: list[Any] = []
    box: dict[str, Any] = {}

    def first() -> None:
        box["item"] = next(slow, None)

    with TaskGroup(stop_wait=None) as group:
        group.go(first, name=name)
        while group.running() and len(out) < limit:
            item = next(fast, _END)
            if item is _END:
                break
            out.append(item)
    return box["item"], out


_END = object()


def read_ahead(items: Iterator[Any], depth: int,
               name: str = "rsyncv2-ahead") -> Iterator[Any]:
    """Yield ``items``, produced on a helper thread up to ``depth`` ahead.

    An error of ``items`` is raised here after the items before it, in
    order.  When the caller stops early (an error, ``close()``), the helper
    stops at its next hand-off; it is not waited for, since it may be
    blocked in a read that only the caller's cleanup ends.
    """
    ahead = RichQueue(depth)

    def produce() -> None:
        try:
            for item in items:
                ahead.put(item)
        finally:
            ahead.finish()      # after an error too: what came before it is taken first

    with TaskGroup(stop_wait=0) as group:
        group.go(produce, name=name)
        try:
            yield from ahead.get_messages()
        finally:
            ahead.force_stop()      # a helper still producing stops at its next put
