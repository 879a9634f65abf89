"""The whole-file digests a level may name."""

import hashlib

import blake3
import pytest

from freezer_rsyncv2 import digests, errors


def test_new_levels_use_blake3():
    assert digests.DEFAULT == digests.BLAKE3
    h = digests.new(digests.DEFAULT)
    h.update(b"abc")
    assert h.digest() == blake3.blake3(b"abc").digest()


def test_a_level_without_a_name_uses_sha256():
    assert digests.of_level({"level": 0}) == "sha256"
    h = digests.new(digests.of_level({}))
    h.update(b"abc")
    assert h.digest() == hashlib.sha256(b"abc").digest()


@pytest.mark.parametrize("name", ["md5", "", 1, None, b"blake3"])
def test_unknown_names(name):
    with pytest.raises(errors.UnsupportedVersionError, match="file digest"):
        digests.of_level({"dg": name})
