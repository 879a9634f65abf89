"""OrderedWorker: calls run in order on one helper thread, errors reach the caller."""

from __future__ import annotations

import threading
import time

import pytest

from freezer_rsyncv2.threads import OrderedWorker


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
