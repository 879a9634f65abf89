"""Ordered background work: calls run one at a time, in order, on a helper thread.

Hashing (SHA-256, block signatures) releases the GIL, so feeding it from
another thread lets it run on a second core while the caller reads, matches
or writes.  The backlog is bounded, so memory stays bounded too.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
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
