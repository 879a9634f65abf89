"""The Entry record of one backed-up file-system object, and its kinds."""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

KIND_FILE = 'f'
KIND_DIR = 'd'
KIND_SYMLINK = 'l'
KIND_FIFO = 'p'
KIND_CHR = 'c'
KIND_BLK = 'b'
KIND_HARDLINK = 'h'

#: Every kind an Entry may carry.
KINDS: frozenset[str] = frozenset((KIND_FILE, KIND_DIR, KIND_SYMLINK, KIND_FIFO, KIND_CHR, KIND_BLK, KIND_HARDLINK))

#: Kinds whose object is a device node (restoring them needs root).
DEVICE_KINDS: frozenset[str] = frozenset((KIND_CHR, KIND_BLK))

_FMT_TO_KIND = {
    stat.S_IFREG: KIND_FILE,
    stat.S_IFDIR: KIND_DIR,
    stat.S_IFLNK: KIND_SYMLINK,
    stat.S_IFIFO: KIND_FIFO,
    stat.S_IFCHR: KIND_CHR,
    stat.S_IFBLK: KIND_BLK,
}


def kind_of_mode(st_mode: int) -> str | None:
    """Return the kind for a raw ``st_mode``, or None for unsupported types.

    Sockets (and anything exotic) map to None: they cannot be meaningfully
    backed up, so the walk skips them.  A regular file always maps to
    KIND_FILE; whether it is a KIND_HARDLINK is a property of the walk
    (seen before or not), not of the inode.
    """
    return _FMT_TO_KIND.get(stat.S_IFMT(st_mode))


@dataclass(slots=True)
class Entry:
    """One object of a backed-up tree, as read by the walk.

    Invariants (enforced by the walk, re-checked on restore):

    * ``path`` is relative to the backup root, ``b'/'``-separated, never
      empty, never absolute and without ``.``/``..``/empty components;
      it is raw bytes, so names that are not valid UTF-8 survive.
    * ``mode`` holds only permission bits (``stat.S_IMODE``), including
      setuid/setgid/sticky; the type lives in ``kind``.
    * ``size`` is ``st_size`` for regular files (KIND_FILE and
      KIND_HARDLINK, whose inode is a regular file) and 0 otherwise.
    * ``hardlink_to`` is set only for KIND_HARDLINK and names the first
      path of the same walk with the same ``(dev, ino)``; that path sorts
      before this one, so a restore meets it first.
    * ``link_target`` is set only for KIND_SYMLINK (raw bytes, never
      followed on restore).
    """

    path: bytes
    kind: str
    mode: int
    uid: int
    gid: int
    uname: str | None
    gname: str | None
    size: int
    mtime_ns: int
    atime_ns: int
    ctime_ns: int
    ino: int
    dev: int
    nlink: int
    rdev: int = 0
    link_target: bytes | None = None
    hardlink_to: bytes | None = None
    xattrs: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def name(self) -> bytes:
        """The last component of ``path``."""
        return self.path.rpartition(b'/')[2]
