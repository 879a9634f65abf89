import os

import pytest

from tests.hostile import streamkit


@pytest.fixture
def arena(tmp_path):
    """A restore dir and a sentinel dir beside it that must never change."""
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "precious.txt").write_bytes(b"do not touch")
    (sentinel / "sub").mkdir()
    (sentinel / "sub" / "inner.txt").write_bytes(b"inner")
    dest = tmp_path / "restore"
    dest.mkdir()
    before = streamkit.tree_state(str(tmp_path / "sentinel"))
    outside_before = sorted(os.listdir(tmp_path))

    class Arena:
        root = str(dest)
        sentinel_dir = str(sentinel)
        top = str(tmp_path)

        def check_sentinel(self):
            assert streamkit.tree_state(str(sentinel)) == before
            assert sorted(os.listdir(tmp_path)) == outside_before
    a = Arena()
    yield a
    a.check_sentinel()
