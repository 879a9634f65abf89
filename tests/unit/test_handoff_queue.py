"""RichQueue tests: ordered transfer between threads, force-stop from either side, no hangs."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from freezer_rsyncv2.handoff import QueuePipe, QueueStopped, RichQueue
from freezer_rsyncv2.errors import Rsyncv2Error, StorageError

POLL = 0.05
JOIN = 5.0


class Worker(threading.Thread):
    """A daemon thread that records its result or exception, so tests can join with a timeout."""

    def __init__(self, target: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._target_fn = target
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._target_fn()
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            self.error = exc

    def finish(self) -> Worker:
        self.join(JOIN)
        assert not self.is_alive(), "thread hung"
        return self


def started(target: Callable[[], Any]) -> Worker:
    worker = Worker(target)
    worker.start()
    return worker


def test_queue_stopped_is_library_error_not_storage_error() -> None:
    assert issubclass(QueueStopped, Rsyncv2Error)
    assert not issubclass(QueueStopped, StorageError)


@pytest.mark.parametrize("size", [-1, True, 1.5, None])
def test_bad_size(size: object) -> None:
    with pytest.raises(ValueError):
        RichQueue(size)  # type: ignore[arg-type]


def test_transfer_in_order_between_threads() -> None:
    rich = RichQueue(size=2)
    messages = [bytes([i % 256]) * (i % 13) for i in range(500)]
    producer = started(lambda: rich.put_messages(messages))
    consumer = started(lambda: list(rich.get_messages()))
    assert producer.finish().error is None
    assert consumer.finish().error is None
    assert consumer.result == messages
    assert not rich.has_more()


def test_slow_producer_does_not_end_consumer_early() -> None:
    rich = RichQueue(size=1)

    def produce() -> None:
        for i in range(3):
            time.sleep(3 * POLL)
            rich.put(i)
        rich.finish()

    producer = started(produce)
    consumer = started(lambda: list(rich.get_messages()))
    producer.finish()
    assert consumer.finish().result == [0, 1, 2]


def test_get_messages_of_finished_empty_queue() -> None:
    rich = RichQueue()
    rich.finish()
    assert list(rich.get_messages()) == []
    with pytest.raises(queue.Empty):
        rich.get()


def test_get_timeout() -> None:
    rich = RichQueue()
    start = time.monotonic()
    with pytest.raises(queue.Empty):
        rich.get(timeout=0.15)
    assert time.monotonic() - start < 2


def test_consumer_stop_unblocks_producer() -> None:
    rich = RichQueue(size=1)
    producer = started(lambda: rich.put_messages(iter(lambda: b"x", None)))  # endless
    assert rich.get() == b"x"
    rich.force_stop()
    assert isinstance(producer.finish().error, QueueStopped)
    assert not rich.is_finished


def test_producer_stop_unblocks_consumer() -> None:
    rich = RichQueue(size=2)
    consumer = started(lambda: list(rich.get_messages()))
    rich.put(b"one")
    time.sleep(3 * POLL)  # the consumer is now blocked waiting for more
    rich.force_stop()
    assert isinstance(consumer.finish().error, QueueStopped)


def test_stop_wins_over_queued_messages() -> None:
    rich = RichQueue(size=4)
    rich.put(b"a")
    rich.put(b"b")
    rich.force_stop()
    with pytest.raises(QueueStopped):
        rich.get()
    with pytest.raises(QueueStopped):
        rich.has_more()
    with pytest.raises(QueueStopped):
        rich.put(b"c")
    with pytest.raises(QueueStopped):
        rich.check_stop()


def test_failing_producer_iterable_stops_consumer() -> None:
    rich = RichQueue(size=2)

    def messages():
        yield b"ok"
        raise OSError("read error")

    consumer = started(lambda: list(rich.get_messages()))
    with pytest.raises(OSError):
        rich.put_messages(messages())
    assert rich.is_force_stop
    assert isinstance(consumer.finish().error, QueueStopped)


def test_put_after_finish_is_an_error() -> None:
    rich = RichQueue()
    rich.finish()
    with pytest.raises(RuntimeError):
        rich.put(b"late")


def test_freezer_style_consumer_loop() -> None:
    """The loop Freezer's fslike/swift write_backup use: iterate get_messages()."""
    rich = RichQueue(size=2)
    producer = started(lambda: rich.put_messages([b"a", b"bc", b""]))
    received = bytearray()
    for message in rich.get_messages():
        received += message
    producer.finish()
    assert bytes(received) == b"abc"
    assert rich.empty()


def test_hand_off_put_returns_once_taken() -> None:
    """size=0: nothing waits in the queue; put() returns when the consumer took it."""
    rich = RichQueue(size=0)
    producer = started(lambda: rich.put(b"a"))
    time.sleep(3 * POLL)
    assert producer.is_alive()          # nobody took it yet
    assert rich.get() == b"a"
    producer.finish()
    assert producer.error is None


def test_hand_off_put_without_consumer_stops_on_force_stop() -> None:
    rich = RichQueue(size=0)
    producer = started(lambda: rich.put(b"a"))
    time.sleep(3 * POLL)
    rich.force_stop()
    assert isinstance(producer.finish().error, QueueStopped)


@pytest.mark.parametrize("size", [0, 1, 3])
def test_producer_is_at_most_size_plus_one_ahead(size: int) -> None:
    """What the two sides hold: the consumer's message, ``size`` queued, one being put."""
    rich = RichQueue(size=size)
    produced = []

    def messages():
        for i in range(20):
            produced.append(i)
            yield i

    producer = started(lambda: rich.put_messages(messages()))
    ahead = []
    for got in rich.get_messages():
        time.sleep(0.01)                # a slow consumer: the producer waits
        ahead.append(len(produced) - 1 - got)
    producer.finish()
    assert producer.error is None
    assert max(ahead) == size + 1


def test_queue_pipe_reads_like_a_pipe() -> None:
    rich = RichQueue(size=0)
    pipe = QueuePipe(rich)
    blocks = [b"one", b"", b"three"]
    producer = started(lambda: rich.put_messages(blocks))
    got = [pipe.recv_bytes() for _ in blocks]
    assert all(a is b for a, b in zip(got, blocks))     # references, no copies
    with pytest.raises(EOFError):
        pipe.recv_bytes()
    with pytest.raises(EOFError):
        pipe.recv_bytes()
    producer.finish()


def test_queue_pipe_ends_when_the_producer_stops() -> None:
    rich = RichQueue(size=0)
    pipe = QueuePipe(rich)
    rich.force_stop()
    with pytest.raises(EOFError):
        pipe.recv_bytes()


def test_queue_pipe_close_stops_the_producer() -> None:
    rich = RichQueue(size=0)
    pipe = QueuePipe(rich)
    producer = started(lambda: rich.put_messages(iter(lambda: b"x", None)))  # endless
    assert pipe.recv_bytes() == b"x"
    pipe.close()
    assert isinstance(producer.finish().error, QueueStopped)


def test_queue_pipe_maxlength() -> None:
    rich = RichQueue(size=1)
    rich.put(b"abcd")
    with pytest.raises(OSError):
        QueuePipe(rich).recv_bytes(maxlength=3)
    assert rich.is_force_stop


@pytest.mark.parametrize("size", [0, 2])
def test_consumer_sees_the_end_at_once(size: int) -> None:
    """The last get() returns when finish() is called (a wake-up, not a poll)."""
    rich = RichQueue(size=size)
    consumer = started(lambda: list(rich.get_messages()))
    rich.put(b"a")
    time.sleep(0.05)            # the consumer now waits for the next message
    start = time.monotonic()
    rich.finish()
    assert consumer.finish().result == [b"a"]
    assert time.monotonic() - start < 1.0


def test_force_stop_wakes_both_sides_at_once() -> None:
    full = RichQueue(size=1)
    full.put(b"a")
    producer = started(lambda: full.put(b"b"))       # blocks: no room
    empty = RichQueue(size=1)
    consumer = started(empty.get)                     # blocks: nothing queued
    time.sleep(0.05)
    start = time.monotonic()
    full.force_stop()
    empty.force_stop()
    assert isinstance(producer.finish().error, QueueStopped)
    assert isinstance(consumer.finish().error, QueueStopped)
    assert time.monotonic() - start < 1.0
