"""A whole-file digest whose cost follows a sparse file's data, not its apparent size.

"blake3-tree" cuts the content into leaves of ``LEAF`` bytes (the last may be
short; an empty file has one empty leaf) and hashes them into a Merkle tree of
RFC 6962's shape (the left subtree holds the largest power of two of leaves
strictly below the count)::

    leaf = BLAKE3(0x00 || chunk)      node = BLAKE3(0x01 || left || right)
    digest = BLAKE3(0x02 || size as u64 big-endian || root)

It is a pure function of the content: a hole and written zeros give the same
digest.  But an aligned run of ``2**h`` whole zero leaves always hashes to the
same constant Z_h, so ``TreeHash.zeros`` pushes those constants and a run of
k zero leaves costs O(log k) hashes: 15 TiB of holes take microseconds.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

import blake3

#: bytes per leaf
LEAF = 1 << 20
_LEAF_TAG = b"\x00"
_NODE_TAG = b"\x01"
_ROOT_TAG = b"\x02"
_ZERO_LEAF = memoryview(bytes(LEAF))
#: Z_h for h = 0, 1, ...: grown on demand under _ZERO_LOCK, never changed after
_ZERO_SUBTREES: list[bytes] = []
_ZERO_LOCK = threading.Lock()


def _node(left: bytes, right: bytes) -> bytes:
    """The hash of an inner node over two child hashes."""
    return blake3.blake3(_NODE_TAG + left + right).digest()


def zero_subtree(height: int) -> bytes:
    """Z_height: the hash of ``2**height`` full all-zero leaves (cached per process).

    Readers skip the lock once the entry exists: entries are only appended,
    and a list append is atomic.
    """
    if height < len(_ZERO_SUBTREES):
        return _ZERO_SUBTREES[height]
    with _ZERO_LOCK:
        if not _ZERO_SUBTREES:
            _ZERO_SUBTREES.append(blake3.blake3(_LEAF_TAG + _ZERO_LEAF).digest())
        while len(_ZERO_SUBTREES) <= height:
            below = _ZERO_SUBTREES[-1]
            _ZERO_SUBTREES.append(_node(below, below))
        return _ZERO_SUBTREES[height]


class TreeHash:
    """Streaming "blake3-tree" hasher: ``update``/``zeros`` in file order, then ``digest``.

    State is O(log n): the leaf being filled (an open BLAKE3 hasher already fed
    the leaf tag) and a stack of completed perfect subtrees, one per set bit of
    the count of completed leaves, heights strictly decreasing towards the top
    (a binary counter).  A subtree is only pushed where the count is a multiple
    of its width, so the stack merges like carries and the invariant holds.
    """

    name = "blake3-tree"
    digest_size = 32

    def __init__(self, parallel: bool = False, keep_leaves: bool = False) -> None:
        """``parallel``: hash each leaf on all cores (blake3 threads); same digest.

        ``keep_leaves``: remember the hash of every leaf that came as bytes
        (``leaves``, index -> hash; leaves taken by ``zeros`` are left out, as
        ``digest_from_leaves`` takes them for zero), so that a later change of
        a few ranges can be checked by rehashing just their leaves.
        """
        self.leaves: dict[int, bytes] | None = {} if keep_leaves else None
        self._threads = blake3.blake3.AUTO if parallel else 1
        self._leaf = self._new_leaf()
        self._fill = 0                          # bytes in the open leaf, < LEAF
        self._leaves = 0                        # completed leaves
        self._stack: list[tuple[int, bytes]] = []   # (height, hash), bottom first
        self._size = 0
        self._done = False

    @property
    def size(self) -> int:
        """Bytes of content taken so far (data and zeros)."""
        return self._size

    def update(self, data: Any) -> None:
        """Take the next bytes of the file: any bytes-like, any length or alignment."""
        self._check_open()
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        self._size += len(view)
        self._feed(view)

    def zeros(self, length: int) -> None:
        """Take the next ``length`` zero bytes (a hole) in O(log length) hashes.

        The partial leaves at either end are fed as bytes; the whole leaves in
        between are pushed as the largest aligned constant subtrees that fit.
        """
        self._check_open()
        if length < 0:
            raise ValueError(f"negative zeros() length {length}")
        self._size += length
        head = min(length, LEAF - self._fill) if self._fill else 0
        self._feed(_ZERO_LEAF[:head])
        whole, tail = divmod(length - head, LEAF)
        while whole:
            count = self._leaves
            aligned = (count & -count).bit_length() - 1 if count else 64
            height = min(aligned, whole.bit_length() - 1)
            self._push(height, zero_subtree(height))
            whole -= 1 << height
        self._feed(_ZERO_LEAF[:tail])

    def digest(self) -> bytes:
        """The 32-byte digest; the hasher is finished afterwards (no more input)."""
        self._check_open()
        if self._size >= 1 << 64:
            raise OverflowError(f"file of {self._size} bytes is too large for blake3-tree")
        self._done = True
        if self._fill or not self._leaves:
            self._push_leaf(self._leaf.digest())
        root = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            root = _node(left, root)
        return blake3.blake3(_ROOT_TAG + self._size.to_bytes(8, "big") + root).digest()

    def hexdigest(self) -> str:
        """``digest()`` in hexadecimal."""
        return self.digest().hex()

    def _check_open(self) -> None:
        if self._done:
            raise ValueError("blake3-tree digest already taken: the hasher takes no more input")

    def _new_leaf(self) -> Any:
        return blake3.blake3(_LEAF_TAG, max_threads=self._threads)

    def _feed(self, view: memoryview) -> None:
        """Hash ``view`` into leaves, closing each one as it fills (size already counted)."""
        pos, end = 0, len(view)
        while pos < end:
            take = min(LEAF - self._fill, end - pos)
            self._leaf.update(view[pos:pos + take])
            self._fill += take
            pos += take
            if self._fill == LEAF:
                self._push_leaf(self._leaf.digest())
                self._leaf = self._new_leaf()
                self._fill = 0

    def _push_leaf(self, digest: bytes) -> None:
        if self.leaves is not None:
            self.leaves[self._leaves] = digest
        self._push(0, digest)

    def _push(self, height: int, digest: bytes) -> None:
        """Append a perfect subtree of ``2**height`` leaves; merge equal neighbours."""
        self._leaves += 1 << height
        stack = self._stack
        stack.append((height, digest))
        while len(stack) > 1 and stack[-2][0] == stack[-1][0]:
            (h, left), (_, right) = stack[-2], stack[-1]
            del stack[-2:]
            stack.append((h + 1, _node(left, right)))


def digest_of(data: Any) -> bytes:
    """The blake3-tree digest of ``data`` in one call."""
    size = len(data) if isinstance(data, bytes) else memoryview(data).nbytes
    if size <= LEAF:        # one leaf, which is the root: two hashes and no hasher
        root = blake3.blake3(_LEAF_TAG).update(data).digest()
        return blake3.blake3(_ROOT_TAG + size.to_bytes(8, "big") + root).digest()
    hasher = TreeHash()
    hasher.update(data)
    return hasher.digest()


def leaf_of(chunk: Any) -> bytes:
    """The hash of one leaf: ``chunk`` is its content (at most LEAF bytes)."""
    return blake3.blake3(_LEAF_TAG).update(chunk).digest()


def digest_from_leaves(size: int, leaves: dict[int, bytes]) -> bytes:
    """The digest of a file of ``size`` bytes from the hashes of its leaves.

    A leaf not in ``leaves`` is all zeros.  Perfect subtrees without a given
    leaf are the constants Z_h, so the cost is O(len(leaves) * log n) hashes,
    whatever the size.
    """
    if size < 0 or size >= 1 << 64:
        raise OverflowError(f"file of {size} bytes is out of blake3-tree's range")
    count = max(1, -(-size // LEAF))
    last_len = size - (count - 1) * LEAF
    keys = sorted(k for k in leaves if 0 <= k < count)

    def leaf(index: int) -> bytes:
        if index in leaves:
            return leaves[index]
        return zero_subtree(0) if last_len == LEAF or index < count - 1 else leaf_of(_ZERO_LEAF[:last_len])

    def subtree(lo: int, hi: int, kl: int, kr: int) -> bytes:
        width = hi - lo
        if width == 1:
            return leaf(lo)
        if kl == kr and width & (width - 1) == 0 and (hi < count or last_len == LEAF):
            return zero_subtree(width.bit_length() - 1)
        mid = lo + (1 << ((width - 1).bit_length() - 1))
        km = bisect.bisect_left(keys, mid, kl, kr)
        return _node(subtree(lo, mid, kl, km), subtree(mid, hi, km, kr))

    root = subtree(0, count, 0, len(keys))
    return blake3.blake3(_ROOT_TAG + size.to_bytes(8, "big") + root).digest()
