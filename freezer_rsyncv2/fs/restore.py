"""Restore-side tree writer treating every stored path as hostile."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
import types
from collections.abc import Callable, Iterator
from typing import Any

from oslo_log import log

from freezer_rsyncv2.errors import CorruptRecordError, RestoreError, UnsafePathError
from freezer_rsyncv2.fs import safepath
from freezer_rsyncv2.fs.dircache import DirCache
from freezer_rsyncv2.fs.entry import DEVICE_KINDS, KIND_BLK, KIND_DIR, Entry
from freezer_rsyncv2.fs.meta import KIND_FORMAT, MetaApplier
from freezer_rsyncv2.fs.regular import RegularFiles, Staged, os_errors
from freezer_rsyncv2.fs.removal import remove_at
from freezer_rsyncv2.fs.safepath import lstat_at, show
from freezer_rsyncv2.fs.shared import SharedInodes
from freezer_rsyncv2.threads import OrderedWorker

LOG = log.getLogger(__name__)

WarningCallback = Callable[[bytes, str], None]

_NODE_MODE = 0o600  # fifos and devices until their metadata is applied


def _log_warning(path: bytes, message: str) -> None:
    LOG.warning("%s: %s", show(path), message)


class RestoreTree(RegularFiles, SharedInodes):
    """Writes entries below one root directory, never outside it.

    Every path is validated (``check_path``) and reached from the root's
    descriptor one component at a time without following symlinks, so
    neither a malicious record nor a symlink planted by an earlier record
    or backup level can redirect a write or a deletion.  File data lands
    in a temporary file renamed into place only after its digest and
    length check out; big files stay staged until ``finish()``
    (``fs.regular``).  Directory metadata waits until nothing more is
    written in the directory, so that creating children neither disturbs
    restored mtimes nor hits a read-only directory: until the record
    stream leaves it (``reached``: records come in tree order) or, for a
    directory its owner could not write in and for callers that do not
    say where the stream is, until ``finish()``.  One tree may serve all
    the levels of a restore: ``finish()`` once, after the last.

    Metadata is only ever applied to an inode that no name outside this
    restore can reach: one this restore created, or one with a single
    link (this name).  A regular file that a metadata-only or hardlink
    record names but that shares its inode with other names the restore
    did not make (a pre-existing hardlink, perhaps to a file outside the
    root) is first replaced by a copy of itself (``_copy_over``,
    ``fs.shared``): the other names keep their owner, mode, times and
    xattrs.

    Parent directories are found through a ``DirCache``: entries come in
    tree order, so each costs the components it does not share with the
    previous one, with a bounded number of descriptors open, however
    deep the tree.

    Used as a context manager, ``finish()`` runs on a clean exit; on an
    exception staged files are removed and the descriptors released.
    """

    def __init__(self, root: str | bytes | os.PathLike[str] | os.PathLike[bytes],
                 on_warning: WarningCallback | None = None,
                 restore_owner: bool | None = None) -> None:
        """Open (creating it if needed) the restore root.

        ``restore_owner`` defaults to "running as root"; ownership is
        only attempted when it is true, and setuid/setgid bits are kept
        only on objects whose ownership was restored.
        """
        root_b = os.fsencode(root)
        self.root = root_b
        self.warn: WarningCallback = (_log_warning if on_warning is None else on_warning)
        self.is_root = os.geteuid() == 0
        if restore_owner is None:
            restore_owner = self.is_root
        self.meta = MetaApplier(restore_owner, self.warn)
        # Directories whose metadata (``_dirs``) or times before this
        # level changed them (``_parent_times``) wait to be set: those
        # the stream is still in (a chain of ancestors of ``_at``, the
        # last path ``reached``), read-only ones, and any a record out of
        # tree order touched.  Never one per file of the tree.
        self._dirs: dict[bytes, Entry] = {}
        self._parent_times: dict[bytes, tuple[int, int]] = {}
        self._at: bytes | None = None
        self._staged: dict[bytes, Staged] = {}
        # Inodes (``SharedInodes``) this restore gave a second name
        # (hardlink records): the only inodes with several links whose
        # metadata it changes in place.
        self._linked: set[int] = set()
        self._fd: int | None = None
        self._cache: DirCache | None = None
        self._level: Any = None
        # Hashes big files on another core while this thread writes them.
        self._hash_worker = OrderedWorker("rsyncv2-restore-digest")
        with os_errors(root_b, "open restore directory"):
            os.makedirs(root_b, exist_ok=True)
            fd = os.open(root_b, safepath.DIR_WALK_FLAGS & ~os.O_NOFOLLOW)
        self._fd = fd
        self._cache = DirCache(fd)

    @property
    def level(self) -> Any:
        """The level being applied (named in errors about staged files).

        Setting it (a new level starts) also drops the cached directory
        descriptors: what happened to the tree between two levels is seen
        afresh, as if every path were walked from the root again.
        """
        return self._level

    @level.setter
    def level(self, value: Any) -> None:
        self._level = value
        if self._cache is not None:
            self._cache.reset()

    # -- plumbing -----------------------------------------------------

    def __enter__(self) -> RestoreTree:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: types.TracebackType | None) -> None:
        try:
            if exc_type is None:
                self.finish()
            else:
                self.discard_staged()
        finally:
            self.close()

    def close(self) -> None:
        """Release the root descriptor (idempotent)."""
        self._hash_worker.close()
        if self._cache is not None:
            self._cache.close()
            self._cache = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def _root_fd(self) -> int:
        if self._fd is None:
            raise RestoreError("restore tree is closed")
        return self._fd

    @contextlib.contextmanager
    def parent_of(self, path: bytes, create: bool = True, mutate: bool | None = None
                  ) -> Iterator[tuple[int | None, bytes]]:
        """Yield ``(parent dir fd or None if absent, last component)``.

        When the caller is about to change the parent (``mutate``, by
        default ``create``), the parent's times are noted first, so that
        finish() can put back the mtime of a directory that this level
        changes only as a side effect (a temp file renamed into it).
        """
        parts = safepath.check_path(path)
        if self._fd is None or self._cache is None:
            raise RestoreError("restore tree is closed")
        cached = self._cache.lookup(parts[:-1], path, create=create)
        # A descriptor of the caller's own: the cache may move on (a
        # hardlink looks up two parents) while the caller still uses it.
        fd = None if cached is None else os.dup(cached)
        try:
            if fd is not None and (create if mutate is None else mutate):
                self.note_times(parts, fd)
            yield fd, parts[-1]
        finally:
            if fd is not None:
                os.close(fd)

    def note_times(self, parts: list[bytes], parent_fd: int) -> None:
        """Remember the parent's times before this level first changes it."""
        if len(parts) > 1:
            parent = b'/'.join(parts[:-1])
            if parent not in self._parent_times:
                st = os.fstat(parent_fd)
                self._parent_times[parent] = (st.st_atime_ns, st.st_mtime_ns)

    def clear_at(self, dir_fd: int, name: bytes, path: bytes, keep_dir: bool = False) -> os.stat_result | None:
        """Remove what is at ``name`` (unless a directory and keep_dir).

        Returns the stat of a kept directory, else None.
        """
        self._unstage(dir_fd, path)
        st = lstat_at(dir_fd, name)
        if st is None:
            return None
        if keep_dir and stat.S_ISDIR(st.st_mode):
            return st
        assert self._cache is not None
        # Never keep a descriptor of what goes (nor of anything below it).
        self._cache.invalidate(path.split(b'/'))
        if stat.S_ISDIR(st.st_mode):
            self._dirs.pop(path, None)
            self._forget_staged_below(path)
        remove_at(dir_fd, name)
        return None

    # -- directories --------------------------------------------------

    def make_dir(self, entry: Entry) -> None:
        """Create (or keep) a directory; its metadata waits until the
        stream leaves it (``reached``) or for finish()."""
        with os_errors(entry.path, "create directory"), self.parent_of(entry.path) as (parent, name):
            assert parent is not None
            kept = self.clear_at(parent, name, entry.path, keep_dir=True)
            if kept is None:
                os.mkdir(name, safepath.IMPLICIT_DIR_MODE, dir_fd=parent)
            elif not self.is_root and kept.st_mode & 0o700 != 0o700:
                # An existing read-only directory (an earlier restore)
                # must accept children; finish() sets the final mode.
                self.meta.chmod_at(parent, name, stat.S_IMODE(kept.st_mode) | 0o700)
        self._dirs[entry.path] = entry

    def finish(self) -> None:
        """Rename staged files, then apply deferred directory metadata,
        deepest directories first.

        Deepest first: a parent's mtime is set after all changes inside
        it, and a parent becomes read-only only once its subtree is done.
        Directories removed or replaced since are skipped, including those
        below an ancestor that a later record turned into a symlink (that
        directory is no longer part of the tree; nothing is followed).
        A staged file that fails its check is removed, the others are
        renamed and the directories finished; then the failure is raised.
        """
        if self._cache is not None:
            self._cache.reset()     # walk afresh: the tree may have changed
        try:
            self.finalize_all()
        finally:
            self._finish_dirs()

    def reached(self, path: bytes) -> None:
        """The record stream has come to ``path``: finish the directories it left.

        Records come in tree order (a directory, then what is in it), so
        once a record lies outside a directory nothing more is written in
        it and its metadata (``make_dir``, ``set_meta``) or its times
        from before this level changed it (``note_times``) can be set
        now, instead of one deferred item per directory of the tree
        waiting for finish().  Not a directory its owner cannot write in
        (mode without u+rwx): a later record or level may still add to
        it, so it waits for finish().  Order is not trusted: a record
        that comes back into a finished directory (the files a backup
        held back as possible renames, DELETE records, a later level, a
        crafted stream) has its times noted again and put back when the
        stream leaves it again.  Costs the components that ``path`` does
        not share with the previous path, as ``DirCache`` lookups do.
        """
        prev, self._at = self._at, path
        while prev and prev != path and not path.startswith(prev + b'/'):
            self._leave(prev)
            cut = prev.rfind(b'/')
            prev = prev[:cut] if cut > 0 else b''

    def _leave(self, path: bytes) -> None:
        """Set what waits for directory ``path`` (if anything does) now."""
        entry = self._dirs.get(path)
        if entry is None:
            times = self._parent_times.pop(path, None)
            if times is not None:
                self._put_back_times(path, times)
            return
        if entry.mode & 0o700 != 0o700:
            return      # finish() sets it, once nothing can be added
        del self._dirs[path]
        self._parent_times.pop(path, None)
        self._finish_dir_safely(entry)

    def _finish_dirs(self) -> None:
        """Directory metadata and times, in reverse tree order.

        Reverse tree order (``walk.sort_key``, descending) puts every
        directory after everything below it, as deepest-first does, and
        keeps consecutive paths close, so the directory cache serves them
        at a bounded cost each whatever the depth.  The key is the path
        with its separators as NUL, which sorts below every byte a name
        may hold: the same order as tuples of components, at the memory
        cost of one copy of each path.
        """
        work: list[tuple[bytes, Entry | None, tuple[int, int] | None]] = [
            (path, None, times) for path, times in self._parent_times.items()
            if path not in self._dirs]
        work += [(path, entry, None) for path, entry in self._dirs.items()]
        work.sort(key=lambda item: item[0].replace(b'/', b'\0'), reverse=True)
        self._dirs = {}
        self._parent_times = {}
        for path, entry, times in work:
            if entry is None:
                assert times is not None
                self._put_back_times(path, times)
            else:
                self._finish_dir_safely(entry)
        self._at = None

    def _finish_dir_safely(self, entry: Entry) -> None:
        """``_finish_dir``, skipping a directory below one that a later
        record replaced (by a symlink, say): nothing is followed."""
        try:
            self._finish_dir(entry)
        except UnsafePathError as exc:
            LOG.debug("skipping metadata of %s: %s", show(entry.path), exc)

    def _put_back_times(self, path: bytes, times: tuple[int, int]) -> None:
        """Restore a directory's times that a change inside it moved."""
        try:
            with self.parent_of(path, create=False, mutate=False) as (parent, name):
                st = None if parent is None else lstat_at(parent, name)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    os.utime(name, ns=times, dir_fd=parent, follow_symlinks=False)
        except (UnsafePathError, RestoreError, OSError) as exc:
            # removed or replaced since: nothing to put back
            LOG.debug("not restoring times of %s: %s", show(path), exc)

    def _finish_dir(self, entry: Entry) -> None:
        with os_errors(entry.path, "set metadata of"), self.parent_of(entry.path, create=False) as (parent, name):
            if parent is not None:
                st = lstat_at(parent, name)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    self.meta.apply_at(parent, name, entry)

    # -- non-regular objects ------------------------------------------

    def make_symlink(self, entry: Entry) -> None:
        """Create a symlink (its target is data: stored as is, never used)."""
        target = entry.link_target
        if not isinstance(target, bytes) or not target or b'\0' in target:
            raise CorruptRecordError(f"symlink {show(entry.path)} has no valid target")
        with os_errors(entry.path, "create symlink"), self.parent_of(entry.path) as (parent, name):
            assert parent is not None
            self.clear_at(parent, name, entry.path)
            os.symlink(target, name, dir_fd=parent)
            self.meta.apply_at(parent, name, entry)

    def make_fifo(self, entry: Entry) -> None:
        """Create a named pipe."""
        with os_errors(entry.path, "create fifo"), self.parent_of(entry.path) as (parent, name):
            assert parent is not None
            self.clear_at(parent, name, entry.path)
            os.mkfifo(name, _NODE_MODE, dir_fd=parent)
            self.meta.apply_at(parent, name, entry)

    def make_device(self, entry: Entry) -> None:
        """Create a device node; skipped with a warning unless root."""
        if entry.kind not in DEVICE_KINDS:
            raise CorruptRecordError(f"{show(entry.path)}: kind {entry.kind!r} is not a device")
        if not self.is_root:
            # Still validate the whole chain, so a planted symlink is
            # reported the same way whoever runs the restore.
            with os_errors(entry.path, "check"), self.parent_of(entry.path, create=False):
                pass
            self.warn(entry.path, "device not restored: needs root")
            return
        fmt = stat.S_IFBLK if entry.kind == KIND_BLK else stat.S_IFCHR
        with os_errors(entry.path, "create device"), self.parent_of(entry.path) as (parent, name):
            assert parent is not None
            self.clear_at(parent, name, entry.path)
            try:
                os.mknod(name, fmt | _NODE_MODE, entry.rdev, dir_fd=parent)
            except PermissionError as exc:
                self.warn(entry.path, f"device not restored: {exc.strerror}")
                return
            self.meta.apply_at(parent, name, entry)

    # -- removal and metadata-only changes ----------------------------

    def remove(self, path: bytes) -> None:
        """Delete whatever is at ``path`` (recursively); absent is fine."""
        with os_errors(path, "remove"), self.parent_of(path, create=False, mutate=True) as (parent, name):
            if parent is not None:
                self.clear_at(parent, name, path)
        self._dirs.pop(path, None)

    def set_meta(self, entry: Entry) -> None:
        """Re-apply metadata to an existing object of the entry's kind."""
        expected = KIND_FORMAT.get(entry.kind)
        if expected is None:
            raise CorruptRecordError(f"{show(entry.path)}: unknown kind {entry.kind!r}")
        staged = self._staged.get(entry.path)
        if staged is not None and entry.kind == staged.entry.kind:
            staged.entry = dataclasses.replace(entry, size=staged.entry.size)
            return
        with os_errors(entry.path, "set metadata of"), self.parent_of(entry.path, create=False) as (parent, name):
            st = None if parent is None else lstat_at(parent, name)
            if st is None or stat.S_IFMT(st.st_mode) != expected:
                raise RestoreError(f"{show(entry.path)}: no existing "
                                   f"{entry.kind!r} entry to update")
            if entry.kind == KIND_DIR:
                self._dirs[entry.path] = entry
                return
            if entry.kind in DEVICE_KINDS and not self.is_root:
                return
            assert parent is not None
            if stat.S_ISREG(st.st_mode) and not self._ours(st):
                self.note_times(entry.path.split(b"/"), parent)
                self._copy_over(parent, name, entry.path, st, entry)
                return
            # Anything else with other names (a hardlinked symlink, fifo
            # or device) is refused by apply_at: records never ask for it.
            self.meta.apply_at(parent, name, entry, shared=self._made)
