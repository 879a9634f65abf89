"""Restore-side path defences: validation, quoting and symlink-proof directory opening."""

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
    text = (name.decode('utf-8', 'surrogateescape') if isinstance(name, (bytes, bytearray)) else str(name))
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
                out.append(f'\\x{code - 56320:02x}')
            elif code < 0x100:
                out.append(f'\\x{code:02x}')
            elif code < 0x10000:
                out.append(f'\\u{code:04x}')
            else:
                out.append(f'\\U{code:08x}')
    return ''.join(out)


def show(path: bytes | str, limit: int = 300) -> str:
    """Printable, quoted, bounded form of a raw (possibly hostile) path.

    For messages: ``escape`` keeps it on one line and away from the
    terminal; the bound keeps a 4 KiB path from flooding a log line.
    """
    text = (path.decode('utf-8', 'surrogateescape') if isinstance(path, (bytes, bytearray)) else str(path))
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
        raise UnsafePathError(f"path {show(path)} is longer than {MAX_PATH} bytes")
    parts = path.split(b'/')
    # One pass in C for the common, valid case (a deep path has 2,000
    # components); the loop below only names what is wrong.
    if b'' not in parts and b'.' not in parts and b'..' not in parts and max(map(len, parts)) <= MAX_COMPONENT:
        return parts
    for part in parts:
        if not part:
            raise UnsafePathError(f"path {show(path)} has an empty component")
        if part in (b'.', b'..'):
            raise UnsafePathError(f"path {show(path)} has a {part.decode()!r} component")
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


def _refuse_component(dir_fd: int, name: bytes, path: bytes, prefix: bytes) -> RestoreError | UnsafePathError | None:
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


def open_component(cur: int, parts: list[bytes], index: int, path: bytes, create: bool) -> int | None:
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
            error = _refuse_component(cur, name, path, b'/'.join(parts[:index + 1]))
            raise error or exc
    except OSError as exc:
        if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        # The prefix is joined only here: joining it for every component
        # would cost O(depth^2) bytes per path.
        error = _refuse_component(cur, name, path, b'/'.join(parts[:index + 1]))
        if isinstance(error, UnsafePathError) or create:
            raise error or exc
        return None


def open_dir(root_fd: int, parts: list[bytes], path: bytes, *, create: bool) -> int | None:
    """Open the directory ``parts`` below ``root_fd``, one component at a time.

    Every component is opened relative to the previous one with
    O_NOFOLLOW|O_DIRECTORY, so no symlink anywhere in the chain is ever
    followed, whatever earlier records (or other levels) put there.
    With ``create`` missing directories are made (mode 0o700) and any
    non-directory component is an error; without it, a missing or
    non-directory component returns None (nothing exists at ``path``),
    but a symlink component still raises UnsafePathError.  The caller
    owns (and must close) the returned descriptor.  ``dircache.DirCache``
    does the same walk but keeps descriptors for the next path.
    """
    cur = os.open('.', DIR_WALK_FLAGS, dir_fd=root_fd)
    try:
        for index in range(len(parts)):
            nxt = open_component(cur, parts, index, path, create)
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
