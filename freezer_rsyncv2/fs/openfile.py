"""Opening a regular file to back it up, and telling whether it changed while read.

Light on purpose (the standard library only): the digest helper process
(``engine.digest_helper``) reads files with these same rules and starts
without the rest of the library.
"""

from __future__ import annotations

import os
import stat

_NOATIME = getattr(os, "O_NOATIME", 0)


class Unreadable(Exception):
    """The file cannot be read for this backup; the message says why."""


def open_regular(path: bytes, follow_symlinks: bool) -> tuple[int, os.stat_result]:
    """A descriptor of the regular file at ``path``, open for reading, and its stat.

    Raises ``Unreadable`` when it cannot be opened or is no longer a regular
    file.  The access time is left alone where the system allows it.
    """
    flags = os.O_RDONLY | _NOATIME | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = _open_without_atime(path, flags)
    except OSError as err:
        raise Unreadable(f"cannot open: {err.strerror}") from err
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise Unreadable("no longer a regular file")
    return fd, st


def _open_without_atime(path: bytes, flags: int) -> int:
    try:
        return os.open(path, flags)
    except PermissionError:     # O_NOATIME is for the file's owner only
        return os.open(path, flags & ~_NOATIME)


def changed_while_read(before: os.stat_result, after: os.stat_result, read: int) -> bool:
    """Whether a file opened with stat ``before`` changed while ``read`` bytes of it were read."""
    return not (read == before.st_size and after.st_size == before.st_size
                and after.st_mtime_ns == before.st_mtime_ns)
