"""Sender side of the rsync algorithm: new-file bytes and holes to COPY/LITERAL/HOLE ops against an old signature.

The old signature may be sparse: only its data blocks are match candidates, so
a COPY op never names a zero block.  Holes of the new file are not fed: the
caller reports them with ``zeros`` and they become HOLE ops.
"""

from __future__ import annotations

from typing import Iterator, Union

import numpy as np
import xxhash
from numpy.typing import NDArray

from freezer_rsyncv2.rsync.rollsum import BytesLike, byte_view, rolling_hashes
from freezer_rsyncv2.rsync.search import WIN_MAX, BlockSearch
from freezer_rsyncv2.rsync.signature import STRONG_LEN, Signature

COPY = 0
LITERAL = 1
HOLE = 2
MAX_LITERAL = 1 << 20

#: ``(COPY, first_block, block_count)``, ``(LITERAL, data)`` or ``(HOLE, length)`` (length zero bytes, >= 1).
Op = Union[tuple[int, int, int], tuple[int, bytes], tuple[int, int]]

_WIN_MIN = 1 << 13  # smallest pass: below this numpy call overhead dominates
_FOLLOW_MAX = 1024  # blocks strong-hashed per batch while following a match
_JOIN_MIN = 64 << 10  # new bytes joined to the held tail at the start of a feed
_digest = xxhash.xxh3_128_digest


class Matcher:
    """Streaming delta generator: ``feed`` new-file chunks and ``zeros`` for holes, then ``finish``.

    Matches are followed block by block with the strong hash alone; only where
    that fails does a rolling search run, over a window of offsets that starts
    at ~2 blocks and doubles while nothing matches.  A hole ends a region: what
    follows starts with the basis block at the same offset when the offset is
    block aligned, so an image edited in place re-synchronizes without a
    search.  At most ~max(4 blocks, 1 MiB) of input plus < 1 MiB of pending
    literal is held between calls.

    Block numbers are the basis's; a data block k lives at slot(k) of its
    weak/strong arrays, and the full-length data blocks are slots [0, _nd_full)
    (a short last block, if any, is the last slot).
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
        self._blocks = signature.blocks  # None: dense, slot(k) == k
        self._nd = signature.data_count
        last_len = signature.block_length(n - 1) if n else 0
        self._short = n - 1 if n and last_len < L else None
        self._short_len = last_len if self._short is not None else 0
        self._nd_full = self._nd - (1 if self._short is not None else 0)
        self._search: BlockSearch | None = None  # built on the first rolling search
        self._win0 = min(WIN_MAX, max(2 * L, _WIN_MIN))
        self._win = self._win0
        self._offset = 0  # new-file offset where the next fed byte goes
        self._next: int | None = self._aligned(0)  # data block to test where the last match ended
        self._prefer = 0  # block after the last copy: preferred among identical blocks
        self._prefer_slot: tuple[int, int | None] = (-1, None)  # (block, its slot) cache for _preferred
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
        view = byte_view(data)
        self._offset += len(view)
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

    def zeros(self, length: int) -> Iterator[Op]:
        """The new file has ``length`` zero bytes here that are not fed (a hole): end the region, emit a HOLE.

        The held tail is matched as if the data ended here (except that the
        basis's short last block is searched for only at the real end), every
        pending op is flushed, then ``(HOLE, length)``; feeding goes on at the
        offset after the hole.
        """
        if self._finished:
            raise RuntimeError("Matcher.zeros() after finish()")
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise ValueError(f"zeros() length must be a non-negative int, got {length!r}")
        if not length:
            return iter(())
        self._end_region(at_end=False)
        self._out.append((HOLE, length))
        self._offset += length
        self._next = self._aligned(self._offset)
        self._win = self._win0
        self._batch = 1
        return self._drain()

    def finish(self) -> Iterator[Op]:
        """Process the buffered tail and flush every pending op."""
        if self._finished:
            raise RuntimeError("Matcher.finish() called twice")
        self._finished = True
        self._end_region(at_end=True)
        return self._drain()

    def _end_region(self, at_end: bool) -> None:
        tail = bytes(self._tail)
        self._tail = bytearray()
        self._run(memoryview(tail), final=True, at_end=at_end)
        self._flush_literal(everything=True)
        self._flush_copy()

    # -- basis blocks ---------------------------------------------------------

    def _slot(self, block: int) -> int | None:
        """Slot of basis block ``block`` (0 <= block < n), None for a zero block."""
        if self._blocks is None:
            return block
        i = int(np.searchsorted(self._blocks, block))
        return i if i < self._nd and int(self._blocks[i]) == block else None

    def _preferred(self) -> tuple[int, int | None]:
        """(block after the last copy, its slot if it is a full-length data block else None), cached."""
        k = self._prefer
        if self._prefer_slot[0] != k:
            s = self._slot(k) if k < self._n else None
            self._prefer_slot = (k, s if s is not None and s < self._nd_full else None)
        return self._prefer_slot

    def _aligned(self, offset: int) -> int | None:
        """The basis data block at new-file ``offset`` when that is a block boundary, else None."""
        block, rest = divmod(offset, self._L)
        if rest or block >= self._n or self._slot(block) is None:
            return None
        return block

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

    def _run(self, mv: memoryview, final: bool, at_end: bool = False) -> int:
        """Match as much of ``mv`` as possible; return how many bytes are fully consumed."""
        end = len(mv)
        if self._nd == 0:
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
            if self._nd_full == 0 or end - pos < L:
                break
            width = min(self._win, end - L - pos + 1)
            if self._search is None:
                self._search = BlockSearch(self.signature, self._nd_full)
            hit = self._search.search(arr, mv, pos, width, self._preferred())
            if hit is None:
                self._add_literal(mv[pos : pos + width])
                pos += width
                self._win = min(2 * self._win, WIN_MAX)
            else:
                offset, block = hit
                self._add_literal(mv[pos : pos + offset])
                self._add_copy(block, 1)
                pos += offset + L
                self._next = block + 1 if block + 1 < self._n and self._slot(block + 1) is not None else None
                # after a hit in low-entropy data the next one is likely close
                self._win = _WIN_MIN if self._search.dense else self._win0
        if final:
            if at_end:
                pos = self._match_short_tail(arr, mv, pos, end)
            self._add_literal(mv[pos:end])
            return end
        # keep what a later match could still start in
        keep = L - 1 if self._nd_full else self._short_len - 1
        cut = max(pos, end - keep)
        self._add_literal(mv[pos:cut])
        return cut

    def _follow(self, mv: memoryview, pos: int, end: int, final: bool) -> tuple[int, bool]:
        """Test the blocks after the last match in place; return (pos, needs_more_data)."""
        L = self._L
        strong = self._strong
        blocks = self._blocks
        while self._next is not None:
            k = self._next
            s = self._slot(k)  # never None: _next is always a data block
            assert s is not None
            if k == self._short:
                size = self._short_len
                if end - pos < size:
                    if final:
                        self._next = None
                        break
                    return pos, True
                self._next = None
                if _digest(mv[pos : pos + size]) == strong[s * STRONG_LEN : (s + 1) * STRONG_LEN]:
                    self._add_copy(k, 1)
                    pos += size
                break
            avail = (end - pos) // L
            if avail == 0:
                if final:
                    self._next = None
                    break
                return pos, True
            m = min(self._batch, avail, self._nd_full - s)
            if blocks is not None and m > 1 and int(blocks[s + m - 1]) != k + m - 1:
                # only the data blocks k, k+1, ... up to the next zero block: blocks[s + i] - i
                # is non-decreasing and equals k exactly while the blocks stay consecutive
                m = int(np.searchsorted(blocks[s : s + m] - np.arange(m), k, side="right"))
            got = b"".join([_digest(mv[pos + i * L : pos + (i + 1) * L]) for i in range(m)])
            want = strong[s * STRONG_LEN : (s + m) * STRONG_LEN]
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
            # block nxt is a data block iff it sits at the next slot
            more = good == m and s + m < self._nd and (blocks is None or int(blocks[s + m]) == nxt)
            self._next = nxt if more else None
        return pos, False

    def _match_short_tail(self, arr: NDArray[np.uint8], mv: memoryview, pos: int, end: int) -> int:
        """At the end of the new data, look for the short last block in the unmatched tail."""
        k = self._short
        size = self._short_len
        if k is None or end - pos < size:
            return pos
        s = self._nd - 1  # the short block is the last data block
        target_weak = self.signature.weak[s]
        target = self._strong[s * STRONG_LEN : (s + 1) * STRONG_LEN]
        found = np.flatnonzero(rolling_hashes(arr[pos:end], size) == target_weak)
        offsets: list[int] = found[: 64 + (end - pos) // 256].tolist()  # same cap as in _search
        for offset in offsets:
            if _digest(mv[pos + offset : pos + offset + size]) == target:
                self._add_literal(mv[pos : pos + offset])
                self._add_copy(k, 1)
                return pos + offset + size
        return pos
