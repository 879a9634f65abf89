import os

import pytest

from freezer_rsyncv2 import errors
from freezer_rsyncv2.stream import compression


@pytest.mark.parametrize("name", compression.NAMES)
def test_round_trip(name):
    codec = compression.by_name(name)
    data = os.urandom(1000) + bytes(50000) + b"abc" * 1000
    packed = codec.compress(data)
    assert compression.by_id(codec.id).decompress(packed, len(data)) == data


@pytest.mark.parametrize("name", compression.NAMES)
def test_wrong_declared_length_is_rejected(name):
    codec = compression.by_name(name)
    data = b"x" * 5000
    packed = codec.compress(data)
    with pytest.raises(errors.CorruptRecordError):
        codec.decompress(packed, len(data) - 1)
    with pytest.raises(errors.CorruptRecordError):
        codec.decompress(packed, len(data) + 1)


@pytest.mark.parametrize("name", [n for n in compression.NAMES if n != "none"])
def test_garbage_is_rejected(name):
    codec = compression.by_name(name)
    with pytest.raises(errors.CorruptRecordError):
        codec.decompress(b"\x00garbage" * 10, 80)


@pytest.mark.parametrize("name", ["gzip", "bzip2", "xz", "zstd"])
def test_bomb_is_refused_without_inflating(name):
    codec = compression.by_name(name)
    packed = codec.compress(bytes(50 << 20))
    with pytest.raises(errors.CorruptRecordError):
        codec.decompress(packed, 1024)


def test_unknown_names_and_ids():
    with pytest.raises(errors.ConfigError):
        compression.by_name("lz4")
    with pytest.raises(errors.UnsupportedVersionError):
        compression.by_id(99)
    assert compression.by_name(None).name == "none"
