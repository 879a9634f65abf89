"""Inodes with several names in a restore: hardlink records, and private copies of shared files."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from typing import Any

from freezer_rsyncv2.errors import CorruptRecordError, RestoreError
from freezer_rsyncv2.fs import safepath
from freezer_rsyncv2.fs.entry import Entry
from freezer_rsyncv2.fs.filedata import BasisRange, copy_range, create_temp
from freezer_rsyncv2.fs.regular import os_errors
from freezer_rsyncv2.fs.safepath import lstat_at, show
from freezer_rsyncv2.fs.walk import data_ranges


def _inode(st: os.stat_result) -> int:
    """One int naming an inode (device and number): a compact set key."""
    return st.st_dev << 64 | st.st_ino


class SharedInodes:
    """The shared-inode half of ``RestoreTree``.

    Metadata is only ever applied to an inode that no name outside the
    restore can reach (see ``RestoreTree``): ``make_hardlink`` links only
    such inodes, and ``_copy_over`` gives a file whose inode other names
    share a private copy first.  Expects the tree's ``parent_of``,
    ``note_times``, ``clear_at``, ``finalize``, ``meta`` and ``warn``
    attributes; ``_linked`` holds the inodes (``_inode``) this restore
    gave a second name.
    """

    _linked: set[int]
    meta: Any
    warn: Callable[[bytes, str], None]
    parent_of: Callable[..., contextlib.AbstractContextManager[tuple[int | None, bytes]]]
    note_times: Callable[[list[bytes], int], None]
    clear_at: Callable[..., os.stat_result | None]
    finalize: Callable[[bytes], None]

    def make_hardlink(self, entry: Entry) -> None:
        """Link ``entry.path`` to the already restored ``hardlink_to``.

        The source is validated like any path and must be a regular file
        inside this tree, reached without following symlinks: a hostile
        record cannot link (and later overwrite through) a file outside.
        """
        source = entry.hardlink_to
        if not isinstance(source, bytes):
            raise CorruptRecordError(f"hardlink {show(entry.path)} has no target")
        src_parts = safepath.check_path(source)
        safepath.check_path(entry.path)
        if source == entry.path:
            raise CorruptRecordError(f"hardlink {show(entry.path)} points to itself")
        self.finalize(source)       # a link needs the final name
        with os_errors(entry.path, "create hardlink"), self.parent_of(source, create=False) as (src_dir, src_name):
            st = None if src_dir is None else lstat_at(src_dir, src_name)
            if st is None or not stat.S_ISREG(st.st_mode):
                raise RestoreError(
                    f"hardlink {show(entry.path)}: target "
                    f"{show(b'/'.join(src_parts))} is not a restored file")
            assert src_dir is not None
            if not self._ours(st):
                # Linking it would hand the record's metadata to names
                # this restore did not make: link a copy instead.
                self.note_times(src_parts, src_dir)
                st = self._copy_over(src_dir, src_name, source, st, entry)
            self._linked.add(_inode(st))
            with self.parent_of(entry.path) as (parent, name):
                assert parent is not None
                self.clear_at(parent, name, entry.path)
                os.link(src_name, name, src_dir_fd=src_dir, dst_dir_fd=parent, follow_symlinks=False)
                self.meta.apply_at(parent, name, entry, shared=self._made)

    def _made(self, st: os.stat_result) -> bool:
        """Whether this restore gave ``st``'s inode all its extra names."""
        return _inode(st) in self._linked

    def _ours(self, st: os.stat_result) -> bool:
        """Whether changing ``st``'s inode can only affect restored names.

        True for an inode with one link (the name being restored) or one
        whose other links this restore made (``make_hardlink``); a
        pre-existing hardlink, maybe to a file outside the root, is not.
        """
        return st.st_nlink <= 1 or self._made(st)

    def _copy_over(self, parent: int, name: bytes, path: bytes, st: os.stat_result, entry: Entry) -> os.stat_result:
        """Replace ``name`` (a regular file, ``st``) by a private copy.

        For a file whose inode other names share that this restore did
        not make: its metadata cannot change without changing theirs, and
        they may be outside the restore root.  The content is copied
        (kernel-side where possible, holes kept) into a temporary file,
        which gets ``entry``'s metadata and is renamed over ``name``; the
        other names and their inode are left exactly as they were (read
        with O_NOATIME where allowed, so not even the access time moves).
        Returns the stat of the copy.
        """
        src = _open_noatime(parent, name)
        try:
            src_st = os.fstat(src)
            if (src_st.st_dev, src_st.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(src_st.st_mode):
                raise RestoreError(f"{show(path)} changed during restore")
            fd, tmp = create_temp(parent)
            try:
                try:
                    for offset, length in data_ranges(src, src_st.st_size):
                        os.lseek(fd, offset, os.SEEK_SET)
                        copy_range(BasisRange(src, offset, length), fd, path)
                    os.ftruncate(fd, src_st.st_size)
                    self.meta.apply_fd(fd, entry)
                    copy_st = os.fstat(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=parent)
                raise
        finally:
            os.close(src)
        others = src_st.st_nlink - 1
        self.warn(path, f"shared its inode with {others} other "
                        f"name{'s' if others > 1 else ''} this restore did "
                        f"not make (a pre-existing hardlink): restored as a "
                        f"copy, so that they keep their owner, mode and "
                        f"times")
        return copy_st


def _open_noatime(parent: int, name: bytes) -> int:
    """Open a regular file to read it, leaving its access time alone.

    O_NOATIME is allowed to the file's owner and to root only; anyone
    else reads it without (EPERM).  O_NONBLOCK: a fifo swapped in must
    not hang the restore (the caller checks the type on the descriptor).
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    noatime = getattr(os, 'O_NOATIME', 0)
    if noatime:
        try:
            return os.open(name, flags | noatime, dir_fd=parent)
        except PermissionError:
            pass
    return os.open(name, flags, dir_fd=parent)
