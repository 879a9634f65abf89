"""Truncated, flipped and random streams: only library errors, nothing escapes.

``FUZZ_EXAMPLES`` (environment) raises the number of hypothesis examples
for a longer run; CI keeps the default small.
"""

import hashlib
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freezer_rsyncv2 import errors
from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2.stream import compression, encoder, entrymap, frames, records
from tests.hostile import streamkit as sk

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=list(HealthCheck))


def honest_level():
    recs = [sk.entry(b"d", "d")]
    recs += sk.file_records(b"d/a.txt", b"alpha" * 50)
    recs += sk.file_records(b"b.bin", os.urandom(3000))
    recs += [sk.entry(b"ln", "l", l=b"d/a.txt"), sk.entry(b"fifo", "p")]
    recs += sk.file_records(b"empty", b"")
    return sk.encode(recs)


def assert_consistent(root):
    """No temp file left; every file present is complete."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            assert not name.startswith(".rsyncv2-tmp-"), name
    a = os.path.join(root, "d", "a.txt")
    if os.path.exists(a):
        assert open(a, "rb").read() == b"alpha" * 50


def test_truncation_at_every_byte(arena):
    data = honest_level()
    for cut in range(len(data)):
        with pytest.raises(errors.FormatError):
            sk.restore_stream(arena.root, data[:cut], chunk=97)
        assert_consistent(arena.root)
    sk.restore_stream(arena.root, data)     # the whole stream still works
    assert open(os.path.join(arena.root, "d/a.txt"), "rb").read() == \
        b"alpha" * 50


def test_truncation_at_every_record_boundary(arena):
    recs = [sk.entry(b"d", "d")] + sk.file_records(b"d/a.txt", b"alpha" * 50)
    packed = [records.pack(r) for r in recs]
    for n in range(len(packed) + 1):
        data = sk.encode(packed[:n], end=False)
        with pytest.raises(errors.TruncatedError):
            sk.restore_stream(arena.root, data)
        assert_consistent(arena.root)


def test_every_byte_flip(arena):
    data = honest_level()
    step = max(1, len(data) // 400)
    for i in range(0, len(data), step):
        bad = bytearray(data)
        bad[i] ^= 0x5A
        with pytest.raises(errors.Rsyncv2Error):
            sk.restore_stream(arena.root, bytes(bad))
        assert_consistent(arena.root)


paths = st.sampled_from([b"a", b"d", b"d/a.txt", b"b.bin", b"ln/x", b"..",
                         b"/abs", b"ln", b"d/../x", b"fifo", b"a/b/c"])
kinds = st.sampled_from(["f", "d", "l", "p", "c", "b", "h", "z"])
#: Integers at the edges of every C type a restore hands them to (int,
#: uid_t, mode_t, dev_t, off_t, time_t in ns) and of our own bounds, from
#: both sides, and anything msgpack can carry (int64 .. uint64).
EDGES = sorted({v for base in (0, 0o7777, 1 << 20, 1 << 24, 1 << 31, 1 << 32,
                               1 << 62, 1 << 63, 1 << 64)
                for v in (base - 2, base - 1, base, base + 1, -base)
                if -(1 << 63) <= v < 1 << 64})
ints = st.one_of(st.integers(-2, 5000), st.sampled_from(EDGES),
                 st.integers(-(1 << 63), (1 << 64) - 1))
#: every integer key of an entry map (entrymap.INT_BOUNDS checks the list)
INT_KEYS = ["m", "u", "g", "s", "mt", "at", "ct", "i", "d", "n", "rd",
            "bl", "bs"]
entry_fields = st.fixed_dictionaries(
    {"p": paths, "k": kinds},
    optional={**{key: ints for key in INT_KEYS},
              "l": paths, "h": paths, "pn": paths,
              "data": st.sampled_from(["none", "full", "delta", "meta", "x"]),
              "x": st.dictionaries(st.sampled_from([b"user.a", b"trusted.b",
                                                    b"security.c"]),
                                   st.binary(max_size=8), max_size=2)})
record = st.one_of(
    entry_fields.map(lambda m: [records.ENTRY, {"u": 0, "g": 0, "at": 0,
                                                "mt": 0, "s": 0, "m": 0o644,
                                                **m}]),
    st.binary(min_size=1, max_size=64).map(lambda b: [records.LITERAL, b]),
    st.tuples(ints, ints).map(lambda t: [records.COPY, *t]),
    ints.map(lambda n: [records.HOLE, n]),
    st.tuples(ints, st.binary(min_size=32, max_size=32)).map(
        lambda t: [records.END_FILE, *t]),
    paths.map(lambda p: [records.DELETE, p]),
)


def test_the_fuzz_covers_every_integer_field():
    # "B" and "o" belong to manifests (an ENTRY with them is refused: tests/unit/stream/test_format_v4.py)
    assert set(INT_KEYS) | {"B", "o"} == set(entrymap.INT_BOUNDS)
    for edge in (1 << 31, 1 << 32, (1 << 32) - 1, 1 << 63, (1 << 63) - 1,
                 (1 << 64) - 1, -(1 << 63), -1, 0o10000, (1 << 24) + 1):
        assert edge in EDGES


@FUZZ
@given(st.lists(record, max_size=12))
def test_random_records(tmp_path_factory, recs):
    top = tmp_path_factory.mktemp("fuzz")
    sentinel = top / "sentinel"
    sentinel.mkdir()
    (sentinel / "s.txt").write_bytes(b"s")
    root = top / "restore"
    root.mkdir()
    # a first honest level gives deltas and links something to aim at
    sk.restore_stream(str(root), honest_level())
    before = sk.tree_state(str(sentinel))
    try:
        sk.restore_stream(str(root), sk.encode(recs, level=1), level=1)
    except errors.Rsyncv2Error:
        pass
    assert sk.tree_state(str(sentinel)) == before
    assert sorted(os.listdir(top)) == ["restore", "sentinel"]
    shutil.rmtree(top)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_after_a_valid_header(tmp_path_factory, tail):
    root = tmp_path_factory.mktemp("fuzzbytes")
    head = sk.encode([])[:15]
    try:
        sk.restore_stream(str(root), head + tail)
    except errors.Rsyncv2Error:
        pass
    shutil.rmtree(root)


def test_honest_stream_digest_sanity():
    # guards the kit itself: an honest file restores to its content
    recs = sk.file_records(b"x", b"abc")
    assert recs[-1][2] == hashlib.sha256(b"abc").digest()


#: One object as a backup writes it (so that it reaches the system calls
#: that apply it), with a few integer fields of its entry replaced: the
#: class of bug where a value decodes but a restore cannot take it.
OBJECTS = {
    "file": lambda f: [sk.entry(b"new", "f", **{"s": 3, "data": "full",
                                                **f}),
                       [records.LITERAL, b"new"],
                       [records.END_FILE, 3, hashlib.sha256(b"new").digest()]],
    "meta": lambda f: [sk.entry(b"b.bin", "f", **{"s": 3000, "data": "meta",
                                                  **f})],
    "delta": lambda f: [sk.entry(b"d/a.txt", "f", **{
        "s": 250, "data": "delta", "bl": 700, "bs": 250, **f}),
        [records.COPY, 0, 1],
        [records.END_FILE, 250, hashlib.sha256(b"alpha" * 50).digest()]],
    "dir": lambda f: [sk.entry(b"newdir", "d", **f)],
    "symlink": lambda f: [sk.entry(b"newln", "l", l=b"b.bin", **f)],
    "fifo": lambda f: [sk.entry(b"newfifo", "p", **f)],
    "device": lambda f: [sk.entry(b"newdev", "c", **{"rd": 0x0103, **f})],
    "hardlink": lambda f: [sk.entry(b"newlink", "h", h=b"b.bin", **f)],
}


#: one field at a time gets an edge or a wide value (several at once would
#: mostly be refused for the first one met), the others a value in range
hostile_fields = st.lists(st.tuples(
    st.sampled_from(INT_KEYS),
    st.one_of(st.sampled_from(EDGES), st.integers(-(1 << 63), (1 << 64) - 1))),
    min_size=1, max_size=3, unique_by=lambda t: t[0])
fair_fields = st.lists(
    st.sampled_from(INT_KEYS).flatmap(lambda key: st.tuples(st.just(key), st.integers(*entrymap.INT_BOUNDS[key]))),
    max_size=2).map(dict)


@FUZZ
@given(hostile_fields, fair_fields)
def test_random_integers_in_honest_entries(tmp_path_factory, hostile, fair):
    """Each hostile field is tried on every kind of object, each in a level
    of its own: a field only some kinds use (rd) is tried on those too."""
    top = tmp_path_factory.mktemp("fuzzints")
    sentinel = top / "sentinel"
    sentinel.mkdir()
    (sentinel / "s.txt").write_bytes(b"s")
    root = top / "restore"
    sk.restore_stream(str(root), honest_level())
    before = sk.tree_state(str(sentinel))
    for key, value in hostile:
        for obj in sorted(OBJECTS):
            recs = OBJECTS[obj]({**fair, key: value})
            try:
                sk.restore_stream(str(root), sk.encode(recs, level=1),
                                  level=1)
            except errors.Rsyncv2Error:
                pass
            assert sk.tree_state(str(sentinel)) == before
            assert sorted(os.listdir(top)) == ["restore", "sentinel"]
            assert_consistent(str(root))
    shutil.rmtree(top)


sig_record = st.one_of(
    st.tuples(ints, st.integers(1, 40)).map(
        lambda t: records.sig_blocks(t[0], b"w" * 4 * t[1], b"s" * 16 * t[1])),
    st.tuples(ints, ints).map(lambda t: records.pack([records.SIGZERO, *t])),
)
manifest_head = st.tuples(
    st.sampled_from([b"a", b"b", b"c"]), ints, ints,
    st.sampled_from(["f", "d", "x", None]),
    st.dictionaries(st.sampled_from(INT_KEYS), ints, max_size=2)).map(
    lambda t: records.pack([records.MANIFEST, {
        "p": t[0], "k": "f", "m": 0o644, "u": 0, "g": 0, "mt": 0, "at": 0,
        **t[4], "s": t[1], "B": t[2], "dg": b"d" * 32,
        **({"sg": t[3]} if t[3] else {})}]))


@FUZZ
@given(st.lists(st.lists(st.one_of(manifest_head, sig_record), max_size=6),
                min_size=1, max_size=3))
def test_random_manifest_chains(tmp_path_factory, levels):
    """Crafted manifests: only typed errors, from reading or from building
    the signatures a next level would match against."""
    top = tmp_path_factory.mktemp("fuzzmanifest")
    paths = []
    for level, recs in enumerate(levels):
        enc = encoder.StreamEncoder(frames.KIND_MANIFEST,
                                    compression.by_name("none"))
        body = [records.begin({"level": level}), *recs, records.end({})]
        path = str(top / ("m%d" % level))
        with open(path, "wb") as f:
            for rec in body:
                f.write(b"".join(enc.write(rec)))
            f.write(b"".join(enc.close()))
        paths.append(path)
    try:
        for me in mf.overlay(paths):
            if me.has_signature:
                me.signature()
    except errors.Rsyncv2Error:
        pass
    shutil.rmtree(top)
