"""The local storage's part of the sweep (``storage/sweep.py``): stale temporary files.

Walks below the container as ``LocalStorage`` does (from descriptors, no
symlink followed) and removes a ``.<name>.tmp-<uuid>`` file only if it was
last modified before the cutoff and no writer holds it locked
(``localfs.remove_stale_temp``); also tells what a level directory holds
and removes empty directories, for the rest of the sweep.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from typing import Any

from oslo_log import log

from freezer_rsyncv2.errors import StorageError
from freezer_rsyncv2.storage.localfs import (
    TEMP_NAME_RE, SymlinkInside, fsync_fd, lstat_at, remove_stale_temp, walk_files)
from freezer_rsyncv2.storage.sweep import SweepReport, level_key

LOG = log.getLogger(__name__)


class LocalSweep:
    """Sweep hooks of ``LocalStorage`` (which supplies ``_open_dir`` and
    ``_open_parent``)."""

    _open_dir: Any
    _open_parent: Any
    _opened: Any

    def sweep_temporaries(self, roots: tuple[str, ...], cutoff: float,
                          report: SweepReport) -> set[tuple[str, str]]:
        """Remove the stale ``.<name>.tmp-<uuid>`` files below ``roots`` (``remove_stale_temp``)."""
        busy: set[tuple[str, str]] = set()
        for root in roots:
            for dir_fd, name, path, st in self._walk(root):
                if not stat.S_ISREG(st.st_mode) or not TEMP_NAME_RE.fullmatch(name):
                    continue
                try:
                    outcome, size = remove_stale_temp(dir_fd, name, cutoff)
                except OSError as exc:
                    report.failed.append(f"{path}: {exc}")
                    LOG.warning("Could not remove the temporary file %s: %s", path, exc)
                    outcome = "failed"
                if outcome == "removed":
                    LOG.info("Removed the temporary file %s (%d bytes)", path, size)
                    report.temp_objects += 1
                    report.temp_bytes += size
                    continue
                if outcome in ("young", "locked"):
                    report.kept += 1
                key = level_key(roots, path)
                if key is not None and outcome != "gone":
                    busy.add(key)
        return busy

    def _walk(self, root: str) -> Iterator[tuple[int, str, str, os.stat_result]]:
        """``walk_files`` below directory ``root`` (nothing if it is missing or a symlink)."""
        with self._opened(root, "list", parent=False) as at:
            if at is not None:
                yield from walk_files(at[0], root)

    def subtree_info(self, path: str) -> tuple[float | None, int, int]:
        """Latest mtime of the files below ``path``, their bytes and their number.

        Directories do not count: removing a temporary file changes its
        directory's mtime.
        """
        newest: float | None = None
        size = count = 0
        for _fd, _name, _path, st in self._walk(path):
            if not stat.S_ISDIR(st.st_mode):
                newest = st.st_mtime if newest is None else max(newest, st.st_mtime)
                size += st.st_size if stat.S_ISREG(st.st_mode) else 0
                count += 1
        return newest, size, count

    def object_paths(self, root: str) -> set[str]:
        """The regular files below ``root``, relative to it (symlinks not followed)."""
        return {path[len(root) + 1:] for _fd, _name, path, st in self._walk(root)
                if stat.S_ISREG(st.st_mode)}

    def remove_empty_dir(self, path: str) -> None:
        """rmdir ``path`` if it is an empty directory (not a symlink)."""
        try:
            dir_fd, name = self._open_parent(path)
        except (FileNotFoundError, NotADirectoryError, SymlinkInside):
            return
        except OSError as exc:
            raise StorageError(f"cannot remove {path}: {exc}") from exc
        try:
            st = lstat_at(dir_fd, name)
            if st is None or not stat.S_ISDIR(st.st_mode):
                return
            os.rmdir(name, dir_fd=dir_fd)
            fsync_fd(dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                raise StorageError(f"cannot remove {path}: {exc}") from exc
        finally:
            os.close(dir_fd)
