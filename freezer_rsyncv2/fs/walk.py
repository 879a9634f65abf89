"""Backup-side tree walk yielding an Entry per object in a stable order."""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from oslo_log import log

from freezer_rsyncv2.errors import SourceError
from freezer_rsyncv2.fs import owners
from freezer_rsyncv2.fs import xattrs as xattr_mod
from freezer_rsyncv2.fs.entry import KIND_DIR, KIND_FILE, KIND_HARDLINK, KIND_SYMLINK, Entry, kind_of_mode
from freezer_rsyncv2.fs.safepath import escape

LOG = log.getLogger(__name__)

WarningCallback = Callable[[bytes, str], None]
StrOrBytesPath = str | bytes | os.PathLike[str] | os.PathLike[bytes]


def show_path(path: bytes) -> str:
    """Printable, one-line form of a raw path (``safepath.escape``).

    Control characters (a newline, ESC, CSI...) are escaped so that a
    file name can neither forge a log line nor drive the terminal;
    undecodable bytes are escaped, not lost.  Unquoted; ``safepath.show``
    is the quoted form.
    """
    return escape(path)


def _log_warning(path: bytes, message: str) -> None:
    LOG.warning("%s: %s", show_path(path), message)


def sort_key(path: bytes) -> bytes:
    """The order of the walk: a path with its separators as NUL bytes.

    Ordering these bytes orders paths by their tuple of components (NUL
    sorts before any byte a name may hold), which keeps a directory's
    subtree contiguous: ``a`` < ``a/x`` < ``a.b`` although
    ``b'a.b' < b'a/x'``.  Anything merging sorted entry streams must use
    this key.
    """
    return path.replace(b'/', b'\0')


def _compile_excludes(patterns: Sequence[str | bytes]) -> list[re.Pattern[bytes]]:
    """Glob patterns as bytes regexes (bytes so non-UTF-8 names can match).

    A leading ``./`` and trailing ``/`` are dropped, as users write
    ``--exclude ./cache/`` meaning the directory ``cache``.
    """
    compiled = []
    for pattern in patterns:
        raw = os.fsencode(pattern)
        while raw.startswith(b'./'):
            raw = raw[2:]
        raw = raw.rstrip(b'/') or raw
        if not raw:
            continue
        # fnmatch.translate works on str; latin-1 maps bytes 1:1 to code
        # points, which is what fnmatch itself does for bytes patterns.
        regex = fnmatch.translate(raw.decode('latin-1')).encode('latin-1')
        compiled.append(re.compile(regex, re.DOTALL))
    return compiled


class Found(NamedTuple):
    """One object the walk met: what ``lstat`` (or ``stat``) said of it.

    ``kind`` is KIND_HARDLINK, with ``hardlink_to`` the group's first
    path, for a regular file whose other name came before in the walk.
    ``Walker.make_entry`` reads the rest (owner names, symlink target,
    xattrs) into an Entry; a backup asks for that only of what changed.
    """

    path: bytes
    abspath: bytes
    st: os.stat_result
    kind: str
    hardlink_to: bytes | None


@dataclass
class _Frame:
    rel: bytes
    abspath: bytes          # with a trailing slash
    names: Iterator[bytes]
    key: tuple[int, int]


class Walker:
    """State of one walk: hardlink table, ancestor set, options."""

    def __init__(self, exclude: Sequence[str | bytes], dereference: bool,
                 on_warning: WarningCallback,
                 hardlinks: bool = True) -> None:
        self.excludes = _compile_excludes(exclude)
        self.dereference = dereference
        self.hardlinks = hardlinks
        self.warn = on_warning
        self.include_acl = os.geteuid() == 0
        # (dev, ino) -> (first path, names not met yet), for regular files
        # with nlink > 1 only, and only until their last name is met: a
        # tree of hardlinked pairs holds the pairs open at one time, not
        # one item per file.
        self.links: dict[tuple[int, int], tuple[bytes, int]] = {}

    def excluded(self, name: bytes, rel: bytes) -> bool:
        return any(rx.match(name) or rx.match(rel) for rx in self.excludes)

    def stat(self, abspath: bytes, rel: bytes) -> os.stat_result | None:
        """lstat (or stat when dereferencing); None after a warning."""
        try:
            if self.dereference:
                return os.stat(abspath)
            return os.lstat(abspath)
        except FileNotFoundError:
            if self.dereference and os.path.lexists(abspath):
                self.warn(rel, "dangling symlink skipped")
            else:
                self.warn(rel, "vanished during backup, skipped")
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self.warn(rel, "symlink loop skipped")
            else:
                self.warn(rel, f"cannot stat, skipped: {exc.strerror}")
        return None

    def make_entry(self, found: Found) -> Entry | None:
        """The Entry of ``found``; None (after a warning) if its symlink cannot be read."""
        rel, abspath, st, kind, hardlink_to = found
        link_target = None
        size = 0
        if kind == KIND_SYMLINK:
            try:
                link_target = os.readlink(abspath)
            except OSError as exc:
                self.warn(rel, f"cannot read symlink, skipped: {exc.strerror}")
                return None
        elif kind in (KIND_FILE, KIND_HARDLINK):
            size = st.st_size

        def xattr_error(message: str) -> None:
            self.warn(rel, message)

        attrs = xattr_mod.read_xattrs(
            abspath, follow_symlinks=self.dereference,
            include_acl=self.include_acl, on_error=xattr_error)
        return Entry(
            path=rel, kind=kind, mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid, gid=st.st_gid,
            uname=owners.user_name(st.st_uid),
            gname=owners.group_name(st.st_gid),
            size=size, mtime_ns=st.st_mtime_ns, atime_ns=st.st_atime_ns,
            ctime_ns=st.st_ctime_ns, ino=st.st_ino, dev=st.st_dev,
            nlink=st.st_nlink,
            rdev=st.st_rdev if stat.S_ISCHR(st.st_mode)
            or stat.S_ISBLK(st.st_mode) else 0,
            link_target=link_target, hardlink_to=hardlink_to, xattrs=attrs)

    def listdir(self, abspath: bytes, rel: bytes) -> list[bytes] | None:
        try:
            return sorted(os.listdir(abspath))
        except OSError as exc:
            self.warn(rel, f"cannot list directory, contents skipped: "
                           f"{exc.strerror}")
            return None

    def entries(self, found: Iterable[Found]) -> Iterator[Entry]:
        """The Entry of each of ``found``, in its order (those ``make_entry`` skips left out)."""
        for item in found:
            entry = self.make_entry(item)
            if entry is not None:
                yield entry

    def found(self, root: bytes, root_st: os.stat_result, names: list[bytes]) -> Iterator[Found]:
        """Depth-first, pre-order, children by name: sort_key order.

        Iterative (an explicit stack) so deep trees cannot hit Python's
        recursion limit.  ``ancestors`` holds the (dev, ino) of the
        directories on the current path: meeting one again means a loop
        (a followed symlink or a bind mount) and it is not entered.
        """
        root_key = (root_st.st_dev, root_st.st_ino)
        ancestors = {root_key}
        stack = [_Frame(b'', root if root.endswith(b'/') else root + b'/', iter(names), root_key)]
        quick_stat = os.stat if self.dereference else os.lstat
        new_found = tuple.__new__           # Found(...) without its Python-level __new__
        while stack:
            frame = stack[-1]
            name = next(frame.names, None)
            if name is None:
                stack.pop()
                ancestors.discard(frame.key)
                continue
            rel = frame.rel + b'/' + name if frame.rel else name
            if self.excludes and self.excluded(name, rel):
                continue
            abspath = frame.abspath + name
            try:
                st = quick_stat(abspath)
            except OSError:
                again = self.stat(abspath, rel)     # again, to say why
                if again is None:
                    continue
                st = again
            kind = kind_of_mode(st.st_mode)
            if kind is None:
                what = "socket" if stat.S_ISSOCK(st.st_mode) else "unsupported file type"
                self.warn(rel, f"{what} skipped")
                continue
            hardlink_to = None
            if kind == KIND_DIR:
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    self.warn(rel, "file system loop skipped")
                    continue
            elif kind == KIND_FILE and st.st_nlink > 1 and self.hardlinks:
                kind, hardlink_to = self.link(rel, st)
            yield new_found(Found, (rel, abspath, st, kind, hardlink_to))
            if kind == KIND_DIR:
                children = self.listdir(abspath, rel)
                if children is not None:
                    stack.append(_Frame(rel, abspath + b'/', iter(children), key))
                    ancestors.add(key)

    def link(self, rel: bytes, st: os.stat_result) -> tuple[str, bytes | None]:
        """(kind, hardlink_to) of a regular file with more than one name."""
        key = (st.st_dev, st.st_ino)
        known = self.links.get(key)
        if known is None:
            self.links[key] = (rel, st.st_nlink - 1)
            return KIND_FILE, None
        hardlink_to, left = known
        if left > 1:
            self.links[key] = (hardlink_to, left - 1)
        else:
            del self.links[key]     # its last name
        return KIND_HARDLINK, hardlink_to


def walk(root: StrOrBytesPath, exclude: Sequence[str | bytes] = (),
         dereference: bool = False,
         on_warning: WarningCallback = _log_warning,
         hardlinks: bool = True) -> Iterator[Entry]:
    """Walk ``root`` and yield one Entry per object, in ``sort_key`` order.

    The root itself yields no entry, unless it is not a directory: then
    the walk is that single object named by its basename.  Problems with
    single objects (vanished, unreadable directory, socket, dangling link
    when dereferencing) go to ``on_warning`` and the walk continues;
    problems with the root raise SourceError right away, when ``walk``
    is called, not on first iteration.

    A root given with a trailing slash that names a symlink to a
    directory is walked as that directory (the kernel resolves the
    slash), as tar and rsync do.

    ``hardlinks=False`` stores every path of a hardlink group as a file
    of its own (freezer-agent's ``--dereference-symlink hard``).
    """
    walker, found = start(root, exclude, dereference, on_warning, hardlinks)
    return walker.entries(found)


def start(root: StrOrBytesPath, exclude: Sequence[str | bytes] = (),
          dereference: bool = False,
          on_warning: WarningCallback = _log_warning,
          hardlinks: bool = True) -> tuple[Walker, Iterator[Found]]:
    """``walk`` in two steps: the walker and what it finds (``Found``), in
    ``sort_key`` order.  ``walker.make_entry(found)`` makes the Entry that
    ``walk`` yields; a backup makes it only for what changed.  Raises
    SourceError as ``walk`` does."""
    root_b = os.fsencode(root)
    if not root_b:
        raise SourceError("backup source path is empty")
    shown = show_path(root_b)
    try:
        st = os.stat(root_b) if dereference else os.lstat(root_b)
    except FileNotFoundError:
        raise SourceError(f"backup source {shown!r} does not exist") from None
    except OSError as exc:
        raise SourceError(f"cannot access backup source {shown!r}: {exc.strerror}") from exc
    walker = Walker(exclude, dereference, on_warning, hardlinks)
    if stat.S_ISDIR(st.st_mode):
        try:
            names = sorted(os.listdir(root_b))
        except OSError as exc:
            raise SourceError(f"cannot list backup source {shown!r}: "
                              f"{exc.strerror}") from exc
        return walker, walker.found(root_b, st, names)
    kind = kind_of_mode(st.st_mode)
    if kind is None:
        raise SourceError(f"backup source {shown!r} is not a file, "
                          f"directory, symlink, fifo or device")
    name = os.path.basename(root_b.rstrip(b'/')) or root_b
    return walker, iter((Found(name, root_b, st, kind, None),))


def data_ranges(fd: int, size: int, keep_offset: bool = True) -> list[tuple[int, int]]:
    """The ``(offset, length)`` ranges of ``[0, size)`` that hold data.

    Gaps between ranges are holes (read as zeros) that the engine need
    not read nor store.  Found with SEEK_DATA/SEEK_HOLE; where those are
    unsupported the whole file is one range, which is always correct,
    merely not sparse.  Ranges are clipped to ``size`` (the size the
    caller recorded) and the fd's offset is left where it was, unless
    ``keep_offset`` is false (a caller that only reads with pread: two
    system calls fewer).
    """
    if size <= 0:
        return []
    whole = [(0, size)]
    if not hasattr(os, 'SEEK_DATA'):
        return whole
    saved = None
    if keep_offset:
        try:
            saved = os.lseek(fd, 0, os.SEEK_CUR)
        except OSError:
            return whole
    ranges: list[tuple[int, int]] = []
    try:
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only holes (or EOF) follow
                    break
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            if end <= start:  # cannot happen on a sane fs; do not loop
                return whole
            ranges.append((start, end - start))
            offset = end
    except OSError:
        return whole
    finally:
        if saved is not None:
            try:
                os.lseek(fd, saved, os.SEEK_SET)
            except OSError:
                pass
    return ranges
