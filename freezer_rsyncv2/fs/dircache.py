"""Bounded chains of directory descriptors, and the ``DirCache`` that reuses them from entry to entry."""

from __future__ import annotations

import os

from freezer_rsyncv2.errors import RestoreError
from freezer_rsyncv2.fs.safepath import DIR_WALK_FLAGS, open_component, show

#: Fan-out of the levels ``FdChain`` keeps open (see ``is_kept``).
CHAIN_FAN = 16


def is_kept(level: int, top: int) -> bool:
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
    only the levels ``is_kept`` chooses and re-opens a dropped one from the
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
                if not is_kept(level, top):
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
                nxt = os.open(self.names[level - 1], DIR_WALK_FLAGS, dir_fd=cur)
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
            temporary = not is_kept(level, top)
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

    def lookup(self, parts: list[bytes], path: bytes, *, create: bool) -> int | None:
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
            nxt = open_component(cur, parts, index, path, create)
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
