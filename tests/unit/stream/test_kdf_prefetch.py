"""Background key derivation: prefetch, the shared cache, errors, concurrency."""

import os
import threading

import pytest

from freezer_rsyncv2 import errors
from freezer_rsyncv2.stream import compression, crypto, encoder, frames
from freezer_rsyncv2.stream import kdf as kdfmod

pytestmark = pytest.mark.usefixtures("cheap_kdf")

PASS = b"correct horse battery staple"
WAIT = 10       # seconds: a test that would hang fails instead


@pytest.fixture(autouse=True)
def empty_cache():
    kdfmod.clear_cache()
    yield
    kdfmod.clear_cache()


@pytest.fixture
def calls(monkeypatch):
    """Salts derived, in order, with the thread each derivation ran on."""
    seen = []
    real = crypto.KdfParams.derive

    def counting(self, passphrase, salt):
        seen.append((salt, threading.current_thread().name))
        return real(self, passphrase, salt)

    monkeypatch.setattr(crypto.KdfParams, "derive", counting)
    return seen


def kdf_threads():
    return [t for t in threading.enumerate() if t.name == "rsyncv2-kdf"]


def join_kdf_threads():
    for t in kdf_threads():
        t.join(WAIT)
    assert not kdf_threads()


def test_prefetch_then_master_gives_the_same_key_once(calls):
    salt = os.urandom(crypto.SALT_LEN)
    expected = crypto.WRITE_KDF.derive(PASS, salt)
    calls.clear()
    keys = crypto.Keyring(PASS)
    keys.prefetch(crypto.WRITE_KDF, salt)
    assert keys.master(crypto.WRITE_KDF, salt) == expected
    assert keys.master(crypto.WRITE_KDF, salt) == expected
    keys.prefetch(crypto.WRITE_KDF, salt)       # cached: nothing to start
    assert calls == [(salt, "rsyncv2-kdf")]
    join_kdf_threads()


def test_master_without_prefetch_derives_in_the_caller(calls):
    salt = os.urandom(crypto.SALT_LEN)
    crypto.Keyring(PASS).master(crypto.WRITE_KDF, salt)
    assert calls == [(salt, threading.current_thread().name)]
    assert not kdf_threads()


def test_background_error_surfaces_on_use_and_is_not_cached(monkeypatch):
    real = crypto.KdfParams.derive
    failing = [True]

    def derive(self, passphrase, salt):
        if failing[0]:
            raise errors.ConfigError("no Argon2id here")
        return real(self, passphrase, salt)

    monkeypatch.setattr(crypto.KdfParams, "derive", derive)
    keys = crypto.Keyring(PASS)
    salt = os.urandom(crypto.SALT_LEN)
    keys.prefetch(crypto.WRITE_KDF, salt)       # does not raise
    with pytest.raises(errors.ConfigError, match="no Argon2id here"):
        keys.master(crypto.WRITE_KDF, salt)
    join_kdf_threads()
    with pytest.raises(errors.ConfigError):     # derived again, fails again
        keys.master(crypto.WRITE_KDF, salt)
    failing[0] = False
    assert keys.master(crypto.WRITE_KDF, salt) == real(crypto.WRITE_KDF,
                                                       PASS, salt)


def test_prefetch_of_bad_costs_does_nothing_and_use_reports_them(calls):
    hostile = crypto.KdfParams(kdfmod.KDF_ARGON2ID, 1 << 30, 3, 4)
    keys = crypto.Keyring(PASS)
    keys.prefetch(hostile, b"s" * crypto.SALT_LEN)
    assert not kdf_threads()
    with pytest.raises(errors.CorruptRecordError, match="out of bounds"):
        keys.master(hostile, b"s" * crypto.SALT_LEN)
    assert calls == []


def test_concurrent_users_derive_once(monkeypatch):
    started, release = threading.Event(), threading.Event()
    real = crypto.KdfParams.derive
    count = []

    def slow(self, passphrase, salt):
        count.append(salt)
        started.set()
        assert release.wait(WAIT)
        return real(self, passphrase, salt)

    monkeypatch.setattr(crypto.KdfParams, "derive", slow)
    salt = os.urandom(crypto.SALT_LEN)
    keys = crypto.Keyring(PASS)
    keys.prefetch(crypto.WRITE_KDF, salt)
    assert started.wait(WAIT)
    got = []
    users = [threading.Thread(target=lambda: got.append(
        crypto.Keyring(PASS).master(crypto.WRITE_KDF, salt)))
        for _ in range(4)]
    for t in users:
        t.start()
    release.set()
    for t in users:
        t.join(WAIT)
    assert len(got) == 4 and len(set(got)) == 1
    assert count == [salt]
    join_kdf_threads()


def test_waiting_users_all_get_the_error(monkeypatch):
    started, release = threading.Event(), threading.Event()

    def failing(self, passphrase, salt):
        started.set()
        assert release.wait(WAIT)
        raise MemoryError("no 64 MiB for the KDF")

    monkeypatch.setattr(crypto.KdfParams, "derive", failing)
    salt = os.urandom(crypto.SALT_LEN)
    crypto.Keyring(PASS).prefetch(crypto.WRITE_KDF, salt)
    assert started.wait(WAIT)
    raised = []

    def use():
        try:
            crypto.Keyring(PASS).master(crypto.WRITE_KDF, salt)
        except MemoryError as err:
            raised.append(err)

    users = [threading.Thread(target=use) for _ in range(3)]
    for t in users:
        t.start()
    release.set()
    for t in users:
        t.join(WAIT)
        assert not t.is_alive()
    assert len(raised) == 3
    join_kdf_threads()


def test_prefetch_chain_for_a_new_chain_is_the_writers_key(calls):
    keys = crypto.Keyring(PASS)
    keys.prefetch_chain(None)
    keys.writing_cipher().params()
    assert len(calls) == 1 and calls[0][1] == "rsyncv2-kdf"
    join_kdf_threads()


def test_prefetch_chain_uses_the_salt_of_level_zero(tmp_path, calls):
    level0 = str(tmp_path / "m0")
    with open(level0, "wb") as out:
        out.write(b"".join(encode_manifest(crypto.Keyring(PASS))))
    kdfmod.clear_cache()
    calls.clear()
    keys = crypto.Keyring(PASS)
    keys.prefetch_chain(level0)
    params = crypto.StreamParams.decode(
        keys.writing_cipher([level0]).params())
    assert calls == [(params.salt, "rsyncv2-kdf")]
    # Unreadable or unencrypted: the writer's own fresh salt instead.
    kdfmod.clear_cache()
    calls.clear()
    keys.prefetch_chain(str(tmp_path / "missing"))
    join_kdf_threads()
    assert calls == [(keys._fresh_salt(), "rsyncv2-kdf")]


def encode_manifest(keys):
    enc = encoder.StreamEncoder(frames.KIND_MANIFEST,
                                compression.by_name("none"),
                                keys.writing_cipher())
    yield from enc.write(b"records")
    yield from enc.close()


@pytest.fixture
def gated_kdf(monkeypatch):
    """Derivations wait for the returned event before they run."""
    real = crypto.KdfParams.derive
    release = threading.Event()

    def slow(self, passphrase, salt):
        assert release.wait(WAIT)
        return real(self, passphrase, salt)

    monkeypatch.setattr(crypto.KdfParams, "derive", slow)
    return release


def test_stats_count_derivations_and_the_time_callers_waited(gated_kdf):
    release = gated_kdf
    before = kdfmod.stats()
    keys = crypto.Keyring(PASS)
    salt = os.urandom(crypto.SALT_LEN)
    keys.prefetch(crypto.WRITE_KDF, salt)
    threading.Timer(0.2, release.set).start()
    keys.master(crypto.WRITE_KDF, salt)         # waits for the prefetch
    waited = kdfmod.stats()
    assert waited["derivations"] == before["derivations"] + 1
    assert waited["derive_seconds"] - before["derive_seconds"] >= 0.15
    assert waited["wait_seconds"] - before["wait_seconds"] >= 0.15
    keys.master(crypto.WRITE_KDF, salt)         # cached: no wait, no derivation
    after = kdfmod.stats()
    assert after["derivations"] == waited["derivations"]
    assert after["wait_seconds"] == waited["wait_seconds"]
    join_kdf_threads()


def test_callers_waiting_together_count_once(gated_kdf):
    release = gated_kdf
    before = kdfmod.stats()
    keys = crypto.Keyring(PASS)
    salt = os.urandom(crypto.SALT_LEN)
    keys.prefetch(crypto.WRITE_KDF, salt)
    waiters = [threading.Thread(target=keys.master, args=(crypto.WRITE_KDF, salt))
               for _ in range(3)]
    for t in waiters:
        t.start()
    threading.Timer(0.3, release.set).start()
    for t in waiters:
        t.join(WAIT)
    waited = kdfmod.stats()["wait_seconds"] - before["wait_seconds"]
    assert 0.25 <= waited < 0.6       # three callers over 0.3 s: not 0.9 s
    join_kdf_threads()
