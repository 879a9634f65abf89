"""SIGINT, SIGTERM and SIGHUP end a run the way an error does: cleanup first.

Python's default for SIGTERM and SIGHUP is to die on the spot, so a backup
stopped by systemd, ``timeout`` or freezer-scheduler left its temporary
data object (or its S3 multipart upload) behind for good.  Inside
``handling()`` the three signals raise ``Interrupted`` in the main thread
instead, as SIGINT raises KeyboardInterrupt: every ``finally`` and
``except BaseException`` on the way up runs (a storage removes its
temporary file or aborts its upload, a restore removes its staged files),
and the caller reports it.  The handler only raises: it takes no lock and
touches no queue (the main thread may hold that very lock); the cleanup is
done by the code the exception unwinds through.

The first signal also restores the default action of all three, so a
second signal ends the process at once, without any further cleanup.

Two ways to use it:

* a program that owns the process (our command line):
  ``handling(take_over=True)`` around everything, then it catches
  ``Interrupted`` and exits with ``exit_code`` (128 + the signal number:
  130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP);
* a library call (``Rsyncv2Engine.backup`` inside freezer-agent or any
  other host): ``handling()`` installs its handlers only where the host
  left the default action (a handler of the host's own, or an ignored
  signal, stays as it is) and only in the main thread.  If ``Interrupted``
  then leaves the outermost ``handling()``, it keeps going up through the
  host's own cleanup (freezer-agent removes its snapshots in a
  ``finally``); should nobody catch it, the process ends by that very
  signal (its default action, so a parent sees -15 for SIGTERM as before)
  after one line on stderr instead of a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

#: The signals that stop a run.
SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None),
                            getattr(signal, "SIGTERM", None),
                            getattr(signal, "SIGHUP", None)) if s is not None)

_active = False                 # a handling() context is in force
_installed: dict[int, Any] = {}     # signal -> the handler ours replaced
_received: int | None = None    # the first signal received inside handling()
_busy = False                   # handling() is changing handlers: signals wait
_pending: int | None = None     # a signal that came meanwhile


class Interrupted(BaseException):
    """The run was stopped by a signal (``signum``).

    A BaseException, like KeyboardInterrupt, so ``except Exception``
    handlers let it through while ``finally`` blocks run.  The one raised
    for SIGINT is also a KeyboardInterrupt (``KeyboardInterrupted``), so
    code that handles Ctrl-C keeps doing so.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def signal_name(self) -> str:
        return signal_name(self.signum)

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process this signal ended: 128 + signum."""
        return 128 + self.signum

    def __str__(self) -> str:
        return f"interrupted by {self.signal_name}"

    @staticmethod
    def of(signum: int) -> Interrupted:
        """The exception raised for ``signum``."""
        if signum == signal.SIGINT:
            return KeyboardInterrupted(signum)
        return Interrupted(signum)


class KeyboardInterrupted(Interrupted, KeyboardInterrupt):
    """``Interrupted`` by SIGINT: also a KeyboardInterrupt."""


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "signal %d" % signum


def received() -> int | None:
    """The signal that interrupted the current ``handling()`` context, if any."""
    return _received


def _handler(signum: int, _frame: Any) -> None:
    global _received, _pending
    if _busy:
        # handling() is setting up or restoring the handlers: it deals
        # with the signal once done (raising it, or sending it again).
        if _pending is None:
            _pending = signum
        return
    if _received is None:
        _received = signum
    # A second signal must end the process at once: the default action
    # from now on (nothing here may block, so no lock is taken).
    for other in list(_installed):
        with contextlib.suppress(ValueError, OSError):
            signal.signal(other, signal.SIG_DFL)
    raise Interrupted.of(signum)


def _is_default(handler: Any, signum: int) -> bool:
    if handler == signal.SIG_DFL:
        return True
    return signum == signal.SIGINT and handler is signal.default_int_handler


@contextlib.contextmanager
def handling(take_over: bool = False) -> Iterator[None]:
    """Within: SIGINT, SIGTERM and SIGHUP raise ``Interrupted`` in the main thread.

    ``take_over``: replace any handler but an ignored signal's (a program
    owning its process); otherwise only the default actions are replaced
    (a library inside a host).  Nested contexts, and contexts entered
    outside the main thread, change nothing.  On exit the previous
    handlers come back, unless a signal was received: then the default
    actions stay, so that a second signal ends the process at once.
    """
    global _active, _received, _busy, _pending
    if _active or threading.current_thread() is not threading.main_thread():
        yield           # nested, or not where Python runs signal handlers
        return
    # Only the main thread gets here, so no lock: a signal handler may run
    # between any two lines, and while _busy it only notes the signal.
    _busy = True
    _active = True
    _received = None
    _pending = None
    for signum in SIGNALS:
        current = signal.getsignal(signum)
        if current == signal.SIG_IGN or current is None:
            continue        # nohup, or a handler not set from Python
        if not take_over and not _is_default(current, signum):
            continue        # the host handles it
        _installed[signum] = current
        signal.signal(signum, _handler)
    try:
        _busy = False
        if _pending is not None:
            deferred, _pending = _pending, None
            _handler(deferred, None)        # raises Interrupted
        yield
    except Interrupted as exc:
        if not take_over:
            _end_by_signal_if_uncaught(exc.signum)
        raise
    finally:
        _busy = True
        for signum, previous in _installed.items():
            if _received is None:
                signal.signal(signum, previous)
        _installed.clear()
        _active = False
        _busy = False
        if _pending is not None:
            # It came while the handlers were restored: it is for the
            # restored handler (or the default action) to act on.
            deferred, _pending = _pending, None
            os.kill(os.getpid(), deferred)


def _end_by_signal_if_uncaught(signum: int) -> None:
    """If the Interrupted now leaving a library call is never caught, the
    process ends by ``signum`` (after the host's ``finally`` blocks ran)
    instead of printing a traceback and exiting 1."""
    previous = sys.excepthook
    if getattr(previous, "ends_by_signal", False):
        return

    def hook(kind, value, tb):
        if not isinstance(value, Interrupted):
            previous(kind, value, tb)
            return
        with contextlib.suppress(Exception):
            sys.stderr.write(f"freezer-rsyncv2: {value}\n")
            sys.stderr.flush()
        with contextlib.suppress(Exception):
            logging.shutdown()
        with contextlib.suppress(Exception):
            signal.signal(value.signum, signal.SIG_DFL)
            os.kill(os.getpid(), value.signum)
        previous(kind, value, tb)   # only where the signal did not end us

    hook.ends_by_signal = True     # type: ignore[attr-defined]
    sys.excepthook = hook
