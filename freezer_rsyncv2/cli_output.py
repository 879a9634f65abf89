"""Terminal output of the command line: escaped log lines, the progress status line, readable sizes."""

from __future__ import annotations

import logging
import sys
import time

from freezer_rsyncv2 import progress as prog
from freezer_rsyncv2.fs.safepath import escape


def printable(text: object) -> str:
    """``text`` made safe for one line of a terminal (``safepath.escape``).

    Messages and names printed here may carry stored paths or names a
    storage lists: attacker data.  Backslashes are kept as they are:
    names inside messages were escaped (with their backslashes doubled)
    where the message was made.
    """
    return escape(str(text), backslash=False)


class OneLineLogFilter(logging.Filter):
    """Escapes control characters in every log message (``printable``).

    Installed on the command line's log handlers, so that no module's
    message, whatever name it quotes and however, can put a second line
    into the log or an escape sequence onto the terminal, and an
    undecodable name (a surrogate from ``os.fsdecode``) cannot make the
    handler fail to encode it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:       # the handler reports its own format error
            return True
        clean = printable(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


class PrintableFormatter(logging.Formatter):
    """Wraps a handler's formatter: every line it writes is ``printable``.

    ``OneLineLogFilter`` sees the message only; the formatter appends an
    exception's text and traceback (``--debug``), whose lines are kept
    as lines here, each escaped, so that no exception message either can
    drive the terminal.
    """

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        return "\n".join(printable(line) for line in text.split("\n"))


class TtyProgress(prog.Progress):
    """One status line on a terminal, redrawn at most 5 times a second."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.name = ""
        self.done = 0
        self.entries = 0
        self.start = time.monotonic()
        self._last = 0.0

    def phase(self, name: str, total_bytes: int | None = None) -> None:
        self._line(force=True)
        # The status line is redrawn with "\r": nothing in it may move
        # the cursor or drive the terminal (see ``printable``).
        self.name, self.done, self.entries = printable(name), 0, 0
        self.start = time.monotonic()

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        self._line()

    def entry(self, path: bytes, status: str) -> None:
        self.entries += 1
        self._line()

    def _line(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.name or (not force and now - self._last < 0.2):
            return
        self._last = now
        rate = self.done / max(now - self.start, 1e-6) / 1e6
        self.stream.write("\r%s: %d entries, %s read, %.1f MB/s   "
                          % (self.name, self.entries, human_size(self.done),
                             rate))
        self.stream.flush()

    def close(self) -> None:
        if self.name:
            self._line(force=True)
            self.stream.write("\n")


def describe_sweep(report, age: float) -> str:
    """One line saying what a sweep (``storage.sweep.SweepReport``) removed and kept."""
    done = []
    for count, size, what, how in (
            (report.temp_objects, report.temp_bytes, "temporary object", "removed"),
            (report.uploads, report.upload_bytes, "incomplete upload", "aborted"),
            (report.levels, report.level_bytes, "unfinished level", "removed")):
        if count:
            done.append("%d %s%s %s (%s)" % (count, what, "" if count == 1 else "s",
                                             how, human_size(size)))
    text = ", ".join(done) if done else "nothing to remove"
    if report.kept:
        text += "; %d kept (changed in the last %s, or in use)" % (
            report.kept, human_age(age))
    if report.failed:
        text += f"; {len(report.failed)} could not be removed (see the log)"
    return text


def human_age(seconds: float) -> str:
    """A duration for people: ``86400`` is ``'1 day'``, ``90`` is ``'90 s'``."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return "%d %s%s" % (n, unit, "" if n == 1 else "s")
    return f"{seconds:g} s"


def human_size(n: int) -> str:
    """A byte count for people: ``1536`` is ``'1.5 KiB'``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)
