"""Reading and writing the xattrs a backup carries (user.* and ACLs)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping

USER_PREFIX = b'user.'
ACL_ACCESS = b'system.posix_acl_access'
ACL_DEFAULT = b'system.posix_acl_default'
ACL_NAMES: frozenset[bytes] = frozenset((ACL_ACCESS, ACL_DEFAULT))

# Errors meaning "this object / file system has no such attributes": not
# worth a warning, the object simply carries none.
_QUIET_ERRNOS = frozenset((errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA, errno.ENOENT))

XattrTarget = bytes | int

ErrorCallback = Callable[[str], None]


def is_managed(name: bytes, include_acl: bool = True) -> bool:
    """True if ``name`` is an attribute this library backs up and restores.

    Only ``user.*`` and the two POSIX ACL attributes are handled.  Other
    namespaces are refused on purpose: ``security.capability`` on a
    restored file would grant privileges just like a setuid bit, and
    ``trusted.*``/``security.selinux`` belong to the host, not the data.
    """
    if b'\0' in name:
        return False
    if name.startswith(USER_PREFIX) and len(name) > len(USER_PREFIX):
        return True
    return include_acl and name in ACL_NAMES


def _list(target: XattrTarget, follow_symlinks: bool) -> list[bytes]:
    if isinstance(target, int):
        names = os.listxattr(target)
    else:
        names = os.listxattr(target, follow_symlinks=follow_symlinks)
    return [os.fsencode(n) for n in names]


def read_xattrs(target: XattrTarget, *, follow_symlinks: bool = False,
                include_acl: bool = False,
                on_error: ErrorCallback | None = None) -> dict[bytes, bytes]:
    """Return the managed attributes of ``target`` (a path or an open fd).

    Never raises for attribute trouble: unsupported file systems and
    attributes vanishing between list and get yield nothing; any other
    failure (EPERM, EACCES...) is reported through ``on_error`` and the
    attribute is left out, because one unreadable attribute must not
    abort a backup.
    """
    try:
        names = _list(target, follow_symlinks)
    except OSError as exc:
        if exc.errno not in _QUIET_ERRNOS and on_error is not None:
            on_error(f"cannot list xattrs: {exc.strerror}")
        return {}
    result: dict[bytes, bytes] = {}
    if not names:       # most objects
        return result
    for name in sorted(names):
        if not is_managed(name, include_acl):
            continue
        try:
            if isinstance(target, int):
                value = os.getxattr(target, name)
            else:
                value = os.getxattr(target, name, follow_symlinks=follow_symlinks)
        except OSError as exc:
            if exc.errno not in _QUIET_ERRNOS and on_error is not None:
                on_error(f"cannot read xattr {name!r}: {exc.strerror}")
            continue
        result[name] = value
    return result


def write_xattrs(target: XattrTarget, wanted: Mapping[bytes, bytes], *,
                 sync: bool = False, follow_symlinks: bool = True,
                 on_error: ErrorCallback | None = None) -> None:
    """Set the managed attributes of ``wanted`` on ``target``.

    Unmanaged names are skipped with a warning (see ``is_managed``).  With
    ``sync`` the ``user.*`` attributes present on ``target`` but absent
    from ``wanted`` are removed, so an object that lost one between two
    backups loses it on restore too (ACLs are only set, never removed).
    Failures are reported through ``on_error`` and never raised: a
    restore on a file system without xattr support should still restore
    the data.
    """
    def report(message: str) -> None:
        if on_error is not None:
            on_error(message)

    if sync:
        try:
            present = _list(target, follow_symlinks)
        except OSError as exc:
            present = []
            if exc.errno not in _QUIET_ERRNOS:
                report(f"cannot list xattrs: {exc.strerror}")
        for name in present:
            # ACLs are only ever set, not removed: a backup made without
            # them (not root) cannot tell "none" from "not captured", and
            # inherited default ACLs should survive such a restore.
            if name in wanted or not is_managed(name, include_acl=False):
                continue
            try:
                if isinstance(target, int):
                    os.removexattr(target, name)
                else:
                    os.removexattr(target, name, follow_symlinks=follow_symlinks)
            except OSError as exc:
                if exc.errno not in _QUIET_ERRNOS:
                    report(f"cannot remove xattr {name!r}: {exc.strerror}")
    for name, value in wanted.items():
        if not is_managed(name):
            report(f"xattr {name!r} not restored: namespace not allowed")
            continue
        try:
            if isinstance(target, int):
                os.setxattr(target, name, value)
            else:
                os.setxattr(target, name, value, follow_symlinks=follow_symlinks)
        except OSError as exc:
            report(f"xattr {name!r} not restored: {exc.strerror}")
