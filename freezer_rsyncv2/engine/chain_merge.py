"""The walk merged with the chain's entries, and what a found object's stat alone says.

Both come in ``sort_key`` order.  ``matched`` pairs each object the walk
found with the path's entry in the chain (a ``manifest.Prior``) and says
whether it is unchanged (``unchanged``: the quick check, from the stat and
the entry's unchecked map); the entries the walk no longer has come in their
place.  ``precheck`` says which files the pass will compare with their
digest below, for the digest helper to read ahead.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator

from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2.engine import file_reader
from freezer_rsyncv2.fs import entry as fsentry
from freezer_rsyncv2.fs import owners
from freezer_rsyncv2.fs import walk as fswalk

#: Kinds ``unchanged`` may decide on: their other fields cannot change
#: without changing the inode's ctime (a device's numbers are no concern
#: of a fast path; a hardlink's group is the walk's, decided on its Entry).
_QUICK_KINDS = frozenset((fsentry.KIND_FILE, fsentry.KIND_DIR, fsentry.KIND_SYMLINK))

#: What the pass merges: (found, its entry below, unchanged), or (None, an entry below the walk no longer has, False).
Matched = tuple[fswalk.Found | None, mf.Prior | None, bool]


def matched(found: Iterator[fswalk.Found], old: mf.Prior | None, prev: Iterator[mf.Prior]) -> Iterator[Matched]:
    """The walk and the chain's entries (``old`` first, then ``prev``), both in sort_key
    order, merged: each found object with its entry below and whether it is
    ``unchanged``, and the entries below that the walk no longer has."""
    for f in found:
        match = None
        if old is not None:
            if old.path != f.path:
                key = fswalk.sort_key(f.path)
                while old is not None and old.key < key:
                    yield None, old, False
                    old = next(prev, None)
            if old is not None and old.path == f.path:
                match, old = old, next(prev, None)
        yield f, match, match is not None and unchanged(f, match)
    while old is not None:
        yield None, old, False
        old = next(prev, None)


def precheck(f: fswalk.Found, prior: mf.Prior) -> bool:
    """Whether the pass will likely read ``f`` whole to compare it with its digest below
    (``file_reader``'s touched-file check): a file of its size below, up to
    ``PRECHECK_MAX`` bytes, whose mtime moved.  From the unchecked map: the
    answer is only used against the entry below once it is checked."""
    st = f.st
    if f.kind != fsentry.KIND_FILE or st.st_size > file_reader.PRECHECK_MAX:
        return False
    m = prior.fields()
    return (m is not None and m.get("k") == fsentry.KIND_FILE and m.get("s") == st.st_size
            and m.get("mt") != st.st_mtime_ns and "dg" in m)


def unchanged(f: fswalk.Found, prior: mf.Prior) -> bool:
    """Whether ``f`` is the object ``prior`` describes, without reading more
    of it or checking ``prior``: the same inode with the same ctime, kind,
    size, mtime, permissions and owners.  Its xattrs, symlink target and
    content could not change without changing its ctime (rsync's quick
    check, with the inode's ctime and number beside it).  False sends the
    entry the long way (``BackupPass._entry``), which decides for itself."""
    st = f.st
    if f.kind not in _QUICK_KINDS or (f.kind == fsentry.KIND_FILE and st.st_nlink > 1):
        return False
    m = prior.fields()
    return (m is not None and m.get("ct") == st.st_ctime_ns and m.get("i") == st.st_ino
            and m.get("k") == f.kind and m.get("mt") == st.st_mtime_ns
            and m.get("s") == (st.st_size if f.kind == fsentry.KIND_FILE else 0)
            and m.get("m") == stat.S_IMODE(st.st_mode)
            and m.get("u") == st.st_uid and m.get("g") == st.st_gid
            and m.get("un") == owners.user_name(st.st_uid)
            and m.get("gn") == owners.group_name(st.st_gid))
