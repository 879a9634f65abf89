"""Applying owner, mode, xattrs and times to restored objects safely."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from freezer_rsyncv2.errors import RestoreError
from freezer_rsyncv2.fs import owners
from freezer_rsyncv2.fs.entry import (
    KIND_BLK, KIND_CHR, KIND_DIR, KIND_FIFO, KIND_FILE, KIND_HARDLINK,
    KIND_SYMLINK, Entry)
from freezer_rsyncv2.fs.safepath import O_PATH, show
from freezer_rsyncv2.fs.xattrs import write_xattrs

WarningCallback = Callable[[bytes, str], None]

#: The file type (S_IFMT) each kind must have on disk.
KIND_FORMAT: dict[str, int] = {
    KIND_FILE: stat.S_IFREG,
    KIND_HARDLINK: stat.S_IFREG,
    KIND_DIR: stat.S_IFDIR,
    KIND_SYMLINK: stat.S_IFLNK,
    KIND_FIFO: stat.S_IFIFO,
    KIND_CHR: stat.S_IFCHR,
    KIND_BLK: stat.S_IFBLK,
}

_SETID = stat.S_ISUID | stat.S_ISGID
_PROC_FD = '/proc/self/fd'


def _proc_available() -> bool:
    return os.path.isdir(_PROC_FD)


SharedCheck = Callable[[os.stat_result], bool]


def _refuse_shared(entry: Entry, st: os.stat_result, shared: SharedCheck | None) -> None:
    """Refuse to change an inode that names we did not make also reach.

    A non-directory with more than one link may be a hardlink to a file
    outside the restore root (an existing directory restored over with
    ``--overwrite``): changing its owner, mode, xattrs or times changes
    that file too.  ``shared`` says which such inodes the caller itself
    linked (and may therefore change); the restore replaces any other by
    a copy before it gets here (``RestoreTree._copy_over``).
    """
    if stat.S_ISDIR(st.st_mode) or st.st_nlink <= 1:
        return
    if shared is not None and shared(st):
        return
    raise RestoreError(
        f"{show(entry.path)} has {st.st_nlink} hard links that this restore "
        f"did not make: refusing to change the owner, mode, times or xattrs "
        f"of an inode other names share")


class MetaApplier:
    """Sets owner, xattrs, mode and times, in that order.

    The order matters: chown clears setuid/setgid (so chmod comes after
    it) and every change bumps ctime but only utime sets mtime/atime (so
    times come last).  setuid/setgid survive only when ownership was
    actually restored: a setuid binary handed to the restoring user
    instead of its real owner would be a privilege gift.  An inode that
    other names share is only changed when the caller vouches for them
    (``shared``): see ``_refuse_shared``.
    """

    def __init__(self, restore_owner: bool, warn: WarningCallback) -> None:
        self.restore_owner = restore_owner
        self.warn = warn
        self.use_proc = _proc_available()

    def _owner(self, entry: Entry) -> tuple[int, int]:
        return (owners.resolve_uid(entry.uname, entry.uid), owners.resolve_gid(entry.gname, entry.gid))

    def _mode(self, entry: Entry, owned: bool) -> int:
        mode = stat.S_IMODE(entry.mode)
        if not owned:
            mode &= ~_SETID
        return mode

    def _chown(self, entry: Entry, do_chown: Callable[[int, int], None]) -> bool:
        """Chown when enabled; True if ownership now matches the entry."""
        if not self.restore_owner:
            return False
        uid, gid = self._owner(entry)
        try:
            do_chown(uid, gid)
        except OSError as exc:
            self.warn(entry.path, f"owner {uid}:{gid} not restored: "
                                  f"{exc.strerror}")
            return False
        return True

    def _xattr_warner(self, entry: Entry) -> Callable[[str], None]:
        def report(message: str) -> None:
            self.warn(entry.path, message)
        return report

    def apply_fd(self, fd: int, entry: Entry) -> None:
        """Apply to an open, writable-or-not, real descriptor (temp files)."""
        owned = self._chown(entry, lambda u, g: os.chown(fd, u, g))
        if entry.xattrs:
            write_xattrs(fd, entry.xattrs, on_error=self._xattr_warner(entry))
        os.chmod(fd, self._mode(entry, owned))
        os.utime(fd, ns=(entry.atime_ns, entry.mtime_ns))

    def apply_at(self, dir_fd: int, name: bytes, entry: Entry, *,
                 sync_xattrs: bool = True,
                 shared: SharedCheck | None = None) -> None:
        """Apply to ``name`` in ``dir_fd``, which must be of entry's kind.

        The object is pinned with an O_PATH descriptor (opened
        O_NOFOLLOW), its type and link count are checked on that
        descriptor (``_refuse_shared``, with ``shared``), and owner,
        xattrs, mode and times are all changed through its /proc/self/fd
        link, which designates that very inode: a name swapped meanwhile
        (a symlink, another file) changes nothing.  Without /proc, by
        name with the *at() calls (AT_SYMLINK_NOFOLLOW where Linux has
        it).  Devices are never opened for real (that could rewind a
        tape).
        """
        expected = KIND_FORMAT[entry.kind]
        if expected == stat.S_IFLNK:
            self._apply_symlink(dir_fd, name, entry, shared)
            return
        fd = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            if stat.S_IFMT(st.st_mode) != expected:
                raise RestoreError(f"{show(entry.path)} is not a "
                                   f"{entry.kind!r} entry on disk")
            _refuse_shared(entry, st, shared)
            times = (entry.atime_ns, entry.mtime_ns)
            if self.use_proc:
                handle = f'{_PROC_FD}/{fd}'
                owned = self._chown(entry, lambda u, g: os.chown(handle, u, g))
                if entry.xattrs or sync_xattrs:
                    write_xattrs(handle.encode(), entry.xattrs, sync=sync_xattrs, on_error=self._xattr_warner(entry))
                os.chmod(handle, self._mode(entry, owned))
                os.utime(handle, ns=times)
                return
            # No /proc: by name; the type was just checked, the window is
            # a concurrent local attacker.
            owned = self._chown(entry, lambda u, g: os.chown(name, u, g, dir_fd=dir_fd, follow_symlinks=False))
            if entry.xattrs:
                self.warn(entry.path, "xattrs not restored: /proc not available")
            os.chmod(name, self._mode(entry, owned), dir_fd=dir_fd)
            os.utime(name, ns=times, dir_fd=dir_fd, follow_symlinks=False)
        finally:
            os.close(fd)

    def chmod_at(self, dir_fd: int, name: bytes, mode: int) -> None:
        """chmod a non-symlink ``name`` in ``dir_fd`` without following."""
        fd = os.open(name, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            # Only for directories (an existing one getting children):
            # never a symlink, nor an inode other names share.
            shared = not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1
            if stat.S_ISLNK(st.st_mode) or shared:
                return
            if self.use_proc:
                os.chmod(f'{_PROC_FD}/{fd}', mode)
            else:
                os.chmod(name, mode, dir_fd=dir_fd)
        finally:
            os.close(fd)

    def _apply_symlink(self, dir_fd: int, name: bytes, entry: Entry, shared: SharedCheck | None = None) -> None:
        """Symlinks: owner and times only (Linux has no symlink modes and
        refuses user.* xattrs on them).  A symlink can be hardlinked too:
        one with other names is refused like any other inode."""
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            raise RestoreError(f"{show(entry.path)} is not a symlink on disk")
        _refuse_shared(entry, st, shared)
        self._chown(entry, lambda u, g: os.chown(name, u, g, dir_fd=dir_fd, follow_symlinks=False))
        if entry.xattrs:
            self.warn(entry.path, "xattrs on a symlink not restored")
        os.utime(name, ns=(entry.atime_ns, entry.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
