"""OrderedWorker, first_while and read_ahead: helper threads whose results and errors reach the caller in order."""

from __future__ import annotations

import threading
import time

import pytest

from freezer_rsyncv2.threads import OrderedWorker, first_while, read_ahead


def test_calls_run_in_order_on_one_other_thread():
    seen: list[tuple[int, str]] = []
    worker = OrderedWorker("t", depth=2)
    try:
        for i in range(50):
            worker.submit(lambda i=i: seen.append((i, threading.current_thread().name)))
        worker.wait()
    finally:
        worker.close()
    assert [i for i, _name in seen] == list(range(50))
    names = {name for _i, name in seen}
    assert len(names) == 1 and threading.current_thread().name not in names


def test_backlog_is_bounded():
    gate = threading.Event()
    worker = OrderedWorker("t", depth=2)
    started = []

    def slow(i):
        started.append(i)
        gate.wait(5)

    try:
        done = threading.Event()

        def producer():
            for i in range(5):
                worker.submit(slow, i)
            done.set()

        t = threading.Thread(target=producer)
        t.start()
        time.sleep(0.2)
        assert not done.is_set()    # blocked: at most depth calls pending
        gate.set()
        t.join(5)
        assert done.is_set()
        worker.wait()
    finally:
        worker.close()
    assert started == list(range(5))


def test_error_surfaces_in_wait_and_later_submits():
    worker = OrderedWorker("t", depth=1)

    def boom():
        raise ValueError("bad")

    try:
        worker.submit(boom)
        with pytest.raises(ValueError):
            for _ in range(3):      # the error comes back from a later submit
                worker.submit(lambda: None)
            worker.wait()
    finally:
        worker.close()


def test_discard_drops_pending_and_close_is_idempotent():
    gate = threading.Event()
    ran = []
    worker = OrderedWorker("t", depth=10)
    worker.submit(gate.wait, 5)
    for i in range(5):
        worker.submit(ran.append, i)
    gate.set()
    worker.discard()
    worker.wait()           # nothing left to wait for
    worker.close()
    worker.close()
    assert len(ran) <= 5


def _slow(gate: threading.Event, items):
    assert gate.wait(10)
    yield from items


def test_first_while_takes_from_fast_until_slow_answers():
    gate = threading.Event()
    taken = []

    def fast():
        for i in range(1000):
            taken.append(i)
            if i == 5:
                gate.set()       # slow answers from here on
                time.sleep(0.05)
            yield i

    slow = _slow(gate, ["a", "b"])
    first, walked = first_while(slow, fast(), limit=100)
    assert first == "a" and next(slow) == "b"
    assert walked == taken and 6 <= len(walked) <= 100


def test_first_while_stops_at_the_limit_or_the_end_of_fast():
    gate = threading.Event()
    timer = threading.Timer(0.1, gate.set)
    timer.start()
    first, walked = first_while(_slow(gate, []), iter(range(10)), limit=3)
    assert first is None and walked == [0, 1, 2]
    gate.clear()
    timer = threading.Timer(0.1, gate.set)
    timer.start()
    assert first_while(_slow(gate, [1]), iter([7]), limit=3) == (1, [7])


def test_first_while_raises_the_error_of_slow_after_the_helper_ended():
    def slow():
        time.sleep(0.05)
        raise KeyError("derivation failed")
        yield

    before = threading.active_count()
    with pytest.raises(KeyError, match="derivation failed"):
        first_while(slow(), iter(range(5)), limit=10)
    assert threading.active_count() == before


def test_first_while_joins_the_helper_when_fast_fails():
    gate = threading.Event()
    threading.Timer(0.05, gate.set).start()

    def fast():
        yield 1
        raise OSError("walk failed")

    slow = _slow(gate, ["x"])
    with pytest.raises(OSError, match="walk failed"):
        first_while(slow, fast(), limit=10)
    assert not [t for t in threading.enumerate() if t.name == "rsyncv2-first"]


def _produced(log: list, n: int, fail_at: int | None = None):
    for i in range(n):
        if i == fail_at:
            raise ValueError("item %d is bad" % i)
        log.append((i, threading.current_thread().name))
        yield i


def test_read_ahead_yields_every_item_in_order_from_a_helper():
    log: list = []
    assert list(read_ahead(_produced(log, 200), 2, "ahead-test")) == list(range(200))
    assert {name for _i, name in log} == {"ahead-test"}


def test_read_ahead_raises_the_error_after_the_items_before_it():
    got = []
    with pytest.raises(ValueError, match="item 5 is bad"):
        for item in read_ahead(_produced([], 10, fail_at=5), 3):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]


def test_read_ahead_runs_at_most_depth_ahead_and_stops_when_closed():
    log: list = []
    ahead = read_ahead(_produced(log, 1000), 2)
    assert next(ahead) == 0
    deadline = time.monotonic() + 5
    while len(log) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    # taken: 1; queued: 2; one more produced and waiting for room
    assert len(log) == 4
    ahead.close()
    deadline = time.monotonic() + 5
    while [t for t in threading.enumerate() if t.name == "rsyncv2-ahead"] \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not [t for t in threading.enumerate() if t.name == "rsyncv2-ahead"]
    assert len(log) == 4        # the helper stopped instead of producing on
