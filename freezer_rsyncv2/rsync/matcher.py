"""Sender side of the rsync algorithm: turn new-file bytes into COPY/LITERAL ops against an old signature."""

from __future__ import annotations

from typing import Iterator, Union

import numpy as np
import xxhash
from numpy.typing import NDArray

from freezer_rsyncv2.rsync.rollsum import LANES, BytesLike, RollingHasher, rolling_hashes, seed_term
from freezer_rsyncv2.rsync.signature import STRONG_LEN, Signature

COPY = 0
LITERAL = 1
MAX_LITERAL = 1 << 20

#: ``(COPY, first_block, block_count)`` or ``(LITERAL, data)``.
Op = Union[tuple[int, int, int], tuple[int, bytes]]

_WIN_MAX = 1 << 17  # offsets per rolling pass once the window has grown (scratch stays in L2)
_WIN_MIN = 1 << 13  # smallest pass: below this numpy call overhead dominates
_FOLLOW_MAX = 1024  # blocks strong-hashed per batch while following a match
_CONFIRM_CHUNK = 256  # weak candidates confirmed per vectorized exact check
_JOIN_MIN = 64 << 10  # new bytes joined to the held tail at the start of a feed
_DENSE = 4096  # more first-filter candidates per pass than this: confirm by prefixes
#: Odd multipliers giving the filters (nearly) independent bits; the first is the identity.
_MIXES = (np.uint32(1), np.uint32(0x9E3779B1), np.uint32(0x85EBCA6B))

_digest = xxhash.xxh3_128_digest


class _BlockIndex:
    """Lookup structures for the full-length blocks, built on the first rolling search.

    Bool bitmaps over 32 - shift bits of the raw weak hash (first its top bits,
    then the top bits of odd-multiplier remixes) reject almost every offset;
    each stays <= 2 MiB so lookups hit the cache.  The sorted unique weak
    values give the exact weak check; a strong->block dict resolves blocks that
    share a weak hash (e.g. all-zero files) in O(1), the lowest index winning.
    """

    def __init__(self, sig: Signature, n_full: int) -> None:
        raw = sig.weak[:n_full] - np.uint32(seed_term(sig.block_len))
        self.sorted = np.unique(raw)
        bits = min(21, max(10, len(self.sorted).bit_length() + 5))
        self.shift = 32 - bits
        self.filters: list[tuple[np.uint32, NDArray[np.bool_]]] = []
        for mix in _MIXES:
            table = np.zeros(1 << bits, dtype=bool)
            table[(self.sorted * mix) >> self.shift] = True
            self.filters.append((mix, table))
        strong = sig.strong
        keys = [strong[i * STRONG_LEN : (i + 1) * STRONG_LEN] for i in range(n_full - 1, -1, -1)]
        self.by_strong: dict[bytes, int] = dict(zip(keys, range(n_full - 1, -1, -1)))


class Matcher:
    """Streaming delta generator: ``feed`` new-file chunks, then ``finish``.

    Matches are followed block by block with the strong hash alone; only where
    that fails does a rolling search run, over a window of offsets that starts
    at ~2 blocks and doubles while nothing matches.  At most ~max(4 blocks,
    1 MiB) of input plus < 1 MiB of pending literal is held between calls.
    """

    def __init__(self, signature: Signature) -> None:
        self.signature = signature
        self.literal_bytes = 0
        self.copied_bytes = 0
        L = signature.block_len
        n = signature.block_count
        self._L = L
        self._n = n
        self._strong = signature.strong
        last_len = signature.block_length(n - 1) if n else 0
        self._short = n - 1 if n and last_len < L else None
        self._short_len = last_len if self._short is not None else 0
        self._n_full = n - (1 if self._short is not None else 0)
        self._index: _BlockIndex | None = None
        self._roller: RollingHasher | None = None
        self._win0 = min(_WIN_MAX, max(2 * L, _WIN_MIN))
        self._win = self._win0
        self._dense = False  # the last search found weak candidates nearly everywhere
        self._next: int | None = 0 if n else None  # block to test where the last match ended
        self._prefer = 0  # block after the last copy: preferred among identical blocks
        self._batch = 1
        self._threshold = max(4 * L, 1 << 20)
        self._tail = bytearray()
        self._lit: list[bytes | memoryview] = []
        self._lit_len = 0
        self._copy: list[int] | None = None
        self._out: list[Op] = []
        self._finished = False

    # -- public API -----------------------------------------------------------

    @property
    def buffered_bytes(self) -> int:
        """New-file bytes held between calls: the unmatched tail plus the pending literal."""
        return len(self._tail) + self._lit_len

    def feed(self, data: BytesLike) -> Iterator[Op]:
        """Consume the next chunk of the new file; return the ops that are now final."""
        if self._finished:
            raise RuntimeError("Matcher.feed() after finish()")
        view = memoryview(data).cast("B")
        if len(self._tail) + len(view) < self._threshold:
            self._tail += view
            return iter(())
        if self._tail:
            # Join the tail with just enough of the view to finish what it
            # started (_run leaves < L bytes unconsumed), then go on in the
            # view itself: no copy of the whole chunk.
            take = min(len(view), max(4 * self._L, _JOIN_MIN))
            joint = b"".join((self._tail, view[:take]))
            self._tail = bytearray()
            done = self._run(memoryview(joint), final=False)
            rest = len(joint) - done
            if take < len(view) and rest <= take:
                start = take - rest  # the unprocessed end of joint is view[start:take]
                done = start + self._run(view[start:], final=False)
                self._tail = bytearray(view[done:])
            else:
                self._tail = bytearray(joint[done:])
                self._tail += view[take:]
        else:
            done = self._run(view, final=False)
            self._tail = bytearray(view[done:])
        # literal pieces may still point into the caller's buffer: own them
        self._lit = [p if isinstance(p, bytes) else bytes(p) for p in self._lit]
        return self._drain()

    def finish(self) -> Iterator[Op]:
        """Process the buffered tail and flush every pending op."""
        if self._finished:
            raise RuntimeError("Matcher.finish() called twice")
        self._finished = True
        tail = bytes(self._tail)
        self._tail = bytearray()
        self._run(memoryview(tail), final=True)
        self._flush_literal(everything=True)
        self._flush_copy()
        return self._drain()

    # -- op emission ----------------------------------------------------------

    def _drain(self) -> Iterator[Op]:
        out, self._out = self._out, []
        return iter(out)

    def _add_literal(self, piece: bytes | memoryview) -> None:
        size = len(piece)
        if not size:
            return
        if self._copy is not None:
            self._flush_copy()
        self._lit.append(piece)
        self._lit_len += size
        self.literal_bytes += size
        if self._lit_len >= MAX_LITERAL:
            self._flush_literal(everything=False)

    def _flush_literal(self, everything: bool) -> None:
        if not self._lit_len:
            return
        data = b"".join(self._lit)
        size = len(data)
        cut = size if everything else size // MAX_LITERAL * MAX_LITERAL
        for start in range(0, cut, MAX_LITERAL):
            self._out.append((LITERAL, data[start : start + MAX_LITERAL]))
        rest = data[cut:]
        self._lit = [rest] if rest else []
        self._lit_len = len(rest)

    def _add_copy(self, first: int, count: int) -> None:
        self._flush_literal(everything=True)
        if self._copy is not None and self._copy[0] + self._copy[1] == first:
            self._copy[1] += count
        else:
            self._flush_copy()
            self._copy = [first, count]
        size = count * self._L
        if first + count - 1 == self._short:
            size -= self._L - self._short_len
        self.copied_bytes += size
        self._prefer = first + count

    def _flush_copy(self) -> None:
        if self._copy is not None:
            self._out.append((COPY, self._copy[0], self._copy[1]))
            self._copy = None

    # -- matching -------------------------------------------------------------

    def _run(self, mv: memoryview, final: bool) -> int:
        """Match as much of ``mv`` as possible; return how many bytes are fully consumed."""
        end = len(mv)
        if self._n == 0:
            self._add_literal(mv)
            return end
        arr = np.frombuffer(mv, dtype=np.uint8)
        L = self._L
        pos = 0
        while True:
            if self._next is not None:
                pos, waiting = self._follow(mv, pos, end, final)
                if waiting:
                    return pos
            if self._n_full == 0 or end - pos < L:
                break
            width = min(self._win, end - L - pos + 1)
            hit = self._search(arr, mv, pos, width)
            if hit is None:
                self._add_literal(mv[pos : pos + width])
                pos += width
                self._win = min(2 * self._win, _WIN_MAX)
            else:
                offset, block = hit
                self._add_literal(mv[pos : pos + offset])
                self._add_copy(block, 1)
                pos += offset + L
                self._next = block + 1 if block + 1 < self._n else None
                # after a hit in low-entropy data the next one is likely close
                self._win = _WIN_MIN if self._dense else self._win0
        if final:
            pos = self._match_short_tail(arr, mv, pos, end)
            self._add_literal(mv[pos:end])
            return end
        # keep what a later match could still start in
        keep = L - 1 if self._n_full else self._short_len - 1
        cut = max(pos, end - keep)
        self._add_literal(mv[pos:cut])
        return cut

    def _follow(self, mv: memoryview, pos: int, end: int, final: bool) -> tuple[int, bool]:
        """Test the blocks after the last match in place; return (pos, needs_more_data)."""
        L = self._L
        strong = self._strong
        while self._next is not None:
            k = self._next
            if k == self._short:
                size = self._short_len
                if end - pos < size:
                    if final:
                        self._next = None
                        break
                    return pos, True
                self._next = None
                if _digest(mv[pos : pos + size]) == strong[k * STRONG_LEN : (k + 1) * STRONG_LEN]:
                    self._add_copy(k, 1)
                    pos += size
                break
            avail = (end - pos) // L
            if avail == 0:
                if final:
                    self._next = None
                    break
                return pos, True
            m = min(self._batch, avail, self._n_full - k)
            got = b"".join([_digest(mv[pos + i * L : pos + (i + 1) * L]) for i in range(m)])
            want = strong[k * STRONG_LEN : (k + m) * STRONG_LEN]
            if got == want:
                good = m
                self._batch = min(2 * self._batch, _FOLLOW_MAX)
            else:
                rows_equal = np.all(
                    np.frombuffer(got, np.uint8).reshape(m, STRONG_LEN)
                    == np.frombuffer(want, np.uint8).reshape(m, STRONG_LEN),
                    axis=1,
                )
                good = int(np.argmin(rows_equal))
                self._batch = 1
            if good:
                self._add_copy(k, good)
                pos += good * L
            nxt = k + good
            self._next = nxt if good == m and nxt < self._n else None
        return pos, False

    def _search(self, arr: NDArray[np.uint8], mv: memoryview, pos: int, width: int) -> tuple[int, int] | None:
        """First offset in [pos, pos+width) where a full block matches: (relative offset, block)."""
        L = self._L
        if self._index is None:
            self._index = _BlockIndex(self.signature, self._n_full)
            self._roller = RollingHasher(L, _WIN_MAX)
            size = -(-_WIN_MAX // LANES) * LANES
            self._idx = np.empty(size, dtype=np.intp)
            self._hit = np.empty(size, dtype=bool)
        index = self._index
        assert self._roller is not None
        # Offset 0 first, for one strong hash: where a follow failed on
        # low-entropy data another block often matches right there.
        block = self._lookup(_digest(mv[pos : pos + L]))
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
        self._dense = np.count_nonzero(hit) > _DENSE
        if not self._dense:
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
        index = self._index
        assert index is not None
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
                block = self._lookup(_digest(mv[pos + offset : pos + offset + L]))
                if block is not None:
                    return offset, block
                budget[0] -= 1
                if not budget[0]:
                    return None
        return None

    def _lookup(self, digest: bytes) -> int | None:
        """Block with this strong digest, preferring the one that extends the last copy."""
        k = self._prefer
        if k < self._n_full and self._strong[k * STRONG_LEN : (k + 1) * STRONG_LEN] == digest:
            return k
        assert self._index is not None
        return self._index.by_strong.get(digest)

    def _match_short_tail(self, arr: NDArray[np.uint8], mv: memoryview, pos: int, end: int) -> int:
        """At the end of the new data, look for the short last block in the unmatched tail."""
        k = self._short
        size = self._short_len
        if k is None or end - pos < size:
            return pos
        target_weak = self.signature.weak[k]
        target = self._strong[k * STRONG_LEN : (k + 1) * STRONG_LEN]
        found = np.flatnonzero(rolling_hashes(arr[pos:end], size) == target_weak)
        for offset in found[: 64 + (end - pos) // 256].tolist():  # same cap as in _search
            if _digest(mv[pos + offset : pos + offset + size]) == target:
                self._add_literal(mv[pos : pos + offset])
                self._add_copy(k, 1)
                return pos + offset + size
        return pos
