"""Fixtures shared by every test package."""

import pytest

from freezer_rsyncv2.stream import crypto

# One S3-API server (moto, on 127.0.0.1) for the whole session.
pytest_plugins = ["tests.s3server"]


@pytest.fixture
def cheap_kdf(monkeypatch):
    """New encrypted streams use a tiny Argon2id (or scrypt): fast tests.

    Production costs are checked by tests/unit/stream/test_crypto.py.
    """
    if crypto.Argon2id is not None:
        tiny = crypto.KdfParams(crypto.KDF_ARGON2ID, 8, 1, 1)
    else:
        tiny = crypto.KdfParams(crypto.KDF_SCRYPT, 4, 1, 1)
    monkeypatch.setattr(crypto, "WRITE_KDF", tiny)
    return tiny
