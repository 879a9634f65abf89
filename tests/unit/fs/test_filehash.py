"""Digests of files on disk: whole files (data ranges only) and kept leaves."""

from __future__ import annotations

import hashlib
import mmap
import os

import blake3
import pytest

from freezer_rsyncv2 import treehash
from freezer_rsyncv2.fs import filehash


@pytest.mark.parametrize("mapped", [False, True])
@pytest.mark.parametrize("name", ["sha256", "blake3"])
def test_hash_fd(tmp_path, monkeypatch, mapped, name):
    monkeypatch.setattr(filehash, "MAP_MIN", 1 if mapped else 1 << 62)
    monkeypatch.setattr(filehash, "MAP_WINDOW", mmap.ALLOCATIONGRANULARITY * 3)
    data = os.urandom(3 * filehash._HASH_CHUNK // 2)
    (tmp_path / "f").write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    expected = hashlib.sha256(data) if name == "sha256" else \
        blake3.blake3(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    empty = os.open(tmp_path / "empty", os.O_RDONLY)
    try:
        assert filehash.hash_fd(fd, name) == (expected.digest(), len(data))
        assert filehash.hash_fd(empty, name)[1] == 0
    finally:
        os.close(fd)
        os.close(empty)


# -- staging --------------------------------------------------------------


@pytest.mark.parametrize("mapped", [False, True])
def test_hash_fd_of_a_sparse_file_reads_only_its_data(tmp_path, monkeypatch,
                                                      mapped):
    monkeypatch.setattr(filehash, "MAP_MIN", 1 if mapped else 1 << 62)
    path = tmp_path / "img"
    size = 15 << 40
    with open(path, "wb") as f:
        f.truncate(size)
        os.pwrite(f.fileno(), b"data" * 1000, 3 << 40)
        os.pwrite(f.fileno(), b"end", size - 3)
    expected = treehash.TreeHash()
    expected.zeros(3 << 40)
    expected.update(b"data" * 1000)
    expected.zeros(size - 3 - (3 << 40) - 4000)
    expected.update(b"end")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert filehash.hash_fd(fd, "blake3-tree") == (expected.digest(), size)
    finally:
        os.close(fd)
