"""Crafted hostile levels: each gives a typed error and never escapes the restore dir."""

import hashlib
import os

import blake3
import pytest

from freezer_rsyncv2 import errors
from freezer_rsyncv2.stream import frames, records
from tests.hostile import streamkit as sk

UNSAFE = (errors.UnsafePathError, errors.CorruptRecordError)


def restore(arena, recs, level=0):
    sk.restore_stream(arena.root, sk.encode(recs, level=level), level=level)


def listing(root):
    return sorted(os.listdir(root))


# -- paths ------------------------------------------------------------------

def bad_paths(arena):
    precious = os.path.join(arena.sentinel_dir, "precious.txt").encode()
    return [precious, b"../sentinel/precious.txt", b"a/../../sentinel/x",
            b"a//b", b"./a", b"a/.", b"a\x00b", b"x" * 256,
            b"/".join([b"d"] * 2100), b"..", b""]


@pytest.mark.parametrize("index", range(11))
def test_bad_paths_are_refused_everywhere(arena, index):
    path = bad_paths(arena)[index]
    cases = [
        sk.file_records(path, b"owned"),
        [sk.entry(path, "d")],
        [sk.entry(path, "l", l=b"/etc/passwd")],
        [sk.entry(path, "p")],
        [[records.DELETE, path]],
        sk.file_records(b"ok", b"fine") + [sk.entry(b"h", "h", h=path)],
        [sk.entry(b"ok", "f", s=4, data="delta", pn=path, bl=700, bs=4),
         [records.LITERAL, b"data"],
         [records.END_FILE, 4, hashlib.sha256(b"data").digest()]],
    ]
    for recs in cases:
        with pytest.raises(UNSAFE):
            restore(arena, recs)
        arena.check_sentinel()
    assert not os.path.exists(os.path.join(arena.root, "ok-not-there"))


# -- symlinks -----------------------------------------------------------------

@pytest.mark.parametrize("target", ["abs", "rel"])
@pytest.mark.parametrize("action", ["file", "dir", "delete", "fifo",
                                    "symlink", "hardlink-into"])
def test_no_write_through_a_symlink_in_the_same_level(arena, target, action):
    link_to = (arena.sentinel_dir.encode() if target == "abs"
               else b"../sentinel")
    under = b"evil/precious.txt"
    body = {
        "file": sk.file_records(under, b"owned"),
        "dir": [sk.entry(b"evil/newdir", "d")],
        "delete": [[records.DELETE, under]],
        "fifo": [sk.entry(b"evil/fifo", "p")],
        "symlink": [sk.entry(b"evil/ln", "l", l=b"x")],
        "hardlink-into": sk.file_records(b"ok", b"x")
        + [sk.entry(b"evil/hl", "h", h=b"ok")],
    }[action]
    with pytest.raises((errors.UnsafePathError, errors.RestoreError)):
        restore(arena, [sk.entry(b"evil", "l", l=link_to)] + body)
    arena.check_sentinel()


def test_directory_turned_symlink_across_levels(arena):
    restore(arena, [sk.entry(b"d", "d")] + sk.file_records(b"d/f", b"one"))
    restore(arena, [sk.entry(b"d", "l", l=arena.sentinel_dir.encode())],
            level=1)
    assert os.path.islink(os.path.join(arena.root, "d"))
    for recs in (sk.file_records(b"d/precious.txt", b"owned"),
                 [[records.DELETE, b"d/precious.txt"]],
                 [sk.entry(b"d/sub", "d")],
                 [sk.entry(b"d/precious.txt", "f", data="meta", m=0o777)]):
        with pytest.raises((errors.UnsafePathError, errors.RestoreError)):
            restore(arena, recs, level=2)
        arena.check_sentinel()


def test_delta_basis_through_a_symlink_is_refused(arena):
    restore(arena, [sk.entry(b"ln", "l", l=arena.sentinel_dir.encode())])
    data = b"inner"
    with pytest.raises((errors.UnsafePathError, errors.RestoreError)):
        restore(arena, [
            sk.entry(b"copy", "f", s=5, data="delta", pn=b"ln/sub/inner.txt",
                     bl=700, bs=5),
            [records.COPY, 0, 1],
            [records.END_FILE, 5, hashlib.sha256(data).digest()]], level=1)
    assert not os.path.exists(os.path.join(arena.root, "copy"))


# -- hardlinks ----------------------------------------------------------------

def test_hardlink_to_missing_or_special_targets(arena):
    for recs in (
            [sk.entry(b"h", "h", h=b"not-restored")],
            [sk.entry(b"ln", "l", l=b"/etc/passwd"),
             sk.entry(b"h", "h", h=b"ln")],
            [sk.entry(b"dir", "d"), sk.entry(b"h", "h", h=b"dir")],
            [sk.entry(b"h", "h")],
            [sk.entry(b"h", "h", h=b"h")]):
        with pytest.raises((errors.RestoreError, errors.CorruptRecordError)):
            restore(arena, recs)
        arena.check_sentinel()
        assert not os.path.lexists(os.path.join(arena.root, "h"))


# -- kinds where a file is expected -------------------------------------------

@pytest.mark.parametrize("kind", ["p", "d", "l"])
def test_delta_or_meta_against_a_non_file(arena, kind):
    extra = {"l": b"target"} if kind == "l" else {}
    restore(arena, [sk.entry(b"x", kind, **extra)])
    data = b"new content"
    for recs in (
            [sk.entry(b"x", "f", s=len(data), data="delta", bl=700, bs=0),
             [records.LITERAL, data],
             [records.END_FILE, len(data), hashlib.sha256(data).digest()]],
            [sk.entry(b"x", "f", data="meta")]):
        with pytest.raises((errors.RestoreError, errors.IntegrityError)):
            restore(arena, recs, level=1)


# -- lengths and ranges -------------------------------------------------------

def _base_file(arena, data=b"A" * 1000):
    restore(arena, sk.file_records(b"f", data))
    return data


@pytest.mark.parametrize("ops", [
    [[records.COPY, 2, 1]],                 # past the end
    [[records.COPY, 0, 3]],
    [[records.COPY, 1 << 62, 1]],
    [[records.COPY, 0, 1 << 62]],
    [[records.COPY, (1 << 63) - 1, (1 << 63) - 1]],
    [[records.COPY, -1, 1]],
    [[records.COPY, 0, 0]],
    [[records.HOLE, 0]],
])
def test_bad_copy_ranges(arena, ops):
    data = _base_file(arena)
    recs = [sk.entry(b"f", "f", s=700, data="delta", bl=700, bs=1000)] + ops
    recs.append([records.END_FILE, 700, hashlib.sha256(data[:700]).digest()])
    with pytest.raises(errors.FormatError):
        restore(arena, recs, level=1)
    assert open(os.path.join(arena.root, "f"), "rb").read() == data


def test_hole_inside_a_delta_is_zeros(arena):
    """Version 3 deltas carry holes; they are checked like everything else."""
    data = _base_file(arena)
    new = data[:700] + bytes(300)
    recs = [sk.entry(b"f", "f", s=1000, data="delta", bl=700, bs=1000),
            [records.COPY, 0, 1], [records.HOLE, 300],
            [records.END_FILE, 1000, hashlib.sha256(new).digest()]]
    restore(arena, recs, level=1)
    assert open(os.path.join(arena.root, "f"), "rb").read() == new


@pytest.mark.parametrize("hole", [301, 1 << 62])
def test_hole_past_the_declared_size_of_a_delta(arena, hole):
    data = _base_file(arena)
    recs = [sk.entry(b"f", "f", s=1000, data="delta", bl=700, bs=1000),
            [records.COPY, 0, 1], [records.HOLE, hole],
            [records.END_FILE, 1000, hashlib.sha256(data).digest()]]
    with pytest.raises(errors.IntegrityError):
        restore(arena, recs, level=1)
    assert open(os.path.join(arena.root, "f"), "rb").read() == data


def test_basis_size_mismatch(arena):
    data = _base_file(arena)
    recs = [sk.entry(b"f", "f", s=700, data="delta", bl=700, bs=5000),
            [records.COPY, 0, 1],
            [records.END_FILE, 700, hashlib.sha256(data[:700]).digest()]]
    with pytest.raises(errors.IntegrityError):
        restore(arena, recs, level=1)


def test_declared_size_far_larger_than_data(arena):
    data = b"small"
    for end_size in (10**12, len(data) + 1):
        recs = [sk.entry(b"big", "f", s=10**12, data="full"),
                [records.LITERAL, data],
                [records.END_FILE, end_size, hashlib.sha256(data).digest()]]
        with pytest.raises(errors.IntegrityError):
            restore(arena, recs)
        assert not os.path.exists(os.path.join(arena.root, "big"))


def test_data_longer_than_declared_size(arena):
    data = b"x" * 5000
    recs = [sk.entry(b"f", "f", s=10, data="full"), [records.LITERAL, data],
            [records.END_FILE, 5000, hashlib.sha256(data).digest()]]
    with pytest.raises(errors.IntegrityError):
        restore(arena, recs)
    assert listing(arena.root) == []


def test_literal_of_2_pow_63_is_refused_before_allocating(arena):
    huge = b"\x92\x03\xc6\xff\xff\xff\xff"   # [LITERAL, bin32 of 4 GiB]
    recs = [sk.entry(b"f", "f", s=1 << 62, data="full"), huge]
    with pytest.raises(errors.FormatError):
        restore(arena, recs)
    huge64 = b"\x92\x03\xcf" + (1 << 63).to_bytes(8, "big")   # uint, not bin
    with pytest.raises(errors.FormatError):
        restore(arena, [sk.entry(b"f", "f", s=1, data="full"), huge64])
    assert listing(arena.root) == []


def test_digest_mismatch_after_patch_keeps_the_old_file(arena):
    data = _base_file(arena, b"B" * 3000)
    recs = [sk.entry(b"f", "f", s=3000, data="delta", bl=700, bs=3000),
            [records.COPY, 0, 5],
            [records.END_FILE, 3000, hashlib.sha256(b"other").digest()]]
    with pytest.raises(errors.IntegrityError):
        restore(arena, recs, level=1)
    assert open(os.path.join(arena.root, "f"), "rb").read() == data
    assert listing(arena.root) == ["f"]


def test_duplicate_entries_for_one_path(arena):
    recs = sk.file_records(b"x", b"one") + sk.file_records(b"x", b"two")
    with pytest.raises(errors.CorruptRecordError):
        restore(arena, recs)
    assert open(os.path.join(arena.root, "x"), "rb").read() == b"one"


def test_delta_without_basis(arena):
    recs = [sk.entry(b"nobasis", "f", s=3, data="delta", bl=700, bs=3),
            [records.COPY, 0, 1],
            [records.END_FILE, 3, hashlib.sha256(b"abc").digest()]]
    with pytest.raises(errors.RestoreError):
        restore(arena, recs)
    assert listing(arena.root) == []


@pytest.mark.parametrize("recs", [
    [[records.LITERAL, b"stray"]],
    [[records.END_FILE, 0, sk.DIGEST_ZERO]],
    [[records.MANIFEST, sk.entry_map(b"m")]],
    [sk.entry(b"d", "d", data="full")],
    [sk.entry(b"f", "f", data="none")],
    [sk.entry(b"f", "f", s=3, data="full"), sk.entry(b"g", "f")],
    [sk.entry(b"l", "l")],
])
def test_records_out_of_place(arena, recs):
    with pytest.raises(errors.FormatError):
        restore(arena, recs)


def test_future_format_version(arena):
    data = bytearray(sk.encode(sk.file_records(b"f", b"x")))
    data[8:10] = (frames.VERSION + 1).to_bytes(2, "big")
    with pytest.raises(errors.UnsupportedVersionError):
        sk.restore_stream(arena.root, bytes(data))
    assert listing(arena.root) == []


def test_version_1_stream_restores_with_sha256(arena, monkeypatch):
    monkeypatch.setattr(frames, "VERSION", 1)
    data = sk.encode(sk.file_records(b"f", b"old format"))  # SHA-256
    monkeypatch.undo()
    assert data[8:10] == b"\x00\x01"
    sk.restore_stream(arena.root, data)
    with open(os.path.join(arena.root, "f"), "rb") as f:
        assert f.read() == b"old format"


def blake3_file(path: bytes, data: bytes, digest: bytes) -> list:
    return [sk.entry(path, "f", s=len(data), data="full"),
            [records.LITERAL, data], [records.END_FILE, len(data), digest]]


def test_blake3_digests_are_checked(arena):
    good = blake3.blake3(b"good").digest()
    sk.restore_stream(arena.root, sk.encode(blake3_file(b"f", b"good", good),
                                            dg="blake3"))
    # a digest of other data, and the right data's SHA-256 under "blake3"
    for digest in (good, hashlib.sha256(b"evil").digest()):
        with pytest.raises(errors.IntegrityError, match="blake3 digest"):
            sk.restore_stream(arena.root, sk.encode(
                blake3_file(b"f", b"evil", digest), dg="blake3"))
    with open(os.path.join(arena.root, "f"), "rb") as f:
        assert f.read() == b"good"


@pytest.mark.parametrize("name", ["md5", 3, None])
def test_unknown_digest_is_refused(arena, name):
    data = sk.encode(sk.file_records(b"f", b"x"), dg=name)
    with pytest.raises(errors.UnsupportedVersionError, match="file digest"):
        sk.restore_stream(arena.root, data)
    assert listing(arena.root) == []


def test_error_names_the_level(arena):
    with pytest.raises(errors.RestoreError, match="level 4 of crafted"):
        restore(arena, [sk.entry(b"h", "h", h=b"missing")], level=4)


def test_a_level_moved_to_another_place_is_refused(arena):
    level0 = sk.encode(sk.file_records(b"f", b"zero"), level=0)
    with pytest.raises(errors.IntegrityError, match="says it is level 0"):
        sk.restore_stream(arena.root, level0, level=1)
    assert listing(arena.root) == []
