"""Cached lookups between user/group ids and names, in both directions."""

from __future__ import annotations

import functools
import grp
import pwd

# The caches are bounded: a tree rarely has more than a handful of owners,
# yet a hostile archive could name millions of distinct users.
_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=_CACHE_SIZE)
def user_name(uid: int) -> str | None:
    """Name of ``uid`` in the password database, or None if unknown."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError, ValueError):
        return None


@functools.lru_cache(maxsize=_CACHE_SIZE)
def group_name(gid: int) -> str | None:
    """Name of ``gid`` in the group database, or None if unknown."""
    try:
        return grp.getgrgid(gid).gr_name
    except (KeyError, OverflowError, ValueError):
        return None


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _uid_by_name(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except (KeyError, ValueError):
        return None


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _gid_by_name(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except (KeyError, ValueError):
        return None


def resolve_uid(name: str | None, uid: int) -> int:
    """The local uid for a stored owner: by name first, numeric fallback.

    Names win because uids differ between hosts (a restore on another
    machine should give files to the same *user*, as tar does), while
    the numeric id keeps ownership for users unknown on this host.
    """
    if name:
        found = _uid_by_name(name)
        if found is not None:
            return found
    return uid


def resolve_gid(name: str | None, gid: int) -> int:
    """The local gid for a stored group: by name first, numeric fallback."""
    if name:
        found = _gid_by_name(name)
        if found is not None:
            return found
    return gid
