"""Passphrase key derivation: the KDFs, their stored costs and bounds, and a
per-process cache of derived master keys.

A derivation costs about 0.2 s of one core and 64 MiB (Argon2id with RFC
9106's parameters): the cache holds a future per (passphrase, KDF costs,
salt), so a key is derived once per process, and ``prefetch`` starts one on
a background thread while the engine does work that needs no key.  Keys stay
in memory only.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from freezer_rsyncv2 import errors

try:        # cryptography >= 44
    from cryptography.hazmat.primitives.kdf import argon2 as _argon2
except ImportError:     # pragma: no cover - depends on the installed version
    _argon2 = None  # type: ignore[assignment]
Argon2id: Any = getattr(_argon2, "Argon2id", None)

KDF_ARGON2ID = 1
KDF_SCRYPT = 2
KDF_NAMES = {KDF_ARGON2ID: "Argon2id", KDF_SCRYPT: "scrypt"}

KEY_LEN = 32

# Bounds a reader enforces on stored KDF costs, before deriving anything.
MAX_KDF_MEMORY = 1 << 30            # bytes
MAX_ARGON2_ITERATIONS = 10
MAX_LANES = 16
MAX_SCRYPT_LOG2_N = 20
MAX_SCRYPT_R = 32


@dataclasses.dataclass(frozen=True)
class KdfParams:
    """A KDF and its three stored costs.

    Argon2id: (memory in KiB, iterations, lanes); scrypt: (log2 of N, r, p).
    """

    kdf: int
    cost1: int
    cost2: int
    cost3: int

    def memory_bytes(self) -> int:
        if self.kdf == KDF_ARGON2ID:
            return self.cost1 * 1024
        return 128 * self.cost2 * (1 << min(self.cost1, 64))

    def check(self) -> None:
        """Refuse unknown KDFs and costs out of bounds (hostile headers)."""
        if self.kdf not in KDF_NAMES:
            raise errors.UnsupportedVersionError(f"unknown KDF id {self.kdf} in the cipher parameters")
        if self.kdf == KDF_ARGON2ID:
            ok = (1 <= self.cost3 <= MAX_LANES
                  and 8 * self.cost3 <= self.cost1
                  and 1 <= self.cost2 <= MAX_ARGON2_ITERATIONS)
        else:
            ok = (1 <= self.cost1 <= MAX_SCRYPT_LOG2_N
                  and 1 <= self.cost2 <= MAX_SCRYPT_R
                  and 1 <= self.cost3 <= MAX_LANES)
        if not ok or self.memory_bytes() > MAX_KDF_MEMORY:
            raise errors.CorruptRecordError(
                f"{KDF_NAMES[self.kdf]} costs {self.cost1}, {self.cost2}, {self.cost3} out of bounds "
                "(see docs/encryption.rst)")

    def derive(self, passphrase: bytes, salt: bytes) -> bytes:
        if self.kdf == KDF_ARGON2ID:
            if Argon2id is None:
                raise errors.ConfigError(
                    "this backup's key is derived with Argon2id, which needs "
                    "cryptography >= 44")
            kdf: Any = Argon2id(salt=salt, length=KEY_LEN,
                                iterations=self.cost2, lanes=self.cost3,
                                memory_cost=self.cost1)
        else:
            kdf = Scrypt(salt=salt, length=KEY_LEN, n=1 << self.cost1, r=self.cost2, p=self.cost3)
        master: bytes = kdf.derive(passphrase)
        return master


# RFC 9106's second recommended option; scrypt as in its RFC 7914 advice.
ARGON2ID_DEFAULT = KdfParams(KDF_ARGON2ID, 64 * 1024, 3, 4)
SCRYPT_DEFAULT = KdfParams(KDF_SCRYPT, 17, 8, 1)


def default_write_kdf() -> KdfParams:
    """The KDF new streams use: Argon2id when available, scrypt otherwise."""
    return ARGON2ID_DEFAULT if Argon2id is not None else SCRYPT_DEFAULT


_CACHE_SIZE = 32
# (passphrase, KDF costs, salt) -> Future of the master key; a failed
# derivation leaves the cache, so a later use derives again.
_cache: collections.OrderedDict[tuple[bytes, KdfParams, bytes], Future[bytes]] = collections.OrderedDict()
_cache_lock = threading.Lock()
# One derivation at a time, whatever the thread: memory stays bounded.
_derive_gate = threading.Lock()
# Seconds this process spent deriving, and waiting for a derived key.
_stats = {"derivations": 0, "derive_seconds": 0.0, "wait_seconds": 0.0}
_waiting = {"callers": 0, "since": 0.0}


def clear_cache() -> None:
    """Forget every derived key, as a fresh process would (tests use it)."""
    with _cache_lock:
        _cache.clear()


def stats() -> dict[str, float]:
    """This process's key derivations so far: how many, their seconds, and
    the seconds during which some caller of ``derive_cached`` waited for a
    key (the cost on the critical path; a prefetch that finished in time
    adds nothing, and callers waiting together count once)."""
    with _cache_lock:
        return dict(_stats)


def _count(field: str, amount: float) -> None:
    with _cache_lock:
        _stats[field] += amount


@contextlib.contextmanager
def _waited() -> Iterator[None]:
    """Add the time from the first caller waiting to the last one done."""
    with _cache_lock:
        if _waiting["callers"] == 0:
            _waiting["since"] = time.perf_counter()
        _waiting["callers"] += 1
    try:
        yield
    finally:
        with _cache_lock:
            _waiting["callers"] -= 1
            if _waiting["callers"] == 0:
                _stats["wait_seconds"] += time.perf_counter() - _waiting["since"]


def _claim(passphrase: bytes, kdf: KdfParams, salt: bytes) -> tuple[Future[bytes], bool]:
    """The cached future of a master key, and whether the caller must run it."""
    key = (passphrase, kdf, salt)
    with _cache_lock:
        future = _cache.get(key)
        if future is not None:
            _cache.move_to_end(key)
            return future, False
        future = Future[bytes]()
        future.set_running_or_notify_cancel()
        _cache[key] = future
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
        return future, True


def _fulfil(future: Future[bytes], passphrase: bytes, kdf: KdfParams, salt: bytes) -> None:
    """Run one derivation into its future (never raises)."""
    try:
        with _derive_gate:
            start = time.perf_counter()
            master = kdf.derive(passphrase, salt)
            _count("derive_seconds", time.perf_counter() - start)
            _count("derivations", 1)
    except BaseException as err:     # handed to whoever waits for the key
        with _cache_lock:
            key = (passphrase, kdf, salt)
            if _cache.get(key) is future:
                del _cache[key]
        future.set_exception(err)
    else:
        future.set_result(master)


def derive_cached(passphrase: bytes, kdf: KdfParams, salt: bytes) -> bytes:
    """The master key, derived once per (passphrase, KDF costs, salt).

    Runs the derivation in this thread unless another thread (a prefetch or
    a concurrent user) already does; then waits for that one.
    """
    kdf.check()
    future, mine = _claim(passphrase, kdf, salt)
    if future.done():
        return future.result()
    with _waited():
        if mine:
            _fulfil(future, passphrase, kdf, salt)
        return future.result()


def prefetch(passphrase: bytes, kdf: KdfParams, salt: bytes) -> None:
    """Start a derivation on a daemon thread unless it is cached or running."""
    try:
        kdf.check()
    except errors.Rsyncv2Error:
        return
    future, mine = _claim(passphrase, kdf, salt)
    if mine:
        threading.Thread(target=_fulfil, name="rsyncv2-kdf", daemon=True, args=(future, passphrase, kdf, salt)).start()
