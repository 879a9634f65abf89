"""The matcher's rolling search: find where a full-length data block of the old signature starts in new data.

Lookup structures are flat numpy arrays (no per-block Python object): ~12
bytes per block for the strong lookup plus 4 for the weak values, so a 1 GiB
file in 4 KiB blocks (262,144 blocks) needs ~4 MiB, not the ~30 MiB of a dict.
"""

from __future__ import annotations

import numpy as np
import xxhash
from numpy.typing import NDArray

from freezer_rsyncv2.rsync.rollsum import LANES, RollingHasher, seed_term
from freezer_rsyncv2.rsync.signature import STRONG_LEN, Signature

WIN_MAX = 1 << 17  # offsets per rolling pass once the window has grown (scratch stays in L2)
_CONFIRM_CHUNK = 256  # weak candidates confirmed per vectorized exact check
_DENSE = 4096  # more first-filter candidates per pass than this: confirm by prefixes
_digest = xxhash.xxh3_128_digest

#: Odd multipliers giving the filters (nearly) independent bits; the first is the identity.
MIXES = (np.uint32(1), np.uint32(0x9E3779B1), np.uint32(0x85EBCA6B))


def _sorted_unique(values: NDArray[np.uint32]) -> NDArray[np.uint32]:
    """np.unique without its cost (np.unique is ~20x slower than a sort here)."""
    ordered = np.sort(values)
    if len(ordered) < 2:
        return ordered
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]


class BlockIndex:
    """Weak filters and strong lookup over slots [0, n_full) of a signature (its full-length data blocks).

    Bool bitmaps over 32 - shift bits of the raw weak hash (first its top bits,
    then the top bits of odd-multiplier remixes) reject almost every offset;
    each stays <= 2 MiB so lookups hit the cache.  ``sorted`` (the unique raw
    weak values) gives the exact weak check.  The strong lookup is the slots
    sorted by digest, (first 8 bytes, last 8 bytes, slot) as little-endian
    uint64s, with the sorted first halves as search keys: a search finds the
    lowest slot with a digest in O(log n), however many blocks share a digest
    or (crafted) its first half.  A bitmap over the top bits of the first half
    (plain bytes: cheap to index from Python) turns most misses away first.
    """

    def __init__(self, sig: Signature, n_full: int) -> None:
        raw = sig.weak[:n_full] - np.uint32(seed_term(sig.block_len))
        self.sorted = _sorted_unique(raw)
        bits = min(21, max(10, len(self.sorted).bit_length() + 5))
        self.shift = 32 - bits
        self.filters: list[tuple[np.uint32, NDArray[np.bool_]]] = []
        for mix in MIXES:
            table = np.zeros(1 << bits, dtype=bool)
            table[(self.sorted * mix) >> self.shift] = True
            self.filters.append((mix, table))
        self._strong = sig.strong
        self._blocks = sig.blocks
        halves = np.frombuffer(sig.strong, dtype="<u8", count=2 * n_full).reshape(n_full, 2)
        order = np.argsort(halves[:, 0], kind="stable")  # equal first halves: slot order
        keys = halves[order, 0]
        tied = np.zeros(n_full, dtype=bool)
        if n_full > 1:
            same = keys[1:] == keys[:-1]
            tied[1:] |= same
            tied[:-1] |= same
        where = np.flatnonzero(tied)
        if len(where):
            # groups of equal first halves: order them by second half too, slot order kept inside equal digests
            group = order[where]
            order[where] = group[np.lexsort((halves[group, 1], halves[group, 0]))]
        self._order = order.astype(np.uint32) if n_full < 1 << 32 else order
        self._keys = keys
        #: present[first_half(digest) >> key_shift] is 0 for (almost every) digest not in the index
        self.key_shift = 64 - bits
        present = np.zeros(1 << bits, dtype=np.uint8)
        present[keys >> np.uint64(self.key_shift)] = 1
        self.present = present.tobytes()

    def _second(self, i: int) -> int:
        s = int(self._order[i]) * STRONG_LEN
        return int.from_bytes(self._strong[s + 8 : s + STRONG_LEN], "little")

    def lookup(self, digest: bytes) -> int | None:
        """Block number of the lowest full-length data block with this strong digest, or None."""
        first = int.from_bytes(digest[:8], "little")
        if not self.present[first >> self.key_shift]:
            return None
        return self.find(digest, first)

    def find(self, digest: bytes, first: int) -> int | None:
        """``lookup`` after the bitmap check; ``first`` is the digest's first half."""
        keys = self._keys
        key = np.uint64(first)
        lo = int(keys.searchsorted(key))
        if lo == len(keys) or keys[lo] != key:
            return None
        s = int(self._order[lo])
        if self._strong[s * STRONG_LEN : (s + 1) * STRONG_LEN] != digest:
            # several digests share this first half: binary search on the second
            hi = int(keys.searchsorted(key, side="right"))
            want = int.from_bytes(digest[8:], "little")
            while lo < hi:
                mid = (lo + hi) // 2
                if self._second(mid) < want:
                    lo = mid + 1
                else:
                    hi = mid
            if lo == len(keys) or keys[lo] != key:
                return None
            s = int(self._order[lo])
            if self._strong[s * STRONG_LEN : (s + 1) * STRONG_LEN] != digest:
                return None
        return s if self._blocks is None else int(self._blocks[s])


class BlockSearch:
    """Rolling search over new data for the full-length data blocks (slots [0, n_full)) of a signature.

    Built by the matcher on its first search.  ``dense`` tells whether the last
    search found weak candidates nearly everywhere (low-entropy data).
    """

    def __init__(self, sig: Signature, n_full: int) -> None:
        self.index = BlockIndex(sig, n_full)
        self.dense = False
        self._L = sig.block_len
        self._strong = sig.strong
        self._prefer: tuple[int, int | None] = (0, None)
        self._roller = RollingHasher(sig.block_len, WIN_MAX)
        size = -(-WIN_MAX // LANES) * LANES
        self._idx = np.empty(size, dtype=np.intp)
        self._hit = np.empty(size, dtype=bool)

    def search(
        self, arr: NDArray[np.uint8], mv: memoryview, pos: int, width: int, prefer: tuple[int, int | None]
    ) -> tuple[int, int] | None:
        """First offset in [pos, pos+width) where a full block matches: (relative offset, block).

        ``prefer`` is (block, slot): the block to return among identical ones
        (slot None when it is not a full-length data block).
        """
        L = self._L
        index = self.index
        self._prefer = prefer
        # Offset 0 first, for one strong hash: where a follow failed on
        # low-entropy data another block often matches right there.
        block = self.lookup(_digest(mv[pos : pos + L]))
        if block is not None:
            return 0, block
        lanes = self._roller.lanes(arr[pos : pos + width + L - 1])
        m = lanes.shape[1]
        flat = lanes.reshape(-1)
        idx = self._idx[: flat.size]
        np.right_shift(flat, index.shift, out=idx, casting="unsafe")
        hit = np.take(index.filters[0][1], idx, out=self._hit[: flat.size], mode="clip")
        # Crafted or degenerate data can make weak hashes collide at every offset
        # (mod 2**32 polynomial hashes have structured collisions); cap the wasted
        # strong hashes per pass so a pass costs at most ~twice its rolling work.
        budget = [64 + width // 256]
        self.dense = int(np.count_nonzero(hit)) > _DENSE
        if not self.dense:
            return self._confirm(flat, np.flatnonzero(hit), m, mv, pos, width, budget)
        # Low-entropy data: candidates nearly everywhere, and the first match is
        # usually among the first offsets: confirm growing prefixes of the window
        # (lane-major columns [a, b) are the offsets [LANES*a, LANES*b)).
        grid = hit.reshape(LANES, m)
        start, step = 0, 16
        while start < m and budget[0] > 0:
            stop = min(m, start + step)
            rows, cols = np.nonzero(grid[:, start:stop])
            found = self._confirm(flat, rows * m + cols + start, m, mv, pos, width, budget)
            if found is not None:
                return found
            start, step = stop, 2 * step
        return None

    def _confirm(
        self, flat: NDArray[np.uint32], cand: NDArray[np.intp], m: int, mv: memoryview,
        pos: int, width: int, budget: list[int],
    ) -> tuple[int, int] | None:
        """Check lane-major candidates in offset order: the first full-block match, or None."""
        index = self.index
        L = self._L
        for mix, table in index.filters[1:]:
            if not len(cand):
                return None
            cand = cand[table[(flat[cand] * mix) >> index.shift]]
        if not len(cand):
            return None
        # lane-major position -> offset; drop the padding lanes, visit in offset order
        offsets = (cand % m) * LANES + cand // m
        offsets = offsets[offsets < width]
        if len(offsets) <= 64:
            offsets.sort()
        else:  # low-entropy data: maybe every offset; a bitmap sorts in O(width)
            mark = np.zeros(width, dtype=bool)
            mark[offsets] = True
            offsets = np.flatnonzero(mark)
        values = flat[(offsets % LANES) * m + offsets // LANES]
        top = len(index.sorted) - 1
        for s in range(0, len(offsets), _CONFIRM_CHUNK):
            vals = values[s : s + _CONFIRM_CHUNK]
            where = np.minimum(np.searchsorted(index.sorted, vals), top)
            exact = offsets[s : s + _CONFIRM_CHUNK][index.sorted[where] == vals]
            for offset in exact.tolist():
                block = self.lookup(_digest(mv[pos + offset : pos + offset + L]))
                if block is not None:
                    return offset, block
                budget[0] -= 1
                if not budget[0]:
                    return None
        return None

    def lookup(self, digest: bytes) -> int | None:
        """Full-length data block with this strong digest, preferring the one that extends the last copy."""
        index = self.index
        first = int.from_bytes(digest[:8], "little")
        if not index.present[first >> index.key_shift]:
            return None  # the usual miss, cheap: every full data block's digest is in the index
        k, s = self._prefer
        if s is not None and self._strong[s * STRONG_LEN : (s + 1) * STRONG_LEN] == digest:
            return k
        return index.find(digest, first)
