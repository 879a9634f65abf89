"""Restore-side path defences: validation and symlink-proof fd access."""

from __future__ import annotations

import errno
import os
import stat

from freezer_rsyncv2.errors import RestoreError, UnsafePathError

MAX_COMPONENT = 255
MAX_PATH = 4096

# O_PATH: descending needs no read permission on the directories (only
# search), so a tree whose modes were already restored (e.g. 0o311) can
# still be entered; *at() calls accept O_PATH descriptors as dir_fd.
# O_NOFOLLOW|O_DIRECTORY: a symlink, even one pointing at a directory,
# fails with ENOTDIR/ELOOP instead of being followed.
O_PATH = getattr(os, 'O_PATH', os.O_RDONLY)
DIR_WALK_FLAGS = O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Listing a directory (for recursive removal) needs a real descriptor.
DIR_LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# Mode of directories created implicitly for a parent the stream never
# described; private until a record (if any) says otherwise.
IMPLICIT_DIR_MODE = 0o700


# Characters spelled out by ``escape``; every other non-printable one is
# written as a \xNN, \uNNNN or \UNNNNNNNN escape of its code point.
_NAMED_ESCAPES = {'\n': '\\n', '\r': '\\r', '\t': '\\t'}


def escape(name: bytes | str, *, backslash: bool = True) -> str:
    """One printable line for a raw (possibly hostile) name.

    Every stored path, and every name a storage lists, is attacker data:
    written raw, a newline forges a second log line and ESC, CSI (0x9b)
    or any other control character drives the terminal.  So every
    character that is not printable (C0, DEL, C1, line and paragraph
    separators, format characters such as bidi overrides, unassigned code
    points) becomes a backslash escape (``\\n``, ``\\x1b``, ``\\u202e``), and
    each byte that is not UTF-8 becomes ``\\xNN`` rather than being lost;
    a backslash itself is doubled, so the escaped form is unambiguous.
    Text from ``os.fsdecode`` (undecodable bytes as surrogates) maps back
    to the same ``\\xNN``.  ``backslash=False`` leaves backslashes as they
    are: for whole messages whose names were escaped already (log lines,
    error messages), where doubling them again would garble the names.
    This is the one quoting function: ``show``, ``walk.show_path`` and the
    command line all use it.
    """
    text = (name.decode('utf-8', 'surrogateescape')
            if isinstance(name, (bytes, bytearray)) else str(name))
    if text.isprintable() and not (backslash and '\\' in text):
        return text
    out = []
    for char in text:
        if char == '\\':
            out.append('\\\\' if backslash else char)
        elif char.isprintable():
            out.append(char)
        elif char in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[char])
        else:
            code = ord(char)
            if 0xdc80 <= code <= 0xdcff:    # an undecodable byte
                out.append('\\x%02x' % (code - 0xdc00))
            elif code < 0x100:
                out.append('\\x%02x' % code)
            elif code < 0x10000:
                out.append('\\u%04x' % code)
            else:
                out.append('\\U%08x' % code)
    return ''.join(out)


def show(path: bytes | str, limit: int = 300) -> str:
    """Printable, quoted, bounded form of a raw (possibly hostile) path.

    For messages: ``escape`` keeps it on one line and away from the
    terminal; the bound keeps a 4 KiB path from flooding a log line.
    """
    text = (path.decode('utf-8', 'surrogateescape')
            if isinstance(path, (bytes, bytearray)) else str(path))
    more = ''
    if len(text) > limit:
        text, more = text[:limit], '...'
    return "'" + escape(text) + more + "'"


def check_path(path: bytes) -> list[bytes]:
    """Validate a stored path and return its components.

    Accepted: non-empty bytes, relative, ``b'/'``-separated, no empty,
    ``.`` or ``..`` component, no NUL, components of at most 255 bytes
    and the whole at most 4096 bytes.  Anything else raises
    UnsafePathError before anything is written: such a path either
    tries to leave the restore root or is not something the walk emits.
    """
    if not isinstance(path, bytes):
        raise UnsafePathError(f"path {path!r} is not bytes")
    if not path:
        raise UnsafePathError("empty path")
    if b'\0' in path:
        raise UnsafePathError(f"path {show(path)} contains a NUL byte")
    if path.startswith(b'/'):
        raise UnsafePathError(f"path {show(path)} is absolute")
    if len(path) > MAX_PATH:
        raise UnsafePathError(
            f"path {show(path)} is longer than {MAX_PATH} bytes")
    parts = path.split(b'/')
    # One pass in C for the common, valid case (a deep path has 2,000
    # components); the loop below only names what is wrong.
    if b'' not in parts and b'.' not in parts and b'..' not in parts \
            and max(map(len, parts)) <= MAX_COMPONENT:
        return parts
    for part in parts:
        if not part:
            raise UnsafePathError(f"path {show(path)} has an empty component")
        if part in (b'.', b'..'):
            raise UnsafePathError(
                f"path {show(path)} has a {part.decode()!r} component")
        if len(part) > MAX_COMPONENT:
            raise UnsafePathError(f"path {show(path)} has a component longer "
                                  f"than {MAX_COMPONENT} bytes")
    return parts


def lstat_at(dir_fd: int, name: bytes) -> os.stat_result | None:
    """lstat of ``name`` in ``dir_fd``; None when nothing is there."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _refuse_component(dir_fd: int, name: bytes, path: bytes,
                      prefix: bytes) -> RestoreError | UnsafePathError | None:
    """The error for a component that could not be entered as a directory.

    None means "not there" (ENOENT race).  A symlink is reported as
    UnsafePathError: following it is exactly what an attack would want.
    """
    st = lstat_at(dir_fd, name)
    if st is None:
        return None
    if stat.S_ISLNK(st.st_mode):
        return UnsafePathError(f"path {show(path)}: component {show(prefix)} "
                               f"is a symlink, refusing to follow it")
    return RestoreError(f"path {show(path)}: component {show(prefix)} "
                        f"is not a directory")


def _enter(cur: int, parts: list[bytes], index: int, path: bytes,
           create: bool) -> int | None:
    """Open component ``parts[index]`` of ``path`` below the open ``cur``.

    O_NOFOLLOW|O_DIRECTORY: a symlink is never followed.  With ``create``
    a missing directory is made (mode 0o700) and a non-directory is an
    error; without it, missing or not a directory gives None.  A symlink
    always raises UnsafePathError.  The caller owns the descriptor.
    """
    name = parts[index]
    try:
        return os.open(name, DIR_WALK_FLAGS, dir_fd=cur)
    except FileNotFoundError:
        if not create:
            return None
        try:
            os.mkdir(name, IMPLICIT_DIR_MODE, dir_fd=cur)
        except FileExistsError:
            pass
        try:
            return os.open(name, DIR_WALK_FLAGS, dir_fd=cur)
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            error = _refuse_component(cur, name, path,
                                      b'/'.join(parts[:index + 1]))
            raise error or exc
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        # The prefix is joined only here: joining it for every component
        # would cost O(depth^2) bytes per path.
        error = _refuse_component(cur, name, path,
                                  b'/'.join(parts[:index + 1]))
        if isinstance(error, UnsafePathError) or create:
            raise error or exc
        return None


def open_dir(root_fd: int, parts: list[bytes], path: bytes, *,
             create: bool) -> int | None:
    """Open the directory ``parts`` below ``root_fd``, one component at a time.

    Every component is opened relative to the previous one with
    O_NOFOLLOW|O_DIRECTORY, so no symlink anywhere in the chain is ever
    followed, whatever earlier records (or other levels) put there.
    With ``create`` missing directories are made (mode 0o700) and any
    non-directory component is an error; without it, a missing or
    non-directory component returns None (nothing exists at ``path``),
    but a symlink component still raises UnsafePathError.  The caller
    owns (and must close) the returned descriptor.  ``DirCache`` does
    the same walk but keeps descriptors for the next path.
    """
    cur = os.open('.', DIR_WALK_FLAGS, dir_fd=root_fd)
    try:
        for index in range(len(parts)):
            nxt = _enter(cur, parts, index, path, create)
            os.close(cur)
            if nxt is None:
                return None
            cur = nxt
        return cur
    except BaseException:
        try:
            os.close(cur)
        except OSError:
            pass
        raise


#: Fan-out of the levels ``FdChain`` keeps open (see ``_kept``).
CHAIN_FAN = 16


def _kept(level: int, top: int) -> bool:
    """Whether a chain ``top`` levels deep keeps level ``level`` open.

    Every level of the last block of 16, every 16th level of the last
    block of 256, every 256th of the last block of 4096, and so on: at
    most 16 descriptors per power of 16, under 40 at the deepest path a
    record may name (2048 components), under 80 for a million levels.
    Going back up then costs at most ``CHAIN_FAN - 1`` re-opens per kept
    level passed: O(1) per level, amortized, and never more than the
    path's own length for one lookup.
    """
    unit = 1
    while True:
        block = unit * CHAIN_FAN
        if level >= top - top % block:
            return level % unit == 0
        unit = block


class FdChain:
    """Descriptors of the directories along one path below ``base``.

    Why: walking from the root for every entry costs O(depth) opens per
    entry, O(depth^2) for a deep tree, and holding a descriptor for every
    level of a 2,000-deep path runs out of descriptors.  A chain keeps
    only the levels ``_kept`` chooses and re-opens a dropped one from the
    nearest kept ancestor, by name, O_NOFOLLOW|O_DIRECTORY, checking that
    it is the very directory (device and inode) that was entered before;
    one that is not raises RestoreError.  ``base`` belongs to the caller.
    """

    def __init__(self, base: int) -> None:
        self.base = base
        self.names: list[bytes] = []
        self._fds: list[int | None] = []
        self._ids: list[tuple[int, int]] = []

    @property
    def depth(self) -> int:
        return len(self.names)

    def push(self, name: bytes, fd: int) -> None:
        """Append directory ``name``, open as ``fd`` (the chain owns it now)."""
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        self.names.append(name)
        self._fds.append(fd)
        self._ids.append((st.st_dev, st.st_ino))
        top = len(self.names)
        block = CHAIN_FAN
        while top % block == 0:     # crossed a boundary: thin the block
            for level in range(top - block + 1, top):
                if not _kept(level, top):
                    self._drop(level)
            block *= CHAIN_FAN

    def _drop(self, level: int) -> None:
        fd = self._fds[level - 1]
        if fd is not None:
            self._fds[level - 1] = None
            os.close(fd)

    def truncate(self, depth: int) -> None:
        """Forget (and close) the levels below ``depth``."""
        for level in range(len(self.names), depth, -1):
            self._drop(level)
        del self.names[depth:], self._fds[depth:], self._ids[depth:]

    def close(self) -> None:
        self.truncate(0)

    def fd(self) -> int:
        """The descriptor of the deepest level (``base`` when empty)."""
        top = len(self.names)
        if top == 0:
            return self.base
        found = self._fds[top - 1]
        if found is not None:
            return found
        start = top - 1
        while start > 0 and self._fds[start - 1] is None:
            start -= 1
        cur = self.base if start == 0 else self._fds[start - 1]
        assert cur is not None
        temporary = False       # cur was opened here and is not kept
        for level in range(start + 1, top + 1):
            try:
                nxt = os.open(self.names[level - 1], DIR_WALK_FLAGS,
                              dir_fd=cur)
            finally:
                if temporary:
                    os.close(cur)
            try:
                st = os.fstat(nxt)
                if (st.st_dev, st.st_ino) != self._ids[level - 1]:
                    raise RestoreError(
                        f"directory {show(b'/'.join(self.names[:level]))} "
                        f"was replaced while in use")
            except BaseException:
                os.close(nxt)
                raise
            temporary = not _kept(level, top)
            if not temporary:
                self._fds[level - 1] = nxt
            cur = nxt
        return cur


def _common_prefix(one: list[bytes], other: list[bytes]) -> int:
    """How many leading components two paths share.

    A binary search over C-level slice comparisons: a few Python steps
    even for two 2,000-component paths.
    """
    low, high = 0, min(len(one), len(other))
    while low < high:
        mid = (low + high + 1) // 2
        if one[:mid] == other[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


class DirCache:
    """Parent directories of restored entries, reusing the last one's chain.

    Entries come in tree order, so an entry's parent shares most of its
    path with the previous entry's parent: only the components past the
    common prefix are opened (``open_dir``'s rules, component by
    component), and the kept descriptors are bounded (``FdChain``).  The
    owner must ``invalidate`` a directory it removes or replaces and
    ``reset`` whenever the tree may have changed behind its back (a new
    level, ``finish``).
    """

    def __init__(self, root_fd: int) -> None:
        self._chain = FdChain(root_fd)

    def lookup(self, parts: list[bytes], path: bytes, *,
               create: bool) -> int | None:
        """The directory ``parts`` (a borrowed descriptor), or None.

        Same results and errors as ``open_dir``; the descriptor stays the
        cache's: valid until the next call, never to be closed.
        """
        chain = self._chain
        common = _common_prefix(parts, chain.names)
        chain.truncate(common)
        try:
            cur = chain.fd()
        except (OSError, RestoreError):
            # Changed behind our back: walk afresh from the root.
            chain.truncate(0)
            cur = chain.base
        for index in range(chain.depth, len(parts)):
            nxt = _enter(cur, parts, index, path, create)
            if nxt is None:
                return None
            chain.push(parts[index], nxt)
            cur = nxt
        return cur

    def invalidate(self, parts: list[bytes]) -> None:
        """Directory ``parts`` is being removed or replaced: drop it."""
        if self._chain.names[:len(parts)] == parts:
            self._chain.truncate(len(parts) - 1)

    def reset(self) -> None:
        self._chain.close()

    close = reset


def _make_writable(fd: int, st: os.stat_result) -> None:
    """Give the owner rwx on a directory we are about to empty.

    Needed when not root: a directory restored read-only cannot have its
    entries unlinked otherwise.  Best effort (fails if not ours).
    """
    if st.st_mode & 0o700 != 0o700:
        try:
            os.chmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
        except OSError:
            pass


def _listdir_fd(fd: int) -> list[bytes]:
    return [os.fsencode(n) for n in os.listdir(fd)]


def _open_listing(dir_fd: int, name: bytes, st: os.stat_result
                  ) -> tuple[int, list[bytes]] | None:
    """Open directory ``name`` to empty it: (descriptor, its entries).

    None when it is gone; a symlink or file swapped in is unlinked
    (never followed) and also gives None.
    """
    try:
        fd = os.open(name, DIR_LIST_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):  # swapped: not a dir
            _unlink_quiet(dir_fd, name)
            return None
        if exc.errno == errno.ENOENT:
            return None
        raise
    try:
        _make_writable(fd, st)
        return fd, _listdir_fd(fd)
    except BaseException:
        os.close(fd)
        raise


def remove_at(dir_fd: int, name: bytes) -> bool:
    """Remove whatever ``name`` is in ``dir_fd``; directories recursively.

    Never follows a symlink: a symlink is unlinked, never descended, and
    subdirectories are entered by descriptor with O_NOFOLLOW, so a link
    swapped in mid-removal is removed rather than followed.  Iterative,
    with the directories being emptied held in an ``FdChain``: neither
    Python's recursion limit nor the descriptor limit bounds the depth
    (a few dozen descriptors at depth 2,000).  Returns True if something
    was removed, False if nothing was there.
    """
    st = lstat_at(dir_fd, name)
    if st is None:
        return False
    if not stat.S_ISDIR(st.st_mode):
        _unlink_quiet(dir_fd, name)
        return True
    opened = _open_listing(dir_fd, name, st)
    if opened is None:     # gone, or swapped for a non-directory (unlinked)
        return True
    chain = FdChain(dir_fd)
    chain.push(name, opened[0])
    # What is left to remove in each directory of the chain.
    pending: list[list[bytes]] = [opened[1]]
    try:
        while pending:
            children = pending[-1]
            if not children:
                own = chain.names[-1]
                pending.pop()
                chain.truncate(chain.depth - 1)
                try:
                    os.rmdir(own, dir_fd=chain.fd())
                except FileNotFoundError:
                    pass
                continue
            child = children.pop()
            fd = chain.fd()
            cst = lstat_at(fd, child)
            if cst is None:
                continue
            if not stat.S_ISDIR(cst.st_mode):
                _unlink_quiet(fd, child)
                continue
            opened = _open_listing(fd, child, cst)
            if opened is None:
                continue
            chain.push(child, opened[0])
            pending.append(opened[1])
    finally:
        chain.close()
    return True


def _unlink_quiet(dir_fd: int, name: bytes) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
