"""A bounded queue with Freezer's RichQueue interface that either side can force-stop.

Also the reading end of such a queue with a pipe's interface (``QueuePipe``),
which the base class hands to ``restore_level`` instead of a real pipe.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from oslo_log import log

from freezer_rsyncv2.errors import Rsyncv2Error

LOG = log.getLogger(__name__)


class QueueStopped(Rsyncv2Error):
    """The queue was force-stopped; the side that sees this must abandon its work."""


class RichQueue:
    """Bounded queue between one producer (the engine) and one consumer (a storage).

    Interface of ``freezer.utils.streaming.RichQueue`` so Freezer's storages'
    ``write_backup(rich_queue, backup)`` can consume it. Invariants: every
    state change (a message put or taken, ``finish()``, ``force_stop()``)
    wakes the other side at once (no polling), so the end of the stream is
    seen without delay and ``force_stop()`` from either side makes the other
    raise QueueStopped instead of hanging.  ``finish()`` is only called after the
    last ``put`` returned, so "finished and empty" means "drained".

    ``size`` is how many messages may wait between the two sides.  With
    ``size=0`` (a hand-off) none waits: ``put`` returns only once the
    consumer took the message, so the two sides hold two messages between
    them (the one being consumed and the one being produced) instead of
    ``size + 2``.
    """

    def __init__(self, size: int = 2) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"queue size must be an int >= 0, got {size!r}")
        self.size = size
        self._items: collections.deque[Any] = collections.deque()
        self._room = max(size, 1)
        self._put_count = 0         # messages put so far
        self._taken = 0             # messages the consumer took so far
        self._finished = False
        self._stopped = False
        self._changed = threading.Condition(threading.Lock())

    # -- state -----------------------------------------------------------------

    @property
    def is_finished(self) -> bool:
        """True once the producer called ``finish()`` (messages may remain queued)."""
        return self._finished

    @property
    def is_force_stop(self) -> bool:
        """True once either side called ``force_stop()`` (name as in Freezer)."""
        return self._stopped

    def finish(self) -> None:
        """Producer side: no more messages will be put."""
        with self._changed:
            self._finished = True
            self._changed.notify_all()

    def force_stop(self) -> None:
        """Either side: abort the transfer; blocked and future put/get raise QueueStopped."""
        with self._changed:
            if not self._stopped:
                LOG.debug("RichQueue force-stopped")
            self._stopped = True
            self._changed.notify_all()

    def check_stop(self) -> None:
        """Raise QueueStopped if the queue was force-stopped."""
        if self._stopped:
            raise QueueStopped("queue was force-stopped")

    def empty(self) -> bool:
        """True if no message is queued right now."""
        return not self._items

    def has_more(self) -> bool:
        """True while messages may still come; raises QueueStopped if stopped."""
        self.check_stop()
        return not self._finished or bool(self._items)

    def _wait(self, deadline: float | None = None) -> None:
        """Wait (lock held) for a change, or until ``deadline``."""
        self._changed.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))

    # -- producer ----------------------------------------------------------------

    def put(self, message: Any) -> None:
        """Queue ``message``, blocking while full; raises QueueStopped if stopped.

        Putting after ``finish()`` is a programming error: the consumer may
        already have returned, so the message would be silently lost.
        """
        if self._finished:
            raise RuntimeError("put() after finish()")
        with self._changed:
            while True:
                self.check_stop()
                if len(self._items) < self._room:
                    break
                self._wait()
            self._items.append(message)
            self._put_count += 1
            mine = self._put_count
            self._changed.notify_all()
            if self.size == 0:      # hand-off: until the consumer took it
                while self._taken < mine:
                    self.check_stop()
                    self._wait()

    def put_messages(self, messages: Iterable[Any]) -> None:
        """Put every message then ``finish()``.

        If producing fails, the queue is force-stopped before re-raising so
        the consumer stops with QueueStopped instead of waiting for a
        ``finish()`` that will never come.
        """
        try:
            for message in messages:
                self.put(message)
        except BaseException:
            self.force_stop()
            raise
        self.finish()

    # -- consumer ----------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Any:
        """Next message, blocking until one arrives.

        Raises QueueStopped if stopped, and ``queue.Empty`` when the producer
        finished and everything was consumed, or when ``timeout`` seconds
        passed without a message.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                self.check_stop()
                if self._items:
                    message = self._items.popleft()
                    self._taken += 1
                    self._changed.notify_all()      # wakes a waiting put()
                    return message
                # finish() happens after the last put(), so finished-then-empty is final.
                if self._finished:
                    raise queue.Empty
                if deadline is not None and time.monotonic() >= deadline:
                    raise queue.Empty
                self._wait(deadline)

    def get_messages(self) -> Iterator[Any]:
        """Yield messages until finished and drained; raises QueueStopped if stopped."""
        while self.has_more():
            try:
                yield self.get()
            except queue.Empty:
                continue


class QueuePipe:
    """The reading end of a RichQueue, with the interface ``restore_level`` reads.

    ``recv_bytes()`` returns the producer's messages as they are (references,
    no copy) and raises EOFError once the producer finished, or stopped (it
    failed: the producer reports why).  ``close()`` force-stops the queue, so a
    producer blocked in ``put`` stops with QueueStopped instead of waiting.
    """

    def __init__(self, rich_queue: RichQueue) -> None:
        self.rich_queue = rich_queue

    def recv_bytes(self, maxlength: int | None = None) -> Any:
        try:
            message = self.rich_queue.get()
        except (queue.Empty, QueueStopped):
            raise EOFError from None
        if maxlength is not None and len(message) > maxlength:
            self.close()
            raise OSError("message of %d bytes is longer than maxlength %d"
                          % (len(message), maxlength))
        return message

    def close(self) -> None:
        self.rich_queue.force_stop()
