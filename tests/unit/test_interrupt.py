"""interrupt.handling: which handlers it installs, what a signal raises, what it leaves."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from freezer_rsyncv2 import interrupt


@pytest.fixture(autouse=True)
def saved_handlers() -> Iterator[None]:
    """Every test leaves the process's handlers and excepthook as it found them."""
    saved = {s: signal.getsignal(s) for s in interrupt.SIGNALS}
    hook = sys.excepthook
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        sys.excepthook = hook


def deliver(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(2)       # the handler raises before this ends
    pytest.fail("the signal raised nothing")


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129),
                                         (signal.SIGINT, 130)])
def test_a_signal_raises_interrupted(signum: int, code: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    with pytest.raises(interrupt.Interrupted) as caught:
        with interrupt.handling(take_over=True):
            deliver(signum)
    assert caught.value.signum == signum and caught.value.exit_code == code
    assert str(caught.value) == "interrupted by %s" % signal.Signals(signum).name
    assert isinstance(caught.value, KeyboardInterrupt) == (signum == signal.SIGINT)
    assert interrupt.received() == signum
    # a second signal would now end the process: the default actions stay
    for other in interrupt.SIGNALS:
        assert signal.getsignal(other) == signal.SIG_DFL


def test_without_a_signal_the_previous_handlers_come_back() -> None:
    def mine(*_args: object) -> None:
        pass

    signal.signal(signal.SIGTERM, mine)
    with interrupt.handling(take_over=True):
        assert signal.getsignal(signal.SIGTERM) is not mine
        with interrupt.handling():      # nested: changes nothing
            pass
        assert signal.getsignal(signal.SIGTERM) is not mine
    assert signal.getsignal(signal.SIGTERM) is mine
    assert interrupt.received() is None


def test_a_library_call_leaves_the_hosts_handlers_and_ignored_signals() -> None:
    def host(*_args: object) -> None:
        pass

    signal.signal(signal.SIGTERM, host)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with interrupt.handling():
        assert signal.getsignal(signal.SIGTERM) is host
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_command_line_takes_over_all_but_ignored_signals() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with interrupt.handling(take_over=True):
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)


def test_outside_the_main_thread_nothing_changes() -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def other() -> None:
        with interrupt.handling(take_over=True):
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == [before]


def test_an_interrupted_library_call_installs_the_exit_hook() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    hook = sys.excepthook
    with pytest.raises(interrupt.Interrupted):
        with interrupt.handling():
            deliver(signal.SIGTERM)
    # the hook only acts on an uncaught Interrupted (tests/functional/
    # test_interrupts.py runs one); anything else goes to the previous hook
    assert sys.excepthook is not hook


def test_a_signal_while_the_handlers_change_is_not_lost(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Delivered in the middle of the set-up: raised once it is done."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    real = signal.getsignal

    def getsignal(signum: int):
        if signum == signal.SIGHUP:     # SIGINT and SIGTERM are ours by now
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):       # let the handler run here
                if interrupt._pending is not None:
                    break
                time.sleep(0.001)
        return real(signum)

    monkeypatch.setattr(signal, "getsignal", getsignal)
    with pytest.raises(interrupt.Interrupted) as caught:
        with interrupt.handling(take_over=True):
            pytest.fail("the body ran")
    assert caught.value.signum == signal.SIGTERM
    assert interrupt.received() == signal.SIGTERM
