"""Local scratch directories, and the sweep of those a killed process left.

A backup fetches its chain's manifests into one, ``verify`` restores a
whole tree into one, ``ls``/``diff``/``restore --include`` read manifests
in one.  Each is removed when its work ends, after an error or a signal
too; a process killed outright (SIGKILL, the OOM killer, a power cut)
cannot, and its directory (possibly a whole restored tree) stays in the
temporary directory.

So each scratch directory holds a lock file its process keeps locked
(``flock``) for the directory's life.  The kernel drops the lock when the
process dies, however it dies: ``sweep`` removes the directories of this
user whose lock it can take, and never one whose process still runs.  A
directory without a lock file (one being made, or one an earlier release
left) is removed only once older than the sweep's age.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator

from oslo_log import log

LOG = log.getLogger(__name__)

PREFIX = "rsyncv2-"
LOCK_NAME = ".rsyncv2-lock"
#: A directory changed this recently is left alone: its process may not
#: have locked it yet (seconds).
SETTLE = 60.0


@contextlib.contextmanager
def directory(kind: str = "", parent: str | None = None) -> Iterator[str]:
    """A new scratch directory (``rsyncv2-<kind>-*`` in ``parent`` or the
    temporary directory), locked while the block runs, removed after it."""
    path = tempfile.mkdtemp(prefix=PREFIX + (kind + "-" if kind else ""), dir=parent)
    fd = -1
    try:
        fd = os.open(os.path.join(path, LOCK_NAME), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield path
    finally:
        remove(path)        # while still locked
        if fd >= 0:
            os.close(fd)


def remove(path: str) -> None:
    """Remove a scratch tree, read-only directories in it included.

    A restore into scratch (``verify``) gives directories their backed-up
    modes: without write permission on a directory (and without root's
    override) its entries could not be removed.  Each directory is made
    writable (never through a symlink) before the walk descends into it.
    """
    for root, dirs, _files in os.walk(path):
        for name in dirs:
            entry = os.path.join(root, name)
            if os.path.islink(entry):
                continue    # a symlink to a directory is listed with them; never followed
            with contextlib.suppress(OSError):
                os.chmod(entry, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def sweep(age: float, parent: str | None = None) -> tuple[int, int, int]:
    """Remove the scratch directories killed processes left in ``parent`` (the
    temporary directory); returns (removed, their bytes, kept: in use or
    too young).  ``age``: how old a directory without a lock file must be."""
    top = parent or tempfile.gettempdir()
    removed = size = kept = 0
    now = time.time()
    try:
        listing = list(os.scandir(top))
    except OSError as err:
        LOG.warning("cannot list %s for scratch directories left behind: %s", top, err.strerror)
        return 0, 0, 0
    for item in listing:
        if not item.name.startswith(PREFIX):
            continue
        try:
            st = item.stat(follow_symlinks=False)
            if not item.is_dir(follow_symlinks=False) or st.st_uid != os.geteuid():
                continue
            if now - st.st_mtime < SETTLE or not _abandoned(item.path, now - st.st_mtime, age):
                kept += 1
                continue
            bytes_ = _tree_bytes(item.path)
            remove(item.path)
        except FileNotFoundError:
            continue        # gone meanwhile (its process ended)
        except OSError as err:
            LOG.warning("cannot sweep the scratch directory %s: %s", item.path, err.strerror)
            continue
        if os.path.lexists(item.path):
            LOG.warning("cannot remove all of the scratch directory %s", item.path)
            continue
        removed += 1
        size += bytes_
    return removed, size, kept


def _abandoned(path: str, idle: float, age: float) -> bool:
    """Whether no process holds ``path``: its lock is free, or it has no lock and is older than ``age``."""
    try:
        fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return idle >= age
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)            # a lock taken here goes with it; the directory goes next
    return True


def _tree_bytes(path: str) -> int:
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(top, name)).st_blocks * 512
    return total
