"""Backup-side tree walk yielding an Entry per object in a stable order."""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

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


def sort_key(path: bytes) -> tuple[bytes, ...]:
    """The order of the walk: a path's tuple of components.

    Comparing tuples (not whole byte strings) keeps a directory's subtree
    contiguous: ``a`` < ``a/x`` < ``a.b`` although ``b'a.b' < b'a/x'``.
    Anything merging sorted entry streams must use this key.
    """
    return tuple(path.split(b'/'))


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


@dataclass
class _Frame:
    rel: bytes
    abspath: bytes
    names: Iterator[bytes]
    key: tuple[int, int]


class _Walker:
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

    def make_entry(self, rel: bytes, abspath: bytes, st: os.stat_result, kind: str) -> Entry | None:
        link_target = None
        hardlink_to = None
        size = 0
        if kind == KIND_SYMLINK:
            try:
                link_target = os.readlink(abspath)
            except OSError as exc:
                self.warn(rel, f"cannot read symlink, skipped: {exc.strerror}")
                return None
        elif kind == KIND_FILE:
            size = st.st_size
            if st.st_nlink > 1 and self.hardlinks:
                key = (st.st_dev, st.st_ino)
                known = self.links.get(key)
                if known is None:
                    self.links[key] = (rel, st.st_nlink - 1)
                else:
                    kind = KIND_HARDLINK
                    hardlink_to, left = known
                    if left > 1:
                        self.links[key] = (hardlink_to, left - 1)
                    else:
                        del self.links[key]     # its last name

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

    def tree(self, root: bytes, root_st: os.stat_result, names: list[bytes]) -> Iterator[Entry]:
        """Depth-first, pre-order, children by name: sort_key order.

        Iterative (an explicit stack) so deep trees cannot hit Python's
        recursion limit.  ``ancestors`` holds the (dev, ino) of the
        directories on the current path: meeting one again means a loop
        (a followed symlink or a bind mount) and it is not entered.
        """
        root_key = (root_st.st_dev, root_st.st_ino)
        ancestors = {root_key}
        stack = [_Frame(b'', root, iter(names), root_key)]
        while stack:
            frame = stack[-1]
            name = next(frame.names, None)
            if name is None:
                stack.pop()
                ancestors.discard(frame.key)
                continue
            rel = frame.rel + b'/' + name if frame.rel else name
            if self.excluded(name, rel):
                continue
            abspath = os.path.join(frame.abspath, name)
            st = self.stat(abspath, rel)
            if st is None:
                continue
            kind = kind_of_mode(st.st_mode)
            if kind is None:
                what = "socket" if stat.S_ISSOCK(st.st_mode) else "unsupported file type"
                self.warn(rel, f"{what} skipped")
                continue
            if kind == KIND_DIR:
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    self.warn(rel, "file system loop skipped")
                    continue
            entry = self.make_entry(rel, abspath, st, kind)
            if entry is None:
                continue
            yield entry
            if kind == KIND_DIR:
                children = self.listdir(abspath, rel)
                if children is not None:
                    stack.append(_Frame(rel, abspath, iter(children), key))
                    ancestors.add(key)


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
    walker = _Walker(exclude, dereference, on_warning, hardlinks)
    if stat.S_ISDIR(st.st_mode):
        try:
            names = sorted(os.listdir(root_b))
        except OSError as exc:
            raise SourceError(f"cannot list backup source {shown!r}: "
                              f"{exc.strerror}") from exc
        return walker.tree(root_b, st, names)
    return _single(walker, root_b, st)


def _single(walker: _Walker, root: bytes, st: os.stat_result) -> Iterator[Entry]:
    """The walk of a root that is not a directory: one entry."""
    kind = kind_of_mode(st.st_mode)
    if kind is None:
        raise SourceError(f"backup source {show_path(root)!r} is not a file, "
                          f"directory, symlink, fifo or device")
    name = os.path.basename(root.rstrip(b'/')) or root
    entry = walker.make_entry(name, root, st, kind)
    return iter(() if entry is None else (entry,))


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
