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


def show(path: bytes, limit: int = 300) -> str:
    """Printable, bounded form of a raw (possibly hostile) path."""
    text = path.decode('utf-8', 'backslashreplace')
    if len(text) > limit:
        text = text[:limit] + '...'
    return repr(text)


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
    owns (and must close) the returned descriptor.
    """
    cur = os.open('.', DIR_WALK_FLAGS, dir_fd=root_fd)
    try:
        for index, name in enumerate(parts):
            prefix = b'/'.join(parts[:index + 1])
            try:
                nxt = os.open(name, DIR_WALK_FLAGS, dir_fd=cur)
            except FileNotFoundError:
                if not create:
                    os.close(cur)
                    return None
                try:
                    os.mkdir(name, IMPLICIT_DIR_MODE, dir_fd=cur)
                except FileExistsError:
                    pass
                try:
                    nxt = os.open(name, DIR_WALK_FLAGS, dir_fd=cur)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    error = _refuse_component(cur, name, path, prefix)
                    raise error or exc
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                error = _refuse_component(cur, name, path, prefix)
                if isinstance(error, UnsafePathError) or create:
                    raise error or exc
                os.close(cur)
                return None
            os.close(cur)
            cur = nxt
        return cur
    except BaseException:
        try:
            os.close(cur)
        except OSError:
            pass
        raise


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


def remove_at(dir_fd: int, name: bytes) -> bool:
    """Remove whatever ``name`` is in ``dir_fd``; directories recursively.

    Never follows a symlink: a symlink is unlinked, never descended, and
    subdirectories are entered by descriptor with O_NOFOLLOW, so a link
    swapped in mid-removal is removed rather than followed.  Iterative:
    depth is bounded by open descriptors, not Python's recursion limit.
    Returns True if something was removed, False if nothing was there.
    """
    st = lstat_at(dir_fd, name)
    if st is None:
        return False
    if not stat.S_ISDIR(st.st_mode):
        _unlink_quiet(dir_fd, name)
        return True
    try:
        top = os.open(name, DIR_LIST_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):  # swapped: not a dir
            _unlink_quiet(dir_fd, name)
            return True
        if exc.errno == errno.ENOENT:
            return False
        raise
    # Each frame: (parent fd, name in parent, own fd, remaining children).
    try:
        _make_writable(top, st)
        children = _listdir_fd(top)
    except BaseException:
        os.close(top)
        raise
    stack: list[tuple[int, bytes, int, list[bytes]]] = [
        (dir_fd, name, top, children)]
    try:
        while stack:
            parent, own_name, fd, children = stack[-1]
            if not children:
                stack.pop()
                os.close(fd)
                try:
                    os.rmdir(own_name, dir_fd=parent)
                except FileNotFoundError:
                    pass
                continue
            child = children.pop()
            cst = lstat_at(fd, child)
            if cst is None:
                continue
            if not stat.S_ISDIR(cst.st_mode):
                _unlink_quiet(fd, child)
                continue
            try:
                cfd = os.open(child, DIR_LIST_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    _unlink_quiet(fd, child)
                    continue
                if exc.errno == errno.ENOENT:
                    continue
                raise
            try:
                _make_writable(cfd, cst)
                grandchildren = _listdir_fd(cfd)
            except BaseException:
                os.close(cfd)
                raise
            stack.append((fd, child, cfd, grandchildren))
    except BaseException:
        for _, _, fd, _ in stack:
            try:
                os.close(fd)
            except OSError:
                pass
        raise
    return True


def _unlink_quiet(dir_fd: int, name: bytes) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
