"""Fixtures shared by every test package."""

import tempfile

import pytest

from freezer_rsyncv2.stream import crypto
from freezer_rsyncv2.stream import kdf as kdfmod

# One S3-API server (moto, on 127.0.0.1) and one real Swift cluster (with
# its S3 API) for the whole session, each started by the first test using it.
pytest_plugins = ["tests.s3server", "tests.swiftserver"]


@pytest.fixture(autouse=True)
def test_tmpdir(tmp_path_factory, monkeypatch):
    """The temporary directory of everything a test runs, children included.

    Scratch directories (``freezer_rsyncv2.scratch``) and what a killed
    child leaves go under pytest's directory of this test, not the
    machine's: nothing builds up across runs, and a sweep sees only this
    test's leftovers.
    """
    path = str(tmp_path_factory.mktemp("tmpdir"))
    monkeypatch.setenv("TMPDIR", path)
    monkeypatch.setattr(tempfile, "tempdir", path)
    return path


@pytest.fixture
def cheap_kdf(monkeypatch):
    """New encrypted streams use a tiny Argon2id (or scrypt): fast tests.

    Production costs are checked by tests/unit/stream/test_crypto.py.
    """
    if kdfmod.Argon2id is not None:
        tiny = crypto.KdfParams(kdfmod.KDF_ARGON2ID, 8, 1, 1)
    else:
        tiny = crypto.KdfParams(kdfmod.KDF_SCRYPT, 4, 1, 1)
    monkeypatch.setattr(crypto, "WRITE_KDF", tiny)
    return tiny
