"""Tests of data_ranges: finding the data extents of sparse files."""

from __future__ import annotations

import os

import pytest

from freezer_rsyncv2.fs.walk import data_ranges

MIB = 1 << 20


def _open(path, data_at=(), size=0):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, size)
    for offset, data in data_at:
        os.pwrite(fd, data, offset)
    os.fsync(fd)
    return fd


def _reports_holes(fd, size):
    """Whether the file system reports this file's holes, asked without data_ranges.

    Not every file system does (SEEK_HOLE then finds only the end of the
    file); there data_ranges rightly answers the whole file, and the hole
    tests cannot apply.
    """
    if not hasattr(os, 'SEEK_HOLE'):
        return False
    saved = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE) < size
    except OSError:
        return False
    finally:
        os.lseek(fd, saved, os.SEEK_SET)


def test_sparse_file_has_holes(tmp_path):
    size = 10 * MIB
    fd = _open(tmp_path / 'sparse', [(5 * MIB, b'x' * 4096)], size)
    try:
        holes = _reports_holes(fd, size)
        os.lseek(fd, 123, os.SEEK_SET)
        ranges = data_ranges(fd, size)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 123  # offset preserved
    finally:
        os.close(fd)
    if not holes:
        assert ranges == [(0, size)]
        pytest.skip("file system does not report holes")
    assert sum(length for _, length in ranges) < MIB
    assert any(start <= 5 * MIB and 5 * MIB + 4096 <= start + length
               for start, length in ranges)
    assert all(0 <= start and start + length <= size
               for start, length in ranges)
    assert ranges == sorted(ranges)


def test_data_at_both_ends_and_clipping(tmp_path):
    size = 4 * MIB
    fd = _open(tmp_path / 'f', [(0, b'a' * 4096), (size - 4096, b'z' * 4096)],
               size)
    try:
        holes = _reports_holes(fd, size)
        ranges = data_ranges(fd, size)
        clipped = data_ranges(fd, size - 100)
    finally:
        os.close(fd)
    if not holes:
        assert ranges == [(0, size)]
        pytest.skip("file system does not report holes")
    assert ranges[0][0] == 0
    assert ranges[-1][0] + ranges[-1][1] == size
    assert clipped[-1][0] + clipped[-1][1] == size - 100


def test_dense_and_empty_and_all_hole(tmp_path):
    fd = _open(tmp_path / 'dense', [(0, b'd' * 10000)])
    try:
        assert data_ranges(fd, 10000) == [(0, 10000)]
        assert data_ranges(fd, 0) == []
    finally:
        os.close(fd)
    fd = _open(tmp_path / 'hole', size=MIB)
    try:
        holes = _reports_holes(fd, MIB)
        ranges = data_ranges(fd, MIB)
    finally:
        os.close(fd)
    assert ranges == ([] if holes else [(0, MIB)])


def test_unsupported_fd_falls_back_to_whole(tmp_path):
    read_end, write_end = os.pipe()
    try:
        assert data_ranges(read_end, 100) == [(0, 100)]
    finally:
        os.close(read_end)
        os.close(write_end)


def test_offset_kept_unless_told(tmp_path):
    size = 4 * MIB
    fd = _open(tmp_path / 'f', [(0, b'a' * 4096), (size - 4096, b'z' * 4096)], size)
    try:
        os.lseek(fd, 123, os.SEEK_SET)
        kept = data_ranges(fd, size)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 123
        assert data_ranges(fd, size, keep_offset=False) == kept
    finally:
        os.close(fd)
