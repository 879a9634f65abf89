"""A helper process that reads files whole and gives their digests, ahead of the backup pass.

A level that meets thousands of touched files (a new inode and mtime over
the content below: a package upgrade, a copy, a restore) spends much of its
time opening, reading and hashing them one after the other, on one core:
the pass holds the GIL.  ``BackupPass`` asks this helper, ``READ_AHEAD``
entries before it gets to them, for each file it is going to compare with
its digest below; the helper's process (``fs.digest_child``) reads and
hashes them on another core.

An answer counts for what ``file_reader`` would have found by its own read:
the same open (``fs.openfile``), the same check that the file did not
change while it was read, the digest compared with the entry below once
that entry is checked.  An answer that is not there when the pass gets to
its file is not waited for: the pass reads the file itself, as it does
when the helper cannot start, stops, or is not worth starting (fewer than
``START_AFTER`` files asked for).  Nothing here blocks the pass: both pipe
ends are non-blocking, and what the helper has not taken yet waits in a
bounded buffer.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from typing import Any, NamedTuple

import msgpack
from oslo_log import log

from freezer_rsyncv2 import digests
from freezer_rsyncv2.fs import digest_child

LOG = log.getLogger(__name__)

#: Entries between the walk's front and the entry the pass is at.
READ_AHEAD = 256
#: Files asked for before the helper is worth a process (~30 ms of a core to start).
START_AFTER = 64
#: Request bytes gathered before they are written to the helper (one system call).
SEND_BYTES = 4096
#: Request bytes waiting for the helper past which no more is asked (it is stuck).
MAX_PENDING = 1 << 20
_READ = 1 << 16


class Answer(NamedTuple):
    """What the helper found of one file (``fs.digest_child.ANSWER_FIELDS``)."""

    mode: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    changed: bool
    digest: bytes


_TYPES = (int, int, int, int, int, bool, bytes)


class DigestHelper:
    """Tickets for files' digests (``ask``), answers when they are there (``answer``); ``close`` ends it."""

    def __init__(self, follow_symlinks: bool, max_size: int, digest: str = digests.DEFAULT) -> None:
        # -I: the current directory (a tree being backed up) and PYTHON* variables stay out of its imports.
        self._argv = [sys.executable, "-I", "-m", digest_child.__name__, "1" if follow_symlinks else "0",
                      str(max_size), digest]
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = False
        self._next = 0
        self._out = bytearray()                 # requests not written yet
        self._answers: collections.deque[tuple[int, Answer | None]] = collections.deque()
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 20)
        self._packer = msgpack.Packer(use_bin_type=True)
        self.answered = 0                       # answers handed out (for tests and logs)

    def ask(self, path: bytes) -> int | None:
        """A ticket for the digest of the file at ``path``; None when the helper is out of use."""
        if self._stopped or len(self._out) > MAX_PENDING:
            return None
        ticket = self._next
        self._next += 1
        self._out += self._packer.pack([ticket, path])
        if self._proc is None:
            if self._next < START_AFTER:
                return ticket
            self._start()
        if len(self._out) >= SEND_BYTES:
            self._send()
        return ticket

    def answer(self, ticket: int | None) -> Answer | None:
        """The answer for ``ticket`` if it is there (the file's may be None: not readable whole)."""
        if ticket is None or self._proc is None or self._stopped:
            return None
        answers = self._answers
        if not answers or answers[-1][0] < ticket:
            self._receive()
        while answers and answers[0][0] < ticket:
            answers.popleft()       # the pass got there first
        if answers and answers[0][0] == ticket:
            found = answers.popleft()[1]
            if found is not None:
                self.answered += 1
            return found
        return None

    def close(self) -> None:
        """Stop the helper (idempotent)."""
        self._stopped = True
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        proc.kill()
        proc.wait()

    def _start(self) -> None:
        try:
            self._proc = subprocess.Popen(self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL)
        except OSError as err:
            LOG.debug("digest helper not started (%s): files are read by the backup pass only", err)
            self._stopped = True
            return
        for pipe in (self._proc.stdin, self._proc.stdout):
            assert pipe is not None
            os.set_blocking(pipe.fileno(), False)

    def _send(self) -> None:
        proc = self._proc
        if not self._out or proc is None or proc.stdin is None:
            return
        try:
            written = os.write(proc.stdin.fileno(), self._out)     # as much as the pipe takes
        except BlockingIOError:
            return
        except OSError:         # it is gone: what it answered stays usable
            self._out.clear()
            return
        del self._out[:written]

    def _receive(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        while True:
            try:
                chunk = os.read(proc.stdout.fileno(), _READ)
            except BlockingIOError:
                break
            if not chunk:       # it ended: no more answers
                self._stopped = True
                break
            self._unpacker.feed(chunk)
            if len(chunk) < _READ:
                break
        try:
            for item in self._unpacker:
                self._answers.append(_checked(item))
        except ValueError as err:      # a bug: the files are read by the pass, as without a helper
            LOG.warning("digest helper stopped: %s", err)
            self._stopped = True


def _checked(item: Any) -> tuple[int, Answer | None]:
    """An answer as the helper sent it, its shape checked (``ValueError`` if it is not one)."""
    if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], int):
        raise ValueError(f"digest helper: malformed answer {item!r:.80}")
    ticket, fields = item
    if fields is None:
        return ticket, None
    if not isinstance(fields, list) or len(fields) != len(_TYPES) \
            or not all(type(v) is t for v, t in zip(fields, _TYPES)):
        raise ValueError(f"digest helper: malformed answer {item!r:.80}")
    return ticket, Answer(*fields)
