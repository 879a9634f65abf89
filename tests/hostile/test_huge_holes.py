"""A tiny level that declares an enormous hole costs no time and no space."""

import os
import time

import pytest

from freezer_rsyncv2 import errors, treehash
from freezer_rsyncv2.stream import records
from tests.hostile import streamkit as sk

SIZE = 15 << 40        # 15 TiB


def _level(digest):
    recs = [sk.entry(b"img", "f", s=SIZE, data="full"),
            [records.HOLE, SIZE],
            [records.END_FILE, SIZE, digest]]
    return sk.encode(recs, dg="blake3-tree")


def _zeros_digest():
    h = treehash.TreeHash()
    h.zeros(SIZE)
    return h.digest()


def test_15_tib_hole_with_a_wrong_digest_is_refused_at_once(arena):
    data = _level(b"\x01" * 32)
    assert len(data) < 200
    start = time.monotonic()
    with pytest.raises(errors.IntegrityError, match="digest"):
        sk.restore_stream(arena.root, data)
    assert time.monotonic() - start < 5
    assert os.listdir(arena.root) == []


def test_15_tib_hole_with_its_digest_restores_as_a_hole(arena):
    start = time.monotonic()
    try:
        sk.restore_stream(arena.root, _level(_zeros_digest()))
    except errors.RestoreError as err:      # a file system without room
        assert "File too large" in str(err) or "No space" in str(err)
        assert os.listdir(arena.root) == []
    else:
        st = os.stat(os.path.join(arena.root, "img"))
        assert st.st_size == SIZE
        assert st.st_blocks == 0
    assert time.monotonic() - start < 5
