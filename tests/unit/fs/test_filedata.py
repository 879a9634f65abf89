"""Restored file data: basis ranges copied kernel-side (or not), hashing on a helper thread."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from freezer_rsyncv2.errors import IntegrityError
from freezer_rsyncv2.fs import entry as E
from freezer_rsyncv2.fs import filedata
from freezer_rsyncv2.fs.filedata import BasisRange
from freezer_rsyncv2.fs.restore import RestoreTree
from freezer_rsyncv2.threads import PARALLEL_MIN

MIB = 1 << 20


def entry(path: bytes, size: int) -> E.Entry:
    return E.Entry(path=path, kind=E.KIND_FILE, mode=0o644, uid=os.getuid(),
                   gid=os.getgid(), uname=None, gname=None, size=size,
                   mtime_ns=10**18, atime_ns=10**18, ctime_ns=0, ino=0, dev=0,
                   nlink=1)


@pytest.fixture
def basis(tmp_path):
    data = os.urandom(3 * MIB + 123)
    path = tmp_path / "basis"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield fd, data
    os.close(fd)


def pieces_and_expected(fd: int, data: bytes, big: bool):
    """A patch-like mix: moved and in-place ranges, literals, a hole."""
    lit = os.urandom(PARALLEL_MIN if big else 5000)
    pieces = [BasisRange(fd, 1000, MIB), lit, BasisRange(fd, 0, 10),
              4096, BasisRange(fd, len(data) - 77, 77), b"x"]
    expected = (data[1000:1000 + MIB] + lit + data[:10] + bytes(4096)
                + data[-77:] + b"x")
    return pieces, expected


@pytest.mark.parametrize("big", [False, True], ids=["inline", "hash-thread"])
@pytest.mark.parametrize("kernel", ["copy_file_range", "EXDEV", "missing"])
def test_basis_ranges_round_trip(tmp_path, basis, monkeypatch, big, kernel):
    fd, data = basis
    if kernel == "EXDEV":
        def refuse(*_args):
            raise OSError(errno.EXDEV, "cross-device")
        monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    elif kernel == "missing":
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    pieces, expected = pieces_and_expected(fd, data, big)
    with RestoreTree(str(tmp_path / "out")) as tree:
        written = tree.write_file(entry(b"f", len(expected)), pieces,
                                  hashlib.sha256(expected).digest())
    assert (tmp_path / "out" / "f").read_bytes() == expected
    assert written == len(expected) - 4096


@pytest.mark.parametrize("big", [False, True], ids=["inline", "hash-thread"])
def test_digest_mismatch_leaves_no_file(tmp_path, basis, big):
    fd, data = basis
    pieces, expected = pieces_and_expected(fd, data, big)
    with RestoreTree(str(tmp_path / "out")) as tree:
        with pytest.raises(IntegrityError):
            tree.write_file(entry(b"f", len(expected)), pieces, bytes(32))
    assert os.listdir(tmp_path / "out") == []


def test_range_past_the_end_of_the_basis(tmp_path, basis):
    fd, data = basis
    piece = BasisRange(fd, len(data) - 10, 20)
    with RestoreTree(str(tmp_path / "out")) as tree:
        with pytest.raises(IntegrityError, match="basis file ends"):
            tree.write_file(entry(b"f", 20), [piece], bytes(32))
    assert os.listdir(tmp_path / "out") == []


def test_reused_buffer_pieces_are_hashed_as_written(tmp_path):
    """A caller reusing one buffer for every piece: the hash thread sees each as it was."""
    size = PARALLEL_MIN + MIB
    rng = [os.urandom(64 * 1024) for _ in range(size // (64 * 1024))]
    buf = bytearray(64 * 1024)

    def pieces():
        for chunk in rng:
            buf[:] = chunk
            yield buf

    expected = b"".join(rng)
    with RestoreTree(str(tmp_path / "out")) as tree:
        tree.write_file(entry(b"f", size), pieces(),
                        hashlib.sha256(expected).digest())
    assert (tmp_path / "out" / "f").read_bytes() == expected


def test_hash_range_reads_in_bounded_pieces(basis):
    fd, data = basis
    sizes = []
    filedata.hash_range(lambda view: sizes.append(len(view)),
                        BasisRange(fd, 5, 2 * MIB + 3), b"f")
    assert sum(sizes) == 2 * MIB + 3 and max(sizes) <= MIB
