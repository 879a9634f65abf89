"""Authenticated encryption of streams: AEAD ciphers, passphrase KDF, header cipher parameters.

See ``docs/encryption.rst``.  A memory-hard KDF turns passphrase and salt
into a master key, derived once per process and salt (a writer reuses its
chain's salt); each stream encrypts with an HKDF subkey of the master and
its own random stream nonce; frame ``i``'s nonce is ``stream_nonce[:4] ||
u64 i``.  ``frames.py`` binds header, index, flags and lengths as AAD.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import struct
import threading
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import aead
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from freezer_rsyncv2 import errors
from freezer_rsyncv2.stream import frames
from freezer_rsyncv2.stream import kdf as kdfmod
from freezer_rsyncv2.stream.kdf import KEY_LEN, KdfParams, default_write_kdf

PARAMS_VERSION = 1

CIPHER_AES_256_GCM = 1
CIPHER_CHACHA20_POLY1305 = 2
CIPHER_NAMES = {CIPHER_AES_256_GCM: "AES-256-GCM", CIPHER_CHACHA20_POLY1305: "ChaCha20-Poly1305"}
DEFAULT_CIPHER = CIPHER_AES_256_GCM
_AEADS: dict[int, type[aead.AESGCM] | type[aead.ChaCha20Poly1305]] = {
    CIPHER_AES_256_GCM: aead.AESGCM, CIPHER_CHACHA20_POLY1305: aead.ChaCha20Poly1305}

SALT_LEN = 16
STREAM_NONCE_LEN = 16
NONCE_PREFIX_LEN = 4
CHECK_LEN = 16
TAG_LEN = 16

MAX_PASSPHRASE = 64 * 1024

# version, KDF id, costs 1..3, salt, stream nonce, key check
_EXT = struct.Struct(">BBIII16s16s16s")
_INDEX = struct.Struct(">Q")

_CHECK_INFO = b"freezer_rsyncv2 v1 key check"
_FRAME_KEY_INFO = b"freezer_rsyncv2 v1 frame key"


# What writers use; tests replace it with cheap parameters.
WRITE_KDF = default_write_kdf()


@dataclasses.dataclass(frozen=True)
class StreamParams:
    """The decoded cipher parameters of one stream header."""

    kdf: KdfParams
    salt: bytes
    stream_nonce: bytes
    key_check: bytes

    def encode(self) -> bytes:
        return _EXT.pack(PARAMS_VERSION, self.kdf.kdf, self.kdf.cost1,
                         self.kdf.cost2, self.kdf.cost3, self.salt,
                         self.stream_nonce, self.key_check)

    @classmethod
    def decode(cls, ext: bytes) -> StreamParams:
        """Strict decode: exact length, known version and KDF, bounded costs."""
        if not ext:
            raise errors.CorruptRecordError("encrypted stream without cipher parameters")
        if ext[0] != PARAMS_VERSION:
            raise errors.UnsupportedVersionError(
                f"cipher parameters version {ext[0]} is not supported (this library reads version {PARAMS_VERSION})")
        if len(ext) != _EXT.size:
            raise errors.CorruptRecordError(f"cipher parameters are {len(ext)} bytes, expected {_EXT.size}")
        (_v, kdf_id, cost1, cost2, cost3, salt, stream_nonce, key_check) = _EXT.unpack(ext)
        kdf = KdfParams(kdf_id, cost1, cost2, cost3)
        kdf.check()
        return cls(kdf, salt, stream_nonce, key_check)


class AeadCipher:
    """Seals and opens one stream's frames (the interface of frames.NullCipher)."""

    overhead = TAG_LEN

    def __init__(self, cipher_id: int, params: StreamParams, master: bytes) -> None:
        self.id = cipher_id
        self.name = CIPHER_NAMES[cipher_id]
        self._params = params.encode()
        self._prefix = params.stream_nonce[:NONCE_PREFIX_LEN]
        self._aead = _AEADS[cipher_id](
            _hkdf(master, params.stream_nonce,
                  _FRAME_KEY_INFO + bytes([cipher_id]), KEY_LEN))

    def params(self) -> bytes:
        return self._params

    def seal(self, index: int, aad: bytes, data: bytes) -> bytes:
        return self._aead.encrypt(self._prefix + _INDEX.pack(index), data, aad)

    def open(self, index: int, aad: bytes, sealed: frames.Piece) -> bytes:
        try:      # a payload shorter than the tag fails here too
            return self._aead.decrypt(self._prefix + _INDEX.pack(index), sealed, aad)
        except InvalidTag:
            raise errors.AuthenticationError(
                f"{self.name} authentication failed: the passphrase is right, so the backup was tampered with "
                "or damaged") from None


class WritingCipher:
    """The cipher of a new stream; salt choice and KDF wait for first use.

    Making one costs nothing (the engine does, to check the pass file early).
    """

    overhead = TAG_LEN

    def __init__(self, keyring: Keyring, cipher_id: int, chain: Sequence[str]) -> None:
        if cipher_id not in _AEADS:
            raise ValueError(f"unknown cipher id {cipher_id}")
        self.id = cipher_id
        self.name = CIPHER_NAMES[cipher_id]
        self._keyring = keyring
        self._chain = tuple(chain)
        self._inner: AeadCipher | None = None

    def _cipher(self) -> AeadCipher:
        if self._inner is None:
            self._inner = self._keyring.new_stream(self.id, self._chain)
        return self._inner

    def params(self) -> bytes:
        return self._cipher().params()

    def seal(self, index: int, aad: bytes, data: bytes) -> bytes:
        return self._cipher().seal(index, aad, data)

    def open(self, index: int, aad: bytes, sealed: frames.Piece) -> bytes:
        return self._cipher().open(index, aad, sealed)


class Keyring:
    """One passphrase: makes ciphers for new streams and opens stored ones."""

    def __init__(self, passphrase: bytes) -> None:
        if not passphrase:
            raise errors.ConfigError("the passphrase is empty")
        self._passphrase = passphrase
        self._salt: bytes | None = None

    @classmethod
    def from_pass_file(cls, path: str) -> Keyring:
        return cls(read_passphrase(path))

    def master(self, kdf: KdfParams, salt: bytes) -> bytes:
        return kdfmod.derive_cached(self._passphrase, kdf, salt)

    def prefetch(self, kdf: KdfParams, salt: bytes) -> None:
        """Start deriving ``master(kdf, salt)`` on a background thread.

        A later ``master`` call waits for that derivation instead of running
        its own, and raises what it raised.  Costs out of bounds are left to
        the real use to report.
        """
        kdfmod.prefetch(self._passphrase, kdf, salt)

    def prefetch_chain(self, level_zero: str | None) -> None:
        """Start the derivations a level extending a chain will need.

        ``level_zero`` is the chain's stored level-0 manifest (its header
        gives KDF and salt, no key needed), or None for a new level 0.
        """
        found = _peek_params(level_zero) if level_zero else None
        params = None
        if found is not None and found[0] in _AEADS:
            try:
                params = StreamParams.decode(found[1])
            except errors.Rsyncv2Error:
                params = None     # reported when the manifest is read
        if params is not None:
            self.prefetch(params.kdf, params.salt)    # reading the chain
            if params.kdf == WRITE_KDF:
                return                # and writing: the chain's salt
        self.prefetch(WRITE_KDF, self._fresh_salt())

    def writing_cipher(self, chain: Sequence[str] = (), cipher_id: int = DEFAULT_CIPHER) -> WritingCipher:
        """A cipher for a new stream; ``chain`` lists manifests it extends."""
        return WritingCipher(self, cipher_id, chain)

    def new_stream(self, cipher_id: int, chain: Sequence[str] = ()) -> AeadCipher:
        kdf = WRITE_KDF
        salt = self._write_salt(kdf, chain)
        master = self.master(kdf, salt)
        params = StreamParams(kdf, salt, os.urandom(STREAM_NONCE_LEN), _key_check(master))
        return AeadCipher(cipher_id, params, master)

    def _write_salt(self, kdf: KdfParams, chain: Sequence[str]) -> bytes:
        for path in chain[:1]:
            salt = self._chain_salt(path, kdf)
            if salt is not None:
                return salt
        return self._fresh_salt()

    def _fresh_salt(self) -> bytes:
        """This keyring's salt for streams that start a chain."""
        with _salt_lock:
            if self._salt is None:
                self._salt = os.urandom(SALT_LEN)
            return self._salt

    def _chain_salt(self, path: str, kdf: KdfParams) -> bytes | None:
        """The salt of a stored stream, if it verifies under these KDF costs."""
        found = _peek_params(path)
        if found is None:
            return None
        try:
            params, _master = self._verified(*found)
        except errors.Rsyncv2Error:
            return None
        return params.salt if params.kdf == kdf else None

    def _verified(self, cipher_id: int, ext: bytes) -> tuple[StreamParams, bytes]:
        if cipher_id == frames.NullCipher.id:
            raise errors.AuthenticationError(
                "this stream is not encrypted but a pass file was given: "
                "refusing an unauthenticated stream (a backup made without "
                "encryption restores without the pass file; a chain cannot "
                "mix both: start a new level 0 to switch)")
        if cipher_id not in _AEADS:
            raise errors.UnsupportedVersionError(f"unknown cipher id {cipher_id} in stream header")
        params = StreamParams.decode(ext)
        master = self.master(params.kdf, params.salt)
        if not hmac.compare_digest(_key_check(master), params.key_check):
            raise errors.AuthenticationError(
                "wrong passphrase or tampered backup: the stream's key check "
                "does not match the pass file's passphrase")
        return params, master

    def open_cipher(self, cipher_id: int, ext: bytes) -> AeadCipher:
        """The cipher of a stored stream (a ``decode_frames`` cipher factory)."""
        params, master = self._verified(cipher_id, ext)
        return AeadCipher(cipher_id, params, master)


def read_passphrase(path: str) -> bytes:
    """The first line of a pass file, without its line ending (as Freezer)."""
    try:
        with open(path, "rb") as f:
            line = f.readline(MAX_PASSPHRASE + 2)
    except OSError as err:
        raise errors.ConfigError(f"cannot read the pass file {path}: {err.strerror or err}") from None
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    if len(line) > MAX_PASSPHRASE:
        raise errors.ConfigError(f"the first line of the pass file {path} is longer than {MAX_PASSPHRASE} bytes")
    if not line:
        raise errors.ConfigError(f"the pass file {path} is empty: its first line must hold the passphrase")
    return line


def _hkdf(master: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(master)


def _key_check(master: bytes) -> bytes:
    return _hkdf(master, None, _CHECK_INFO, CHECK_LEN)


_salt_lock = threading.Lock()


_PEEK = 8192       # more than a header with its largest ext


def _peek_params(path: str) -> tuple[int, bytes] | None:
    """(cipher id, ext) of a stored manifest's header, or None if unreadable."""
    found: list[tuple[int, bytes]] = []

    def capture(cipher_id: int, ext: bytes) -> frames.NullCipher:
        found.append((cipher_id, ext))
        raise errors.Rsyncv2Error("header read: stop")

    try:
        with open(path, "rb") as f:
            next(frames.decode_frames([f.read(_PEEK)], frames.KIND_MANIFEST, capture))
    except (errors.Rsyncv2Error, OSError, StopIteration):
        pass
    return found[0] if found else None
