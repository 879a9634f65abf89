"""Integers a restore's system calls cannot take are refused when decoded.

Hostile storage, round 2, finding 3: a uid of 2**32, a negative mode or
rdev and the like came out of a restore as a bare OverflowError (or, for
uid -1, silently meant "leave the owner alone").  Each must now be a
CorruptRecordError naming the field and the value, before anything is
written for the record.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from freezer_rsyncv2 import errors
from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2.stream import compression, encoder, frames, records
from tests.hostile import streamkit as sk

OLD = b"old content"

BAD = [
    ("u", 1 << 32), ("u", (1 << 32) - 1), ("u", -1), ("u", (1 << 63) - 1),
    ("g", 1 << 32), ("g", -1), ("g", (1 << 64) - 1),
    ("m", -1), ("m", 0o10000), ("m", 0o170644), ("m", 1 << 40),
    ("rd", -1), ("rd", 1 << 32), ("rd", -(1 << 63)),
    ("i", -1), ("d", -1), ("n", -1), ("s", -1),
]


def _file(path: bytes, data: bytes, fields: dict) -> list:
    """An honest file but for ``fields`` (which may override its size)."""
    recs = sk.file_records(path, data)
    recs[0][1].update(fields)
    return recs


#: level-1 records for one object, with ``fields`` on its entry
CASES = {
    "new file": lambda f: _file(b"new", b"data", f),
    "rewrite": lambda f: _file(b"keep", b"rewritten", f),
    "meta": lambda f: [sk.entry(b"keep", "f", data="meta",
                                **{"s": len(OLD), **f})],
    "dir": lambda f: [sk.entry(b"new", "d", **f)],
    "fifo": lambda f: [sk.entry(b"new", "p", **f)],
    "symlink": lambda f: [sk.entry(b"new", "l", l=b"keep", **f)],
    "device": lambda f: [sk.entry(b"new", "c", **{"rd": 0x0103, **f})],
    "hardlink": lambda f: [sk.entry(b"new", "h", h=b"keep", **f)],
}


def _level0(arena):
    sk.restore_stream(arena.root, sk.encode(sk.file_records(b"keep", OLD)))
    return os.stat(os.path.join(arena.root, "keep"))


def _unchanged(arena, before):
    assert sorted(os.listdir(arena.root)) == ["keep"]
    path = os.path.join(arena.root, "keep")
    with open(path, "rb") as f:
        assert f.read() == OLD
    st = os.stat(path)
    assert (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns) == \
        (before.st_mode, before.st_uid, before.st_gid, before.st_mtime_ns)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("key,value", BAD)
def test_out_of_range_integer_is_a_corrupt_record(arena, case, key, value):
    before = _level0(arena)
    data = sk.encode(CASES[case]({key: value}), level=1)
    with pytest.raises(errors.Rsyncv2Error) as exc:
        sk.restore_stream(arena.root, data, level=1)
    assert type(exc.value) is errors.CorruptRecordError, exc.value
    shown = ("%#o" % value) if key == "m" else str(value)
    message = str(exc.value)
    assert message.startswith("level 1 of crafted: ")
    assert "field %r out of range: %s" % (key, shown) in message
    _unchanged(arena, before)


@pytest.mark.parametrize("fields", [
    {"bl": 0}, {"bl": -1}, {"bl": (1 << 24) + 1}, {"bl": (1 << 63) - 1},
    {"bs": -1}, {"bs": 1 << 63}])
def test_basis_block_length_and_size_out_of_range(arena, fields):
    before = _level0(arena)
    recs = [sk.entry(b"keep", "f", s=len(OLD), data="delta",
                     **{"bl": 700, "bs": len(OLD), **fields}),
            [records.COPY, 0, 1],
            [records.END_FILE, len(OLD), hashlib.sha256(OLD).digest()]]
    with pytest.raises(errors.Rsyncv2Error) as exc:
        sk.restore_stream(arena.root, sk.encode(recs, level=1), level=1)
    assert type(exc.value) is errors.CorruptRecordError
    key, value = next(iter(fields.items()))
    assert "field %r out of range: %d" % (key, value) in str(exc.value)
    _unchanged(arena, before)


@pytest.mark.parametrize("fields", [
    {"mt": (1 << 64) - 1, "at": -(1 << 63)},
    {"mt": -(1 << 63), "at": (1 << 64) - 1, "ct": (1 << 64) - 1},
    {"mt": -1, "at": 0},
    {"u": (1 << 32) - 2, "g": (1 << 31), "m": 0o7777},
    {"i": (1 << 64) - 1, "d": (1 << 64) - 1, "n": (1 << 64) - 1}])
@pytest.mark.parametrize("case", ["new file", "dir", "symlink", "fifo"])
def test_integers_inside_the_bounds_restore(arena, case, fields):
    """Times: os.utime takes all msgpack carries; honest files may predate
    1970 or postdate 2262; ino/dev/nlink are 64-bit and only kept."""
    sk.restore_stream(arena.root, sk.encode(CASES[case](fields)))
    assert os.path.lexists(os.path.join(arena.root, "new"))


def _manifest(tmp_path, fields):
    enc = encoder.StreamEncoder(frames.KIND_MANIFEST,
                                compression.by_name("none"))
    m = {**sk.entry_map(b"a", s=10), "dg": b"d" * 32, **fields}
    path = str(tmp_path / "manifest")
    with open(path, "wb") as f:
        for rec in (records.begin({"level": 0}),
                    records.pack([records.MANIFEST, m]), records.end({})):
            f.write(b"".join(enc.write(rec)))
        f.write(b"".join(enc.close()))
    return path


@pytest.mark.parametrize("fields", [
    {"B": 0}, {"B": -1}, {"B": (1 << 24) + 1},
    {"B": (1 << 63) - 1, "w": b"w" * 4, "S": b"s" * 16},
    {"B": 1 << 40, "sg": "f"}, {"u": 1 << 32}, {"m": -1}, {"rd": -1},
    {"s": -1}])
def test_manifest_integers_out_of_range(tmp_path, fields):
    path = _manifest(tmp_path, fields)
    with pytest.raises(errors.Rsyncv2Error) as exc:
        list(mf.overlay([path]))
    assert type(exc.value) is errors.CorruptRecordError
    assert "out of range" in str(exc.value)


def test_manifest_block_length_at_the_bounds(tmp_path):
    for block_len in (1, 1 << 24):
        path = _manifest(tmp_path, {"B": block_len, "sg": "f"})
        [me] = list(mf.overlay([path]))
        assert me.block_len == block_len
