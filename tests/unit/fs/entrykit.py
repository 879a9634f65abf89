"""Entries for restore tests: the caller's own uid/gid, fixed times, the fields a walk fills."""

from __future__ import annotations

import os
from typing import Any

from freezer_rsyncv2.fs import entry as E

#: The mtime and atime an ``entry`` gets unless given (2001-09-09).
TIME_NS = 10**18


def entry(path: bytes, kind: str = E.KIND_FILE, **fields: Any) -> E.Entry:
    """An Entry of ``path``: mode 0644, owned by this process, size 0; ``fields`` override."""
    values: dict[str, Any] = dict(path=path, kind=kind, mode=0o644, uid=os.getuid(), gid=os.getgid(),
                                  uname=None, gname=None, size=0, mtime_ns=TIME_NS, atime_ns=TIME_NS,
                                  ctime_ns=0, ino=0, dev=0, nlink=1)
    values.update(fields)
    return E.Entry(**values)
