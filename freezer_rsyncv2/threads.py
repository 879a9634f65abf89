"""Ordered background work: calls run one at a time, in order, on a helper thread.

Hashing (SHA-256, block signatures) releases the GIL, so feeding it from
another thread lets it run on a second core while the caller reads, matches
or writes.  The backlog is bounded, so memory stays bounded too.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

#: Below this many bytes a file is hashed inline: a hand-off costs more.
PARALLEL_MIN = 4 << 20


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
        try:
            box["item"] = next(slow, None)
        except BaseException as err:     # re-raised by the caller
            box["error"] = err

    helper = threading.Thread(target=first, name=name, daemon=True)
    helper.start()
    try:
        while helper.is_alive() and len(out) < limit:
            item = next(fast, _END)
            if item is _END:
                break
            out.append(item)
    finally:
        helper.join()
    if "error" in box:
        raise box["error"]
    return box["item"], out


_END = object()


def read_ahead(items: Iterator[Any], depth: int,
               name: str = "rsyncv2-ahead") -> Iterator[Any]:
    """Yield ``items``, produced on a helper thread up to ``depth`` ahead.

    An error of ``items`` is raised here after the items before it, in
    order.  When the caller stops early (an error, ``close()``), the
    helper stops at its next item; it is not waited for, since it may be
    blocked in a read that only the caller's cleanup ends.
    """
    ahead: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(entry: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                ahead.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as err:     # re-raised by the caller
            put(("error", err))

    threading.Thread(target=produce, name=name, daemon=True).start()
    try:
        while True:
            kind, value = ahead.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
