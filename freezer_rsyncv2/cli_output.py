"""Terminal output of the command line: escaped log lines, the progress status line, readable sizes."""

from __future__ import annotations

import base64
import datetime
import json
import logging
import stat
import sys
import time
from typing import Any

from freezer_rsyncv2 import progress as prog
from freezer_rsyncv2.fs import entry as fsentry
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
    for count, size, one, many, how in (
            (report.temp_objects, report.temp_bytes, "temporary object", "temporary objects", "removed"),
            (report.uploads, report.upload_bytes, "incomplete upload", "incomplete uploads", "aborted"),
            (report.levels, report.level_bytes, "unfinished level", "unfinished levels", "removed"),
            (report.scratch_dirs, report.scratch_bytes, "local scratch directory", "local scratch directories",
             "removed")):
        if count:
            done.append("%d %s %s (%s)" % (count, one if count == 1 else many, how, human_size(size)))
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


#: The name of each entry kind in JSON documents.
KIND_NAMES = {fsentry.KIND_FILE: "file", fsentry.KIND_DIR: "dir", fsentry.KIND_SYMLINK: "symlink",
              fsentry.KIND_FIFO: "fifo", fsentry.KIND_CHR: "chr", fsentry.KIND_BLK: "blk",
              fsentry.KIND_HARDLINK: "hardlink"}
_KIND_BITS = {fsentry.KIND_FILE: stat.S_IFREG, fsentry.KIND_HARDLINK: stat.S_IFREG, fsentry.KIND_DIR: stat.S_IFDIR,
              fsentry.KIND_SYMLINK: stat.S_IFLNK, fsentry.KIND_FIFO: stat.S_IFIFO, fsentry.KIND_CHR: stat.S_IFCHR,
              fsentry.KIND_BLK: stat.S_IFBLK}


def iso_time(seconds: int) -> str:
    """A UTC time as ``2026-01-31T12:00:00Z``; the number itself when out of the calendar's range."""
    try:
        return datetime.datetime.fromtimestamp(int(seconds), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return str(int(seconds))


def json_text(fields: dict[str, Any], name: str, raw: bytes | None) -> None:
    """Put raw bytes (a path, a link target) into a JSON document under ``name``.

    Valid UTF-8 goes as the string it is.  Anything else goes as its
    escaped form (``safepath.escape``, for display) with the exact bytes
    beside it in ``<name>_base64``; consumers check that key first.
    """
    if raw is None:
        fields[name] = None
        return
    try:
        fields[name] = raw.decode("utf-8")
    except UnicodeDecodeError:
        fields[name] = escape(raw)
        fields[f"{name}_base64"] = base64.b64encode(raw).decode("ascii")


def summary_json(summary: Any) -> dict[str, Any]:
    """The JSON fields of a backup's ``progress.Summary``, its warnings as {path, message}
    (the first ``progress.KEPT_WARNINGS``; ``warnings_left_out`` says how many more)."""
    fields = summary.as_dict()
    warnings = []
    for warning in summary.warnings:
        item: dict[str, Any] = {"message": warning.message}
        json_text(item, "path", warning.path)
        warnings.append(item)
    fields["warnings"] = warnings
    fields["warnings_left_out"] = summary.warning_count - len(warnings)
    return fields


def entry_json(e: fsentry.Entry) -> dict[str, Any]:
    """The stable JSON fields of one entry (docs/options.rst, "JSON output")."""
    fields: dict[str, Any] = {}
    json_text(fields, "path", e.path)
    fields.update(type=kind_name(e.kind), mode=e.mode, uid=e.uid, gid=e.gid, user=e.uname, group=e.gname,
                  size=e.size, mtime=iso_time(e.mtime_ns // 10**9), mtime_ns=e.mtime_ns)
    json_text(fields, "link_target", e.link_target)
    json_text(fields, "hardlink_to", e.hardlink_to)
    return fields


def kind_name(kind: str) -> str:
    return KIND_NAMES.get(kind, kind)


def long_line(e: fsentry.Entry) -> str:
    """``ls -l``'s columns for one entry: type and mode, owner/group, size, mtime, path (and target)."""
    owner = f"{e.uname or e.uid}/{e.gname or e.gid}"
    line = (f"{stat.filemode(_KIND_BITS.get(e.kind, 0) | e.mode)}  {escape(owner)}  {e.size:>12}  "
            f"{iso_time(e.mtime_ns // 10**9)}  {escape(e.path)}")
    if e.link_target is not None:
        line += f" -> {escape(e.link_target)}"
    if e.hardlink_to is not None:
        line += f" link to {escape(e.hardlink_to)}"
    return line


def level_json(backup: Any, size: int | None = None) -> dict[str, Any]:
    """The JSON fields of one level (a storage ``Backup``); ``size``: its stored bytes, when known."""
    fields = {"level": backup.level, "level_zero_timestamp": backup.level_zero_timestamp,
              "timestamp": backup.timestamp, "date": iso_time(backup.timestamp)}
    if size is not None:
        fields["size"] = size
    return fields


def change_json(change: Any) -> dict[str, Any]:
    """The JSON fields of one ``inventory.Change``."""
    fields: dict[str, Any] = {"change": change.letter}
    json_text(fields, "path", change.path)
    fields["old_type"] = kind_name(change.old.kind) if change.old is not None else None
    fields["new_type"] = kind_name(change.new.kind) if change.new is not None else None
    return fields


def print_json(document: dict[str, Any]) -> None:
    """One JSON document on stdout: ASCII only (nothing in it can drive a terminal)."""
    print(json.dumps(document, indent=1, sort_keys=True))
