"""The digest helper's own process: reads the files it is asked for and returns their digests.

Run as ``python -I -m freezer_rsyncv2.fs.digest_child FOLLOW MAX_SIZE DIGEST`` by
``engine.digest_helper`` (which says why).  It reads msgpack requests
``[ticket, path]`` on stdin and writes ``[ticket, answer]`` on stdout, in
the order of the requests: ``answer`` is ``[mode, ino, size, mtime_ns,
ctime_ns, changed, digest]`` (``ANSWER_FIELDS``), the file's stat when
opened, whether it changed while read (``fs.openfile.changed_while_read``)
and the digest named DIGEST (``digests``) of what was read; None when it could
not be opened as a regular file of at most MAX_SIZE bytes or read whole.
It opens files as a backup does (``fs.openfile.open_regular``), and it
stops at the end of its input.  It imports no more than that needs, so it
starts in a few hundredths of a second.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import msgpack

from freezer_rsyncv2 import digests
from freezer_rsyncv2.fs import openfile

#: The fields of an answer, in order.
ANSWER_FIELDS = ("mode", "ino", "size", "mtime_ns", "ctime_ns", "changed", "digest")
_READ = 1 << 16


def digest_file(path: bytes, follow_symlinks: bool, max_size: int, digest: str = digests.DEFAULT) -> list[Any] | None:
    """The answer for ``path`` (see the module): None if it cannot be read whole."""
    try:
        fd, st = openfile.open_regular(path, follow_symlinks)
    except (openfile.Unreadable, OSError):
        return None
    try:
        if st.st_size > max_size:
            return None
        parts, done = [], 0
        while done < st.st_size:
            chunk = os.pread(fd, st.st_size - done, done)
            if not chunk:
                break       # it shrank: changed, below
            parts.append(chunk)
            done += len(chunk)
        after = os.fstat(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    data = b"".join(parts)
    return [st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
            openfile.changed_while_read(st, after, len(data)), digests.of_bytes(digest, data)]


def serve(follow_symlinks: bool, max_size: int, digest: str = digests.DEFAULT, stdin: int = 0, stdout: int = 1) -> None:
    """Answer the requests on ``stdin`` until it ends."""
    digests.of_bytes(digest, b"")       # a digest it does not know ends it here
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 20)
    packer = msgpack.Packer(use_bin_type=True)
    while chunk := os.read(stdin, _READ):
        unpacker.feed(chunk)
        out = b"".join(packer.pack([ticket, digest_file(path, follow_symlinks, max_size, digest)])
                       for ticket, path in unpacker)
        view = memoryview(out)
        while view:
            view = view[os.write(stdout, view):]


def main(argv: list[str]) -> int:
    # Ctrl-C reaches the whole process group: the backup handles it, and
    # this process ends when the backup closes its input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        serve(argv[0] == "1", int(argv[1]), argv[2])
    except BrokenPipeError:     # the backup went away
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
