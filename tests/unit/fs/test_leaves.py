"""In-place patches of staged files checked by rehashing only the leaves they touched."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freezer_rsyncv2 import digests, treehash
from freezer_rsyncv2.errors import IntegrityError
from freezer_rsyncv2.fs import filehash, regular
from freezer_rsyncv2.fs.restore import RestoreTree
from tests.unit.fs.test_regular import entry, temps

LEAF = treehash.LEAF
TREE = digests.BLAKE3_TREE


def tree_digest(data: bytes) -> bytes:
    return treehash.digest_of(data)


def file_digest(path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return filehash.hash_fd(fd, TREE)[0]
    finally:
        os.close(fd)


def leaves_of(path) -> dict[int, bytes]:
    hasher = digests.new(TREE, keep_leaves=True)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(LEAF), b""):
            hasher.update(chunk)
    hasher.digest()
    return hasher.leaves


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["write", "hole", "resize"]),
                          st.integers(0, 6 * LEAF), st.integers(1, 2 * LEAF)),
                min_size=1, max_size=6))
def test_rehashed_leaves_give_the_digest_of_the_file(tmp_path_factory, ops):
    path = tmp_path_factory.mktemp("leaves") / "f"
    with open(path, "wb") as f:
        f.write(os.urandom(3 * LEAF + 123))
    leaves = leaves_of(path)
    old_size = os.path.getsize(path)
    changed = []
    fd = os.open(path, os.O_RDWR)
    try:
        for op, offset, length in ops:
            size = os.fstat(fd).st_size
            if op == "write":
                os.pwrite(fd, os.urandom(length), offset)
                changed.append((offset, length, False))
            elif op == "hole" and offset < size:
                length = min(length, size - offset)
                regular.punch_hole(fd, offset, length)
                changed.append((offset, length, True))
            elif op == "resize":
                os.ftruncate(fd, offset)
                if offset < size:       # what went: like a hole at the end
                    changed.append((offset, size - offset, True))
                else:
                    changed.append((size, offset - size, True))
        size = os.fstat(fd).st_size
        filehash.rehash_leaves(fd, size, leaves, changed, old_size)
    finally:
        os.close(fd)
    assert treehash.digest_from_leaves(size, leaves) == file_digest(path)


def test_a_patch_of_a_huge_sparse_file_rehashes_a_few_leaves(tmp_path):
    path = tmp_path / "img"
    size = 1 << 40
    with open(path, "wb") as f:
        f.truncate(size)
        os.pwrite(f.fileno(), os.urandom(LEAF), 5 * LEAF)
    hasher = digests.new(TREE, keep_leaves=True)
    hasher.zeros(5 * LEAF)
    with open(path, "rb") as f:
        hasher.update(os.pread(f.fileno(), LEAF, 5 * LEAF))
    hasher.zeros(size - 6 * LEAF)
    leaves = dict(hasher.leaves)
    assert hasher.digest() == file_digest(path)
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, b"patched", 700 << 30)
        regular.punch_hole(fd, 5 * LEAF, LEAF)
        changed = [(700 << 30, 7, False), (5 * LEAF, LEAF, True)]
        looked_at = filehash.rehash_leaves(fd, size, leaves, changed, size)
    finally:
        os.close(fd)
    assert looked_at <= 4
    assert sorted(leaves) == [(700 << 30) // LEAF]
    assert treehash.digest_from_leaves(size, leaves) == file_digest(path)


def _put(tree, path, data):
    tree.write_file(entry(path, len(data)), [data], tree_digest(data), TREE)


def _patch(tree, path, plan, new, digest=None):
    with tree.open_basis(path) as basis:
        return tree.patch_file(entry(path, len(new)), path, basis.fileno(),
                               plan, lambda: digest or tree_digest(new), TREE)


def test_in_place_patch_is_checked_at_its_level(tmp_path, monkeypatch):
    monkeypatch.setattr(regular, "STAGE_MIN", 64 << 10)
    root = tmp_path / "out"
    root.mkdir()
    (root / "f").write_bytes(b"the good old file")
    old = os.urandom(3 * LEAF)
    good = bytearray(old)
    good[LEAF + 10:LEAF + 20] = b"x" * 10
    tree = RestoreTree(str(root))
    _put(tree, b"f", old)
    tree.level = 1
    plan = [(0, LEAF + 10), b"x" * 10, (LEAF + 20, len(old) - LEAF - 20)]
    assert _patch(tree, b"f", plan, bytes(good)) == 10
    tree.level = 2
    bad = bytes(good[:5]) + b"y" + bytes(good[6:])
    with pytest.raises(IntegrityError, match=r"'f': blake3-tree digest "
                       r"mismatch after level 2 patched it in place"):
        _patch(tree, b"f", [(0, 5), b"y", (6, len(good) - 6)], bad,
               digest=tree_digest(bytes(good)))
    tree.close()
    assert (root / "f").read_bytes() == b"the good old file"
    assert temps(root) == []


def test_in_place_patches_and_holes_over_levels(tmp_path, monkeypatch):
    monkeypatch.setattr(regular, "STAGE_MIN", 64 << 10)
    root = tmp_path / "out"
    data = bytearray(os.urandom(4 * LEAF + 99))
    with RestoreTree(str(root)) as tree:
        _put(tree, b"f", bytes(data))
        for level in (1, 2, 3):
            tree.level = level
            at = level * 300_000
            new = bytearray(data)
            new[at:at + 5] = b"L%04d" % level
            new[at + LEAF:at + 2 * LEAF] = bytes(LEAF)     # a hole
            plan = [(0, at), bytes(new[at:at + 5]), (at + 5, LEAF - 5),
                    LEAF, (at + 2 * LEAF, len(data) - at - 2 * LEAF)]
            _patch(tree, b"f", plan, bytes(new))
            data = new
    assert (root / "f").read_bytes() == bytes(data)
    assert temps(root) == []
