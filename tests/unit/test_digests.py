"""The whole-file digests a level may name."""

import hashlib

import blake3
import pytest

from freezer_rsyncv2 import digests, errors, treehash


def test_new_levels_use_the_blake3_tree():
    assert digests.DEFAULT == digests.BLAKE3_TREE == "blake3-tree"
    h = digests.new(digests.DEFAULT)
    h.update(b"abc")
    assert h.digest() == treehash.digest_of(b"abc")


def test_version_2_levels_name_blake3():
    h = digests.new(digests.of_level({"dg": "blake3"}))
    h.update(b"abc")
    assert h.digest() == blake3.blake3(b"abc").digest()


@pytest.mark.parametrize("name", ["sha256", "blake3", "blake3-tree"])
def test_zeros_is_the_same_as_zero_bytes(name):
    a, b = digests.new(name), digests.new(name)
    a.update(b"x")
    a.zeros(3 << 20)
    b.update(b"x" + bytes(3 << 20))
    assert a.digest() == b.digest()


@pytest.mark.parametrize("name", ["sha256", "blake3", "blake3-tree"])
@pytest.mark.parametrize("size", [0, 5, treehash.LEAF, treehash.LEAF + 7])
def test_of_bytes_is_the_streaming_digest(name, size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    h = digests.new(name)
    h.update(data)
    assert digests.of_bytes(name, data) == h.digest()


def test_of_bytes_refuses_an_unknown_digest():
    with pytest.raises(errors.UnsupportedVersionError):
        digests.of_bytes("md5", b"")


def test_a_level_without_a_name_uses_sha256():
    assert digests.of_level({"level": 0}) == "sha256"
    h = digests.new(digests.of_level({}))
    h.update(b"abc")
    assert h.digest() == hashlib.sha256(b"abc").digest()


@pytest.mark.parametrize("name", ["md5", "", 1, None, b"blake3"])
def test_unknown_names(name):
    with pytest.raises(errors.UnsupportedVersionError, match="file digest"):
        digests.of_level({"dg": name})
