"""Polynomial (Rabin-Karp) rolling weak hash modulo 2**32, computed over whole arrays at once with numpy.

Definition, for a window w[0..m-1]::

    H(w) = SEED * BASE**m + sum_j w[j] * BASE**(m-1-j)    (mod 2**32)

which is what the byte-at-a-time recurrence ``h = h * BASE + byte`` gives when
started from ``h = SEED``.  The ``SEED * BASE**m`` term is a per-length constant:
windows of different lengths (in particular all-zero ones) hash differently.

The "raw" hash is H without that constant; all windows of one length share it,
so the matcher compares raw values and never adds it.

Rolling over every offset uses window sums in wrapping uint32 arithmetic::

    y[j] = b[j] * BASE**-j
    raw(i) = (y[i] + ... + y[i+L-1]) * BASE**(i+L-1)

which needs BASE to be invertible mod 2**32, i.e. odd.
"""

from __future__ import annotations

import functools
import threading
from typing import Union

import numpy as np
from numpy.typing import NDArray

#: Multiplier: odd (invertible mod 2**32), == 5 mod 8 (so its powers have the
#: maximal multiplicative order 2**30, far beyond any window length) and with a
#: dense, irregular bit pattern so every input byte reaches the high bits that
#: the matcher's bitmap filter looks at.
BASE: int = 0x7FEB352D
BASE_INV: int = pow(BASE, -1, 1 << 32)
SEED: int = 1

_MASK = 0xFFFFFFFF
SMALL_BLOCKS_MAX = 1 << 16  # largest block length of small_block_weak_hashes
_CHUNK = 1 << 20  # offsets (or bytes) handled per vectorized pass in the public helpers

#: Offsets processed side by side by RollingHasher (see its docstring).
LANES = 16

BytesLike = Union[bytes, bytearray, memoryview, NDArray[np.uint8]]


def byte_view(data: BytesLike) -> memoryview:
    """``data`` as a flat view of unsigned bytes, without a copy."""
    # numpy's stubs make an ndarray a buffer only from Python 3.12 on.
    return memoryview(data).cast("B")  # type: ignore[arg-type]


_tables_lock = threading.Lock()
_tables: tuple[NDArray[np.uint32], NDArray[np.uint32]] = (
    np.ones(0, dtype=np.uint32),
    np.ones(0, dtype=np.uint32),
)


def as_u8(data: BytesLike) -> NDArray[np.uint8]:
    """View any contiguous bytes-like object as a 1-D uint8 array (no copy)."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1:
            raise TypeError(f"expected a 1-D uint8 array, got {data.dtype} with {data.ndim} dims")
        return data
    return np.frombuffer(data, dtype=np.uint8)


def _power_table(base: int, size: int) -> NDArray[np.uint32]:
    table = np.full(size, base, dtype=np.uint32)
    table[0] = 1
    np.multiply.accumulate(table, dtype=np.uint32, out=table)
    return table


def power_tables(n: int) -> tuple[NDArray[np.uint32], NDArray[np.uint32]]:
    """Return (BASE**j, BASE_INV**j) for j in range(>= n); grown geometrically, shared, read-only."""
    global _tables
    pw, iv = _tables
    if len(pw) >= n:
        return pw, iv
    with _tables_lock:
        pw, iv = _tables
        if len(pw) < n:
            size = max(n, 2 * len(pw), 1 << 12)
            pw, iv = _power_table(BASE, size), _power_table(BASE_INV, size)
            pw.flags.writeable = False
            iv.flags.writeable = False
            _tables = (pw, iv)
    return pw, iv


def seed_term(length: int) -> int:
    """The per-length constant SEED * BASE**length mod 2**32."""
    return (SEED * pow(BASE, length, 1 << 32)) & _MASK


def weak_hash(data: BytesLike) -> int:
    """Weak hash of one window of any length (including 0)."""
    arr = as_u8(data)
    h = SEED
    for start in range(0, len(arr), _CHUNK):
        chunk = arr[start : start + _CHUNK]
        k = len(chunk)
        pw, _ = power_tables(k)
        part = int(np.multiply(chunk, pw[k - 1 :: -1]).sum(dtype=np.uint64))
        h = (h * pow(BASE, k, 1 << 32) + part) & _MASK
    return h


@functools.lru_cache(maxsize=16)
def _block_weights(block_len: int) -> NDArray[np.uint32]:
    pw, _ = power_tables(block_len)
    weights = np.ascontiguousarray(pw[:block_len][::-1])
    weights.flags.writeable = False     # shared by every caller
    return weights


def block_weak_hashes(data: BytesLike, block_len: int) -> NDArray[np.uint32]:
    """Weak hash of each consecutive block; the last block may be short and is hashed over its length."""
    if block_len < 1:
        raise ValueError(f"block_len must be >= 1, got {block_len}")
    arr = as_u8(data)
    n_full = len(arr) // block_len
    rem = len(arr) - n_full * block_len
    out = np.empty(n_full + (1 if rem else 0), dtype=np.uint32)
    if n_full and block_len > _CHUNK:
        for i in range(n_full):
            out[i] = weak_hash(arr[i * block_len : (i + 1) * block_len])
    elif n_full:
        weights = _block_weights(block_len)
        blocks = arr[: n_full * block_len].reshape(n_full, block_len)
        rows = max(1, (1 << 18) // block_len)  # keep the uint32 scratch in cache
        scratch = np.empty((min(rows, n_full), block_len), dtype=np.uint32)
        for r in range(0, n_full, rows):
            e = min(n_full, r + rows)
            tmp = scratch[: e - r]
            np.copyto(tmp, blocks[r:e])
            np.multiply(tmp, weights, out=tmp)
            np.add.reduce(tmp, axis=1, dtype=np.uint32, out=out[r:e])
        out[:n_full] += np.uint32(seed_term(block_len))
    if rem:
        out[-1] = weak_hash(arr[n_full * block_len :])
    return out


def _seed_terms(block_len: int, n_full: int, rem: int) -> NDArray[np.uint32]:
    """``seed_term`` of each block of a buffer of ``n_full`` whole blocks and a short one of ``rem`` bytes."""
    terms = [seed_term(block_len)] * n_full + ([seed_term(rem)] if rem else [])
    out = np.array(terms, dtype=np.uint32)
    out.flags.writeable = False     # shared by every caller
    return out


_few_seed_terms = functools.lru_cache(maxsize=4096)(_seed_terms)   # for buffers of a few blocks
_FEW_BLOCKS = 64


def small_block_weak_hashes(data: bytes, block_len: int) -> NDArray[np.uint32]:
    """``block_weak_hashes`` of a small buffer (block_len <= SMALL_BLOCKS_MAX) in a few numpy calls.

    The short last block is laid out right-aligned behind zeros, so one
    weighted row sum hashes it over its own length like any whole block.
    """
    if not 0 < block_len <= SMALL_BLOCKS_MAX:
        raise ValueError(f"block_len must be in [1, {SMALL_BLOCKS_MAX}], got {block_len}")
    n_full, rem = divmod(len(data), block_len)
    n = n_full + (1 if rem else 0)
    if not n:
        return np.empty(0, dtype=np.uint32)
    if rem:
        cut = n_full * block_len
        data = data[:cut] + bytes(block_len - rem) + data[cut:]
    rows = np.frombuffer(data, dtype=np.uint8).reshape(n, block_len)
    # uint8 * uint32 and the uint32 sums wrap mod 2**32, like the general path
    out: NDArray[np.uint32] = np.add.reduce(rows * _block_weights(block_len), axis=1, dtype=np.uint32)
    out += (_few_seed_terms if n <= _FEW_BLOCKS else _seed_terms)(block_len, n_full, rem)
    return out


class RollingHasher:
    """Raw rolling hashes of one window length over segments of bounded size, with reused scratch.

    Offsets are handled in a lane-major layout: offset ``LANES*k + r`` lives at
    ``[r, k]``.  Then every sequential step (the window-sum recurrence from one
    lane to the next) is a contiguous vector op over a whole row, and the only
    true prefix sum left runs over 1/LANES of the data; np.add.accumulate is
    latency bound (~2.5 ns/item), everything else streams at SIMD speed.
    """

    def __init__(self, window: int, max_offsets: int) -> None:
        if window < 1 or max_offsets < 1:
            raise ValueError("window and max_offsets must be >= 1")
        G = LANES
        self.window = window
        self.max_offsets = max_offsets
        self._a, self._b = divmod(window, G)  # window = a whole groups + b bytes
        m_max = -(-max_offsets // G)
        k_max = m_max + self._a + 1
        pw, iv = power_tables(max(G * k_max, window - 1 + G * m_max))
        # inverse powers of each input byte and the final powers of each offset, lane-major
        self._iv = np.ascontiguousarray(iv[: G * k_max].reshape(k_max, G).T)
        self._pw = np.ascontiguousarray(pw[window - 1 : window - 1 + G * m_max].reshape(m_max, G).T)
        self._pad = np.zeros(G * k_max, dtype=np.uint8)
        self._y = np.empty(G * k_max, dtype=np.uint32)
        self._sums = np.empty(k_max + 1, dtype=np.uint32)
        self._part = np.empty(k_max, dtype=np.uint32)
        self._delta = np.empty(G * m_max, dtype=np.uint32)
        self._h = np.empty(G * m_max, dtype=np.uint32)

    def lanes(self, seg: NDArray[np.uint8]) -> NDArray[np.uint32]:
        """Raw hashes of every window of seg, as a contiguous (LANES, m) array.

        Entry [r, k] is the window at offset LANES*k + r; entries for offsets
        >= len(seg) - window + 1 are meaningless padding.  The array is a
        reused buffer, valid until the next call.
        """
        G, L, a, b = LANES, self.window, self._a, self._b
        n = len(seg)
        count = n - L + 1
        if not 1 <= count <= self.max_offsets:
            raise ValueError(f"segment of {n} bytes gives {count} offsets, outside 1..{self.max_offsets}")
        m = -(-count // G)
        k = m + a + 1
        pad = self._pad[: G * k]
        pad[:n] = seg
        pad[n:] = 0
        # y[r, j] = byte[G*j + r] * BASE**-(G*j + r)
        y = self._y[: G * k].reshape(G, k)
        np.multiply(pad.reshape(k, G).T, self._iv[:, :k], out=y)
        # window sum at lane 0: a whole groups (prefix over group sums) + the first b lanes of the next
        sums = self._sums[: k + 1]
        sums[0] = 0
        np.add.reduce(y, axis=0, dtype=np.uint32, out=sums[1:])
        np.add.accumulate(sums[1:], dtype=np.uint32, out=sums[1:])
        h = self._h[: G * m].reshape(G, m)
        np.subtract(sums[a : a + m], sums[:m], out=h[0])
        if b:
            part = self._part[:k]
            np.add.reduce(y[:b], axis=0, dtype=np.uint32, out=part)
            np.add(h[0], part[a : a + m], out=h[0])
        # moving one lane right adds the byte entering the window, drops the one leaving it
        delta = self._delta[: G * m].reshape(G, m)
        np.subtract(y[b:, a : a + m], y[: G - b, :m], out=delta[: G - b])
        if b:
            np.subtract(y[:b, a + 1 : a + 1 + m], y[G - b :, :m], out=delta[G - b :])
        for r in range(G - 1):
            np.add(h[r], delta[r], out=h[r + 1])
        np.multiply(h, self._pw[:, :m], out=h)
        return h

    def raw(self, seg: NDArray[np.uint8], out: NDArray[np.uint32] | None = None) -> NDArray[np.uint32]:
        """Raw hash of seg[i:i+window] for each i, in offset order (a copy of ``lanes``)."""
        h = self.lanes(seg)
        count = len(seg) - self.window + 1
        result = np.empty(count, dtype=np.uint32) if out is None else out
        np.copyto(result, h.T.reshape(-1)[:count])
        return result


def rolling_hashes(data: BytesLike, window: int) -> NDArray[np.uint32]:
    """Weak hash of data[i:i+window] for every i (empty if data is shorter than window)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    arr = as_u8(data)
    count = len(arr) - window + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint32)
    out = np.empty(count, dtype=np.uint32)
    hasher = RollingHasher(window, min(count, _CHUNK))
    for start in range(0, count, _CHUNK):
        k = min(_CHUNK, count - start)
        hasher.raw(arr[start : start + k + window - 1], out=out[start : start + k])
    out += np.uint32(seed_term(window))
    return out
