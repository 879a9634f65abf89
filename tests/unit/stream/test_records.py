import dataclasses
import os

import msgpack
import pytest

from freezer_rsyncv2 import errors
from freezer_rsyncv2.fs import entry as fsentry
from freezer_rsyncv2.stream import entrymap, records


def make_entry(path=b"dir/file", kind=fsentry.KIND_FILE, **kw):
    fields = dict(path=path, kind=kind, mode=0o644, uid=0, gid=0,
                  uname="root", gname=None, size=10, mtime_ns=123,
                  atime_ns=456, ctime_ns=789, ino=5, dev=7, nlink=1)
    fields.update(kw)
    return fsentry.Entry(**fields)


def decode(*recs):
    return list(records.decode([b"".join(recs)]))


def stream(*body):
    return [records.begin({"level": 0}), *body, records.end({})]


def test_round_trip_every_record():
    e = make_entry(xattrs={b"user.a": b"\x00\x01"}, link_target=None)
    out = decode(*stream(
        records.entry(e, data=entrymap.DATA_DELTA, pn=b"old/name", bl=700,
                      bs=1400),
        records.literal(b"abc"), records.copy(0, 2), records.hole(4096),
        records.end_file(10, b"d" * 32), records.delete(b"gone"),
        records.manifest(e, dg=b"d" * 32, B=700, w=b"wwww", S=b"s" * 16),
        records.tombstone(b"gone2"),
        records.manifest(e, dg=b"d" * 32, B=700, sg=entrymap.SIG_DELTA),
        records.sig_blocks(3, b"w" * 8, b"s" * 32), records.sig_zero(9, 2)))
    assert [r[0] for r in out] == [
        records.BEGIN, records.ENTRY, records.LITERAL, records.COPY,
        records.HOLE, records.END_FILE, records.DELETE, records.MANIFEST,
        records.TOMBSTONE, records.MANIFEST, records.SIGBLOCKS,
        records.SIGZERO, records.END]
    assert out[10] == (records.SIGBLOCKS, 3, b"w" * 8, b"s" * 32)
    assert out[11] == (records.SIGZERO, 9, 2)
    _t, got, extra = out[1]
    # a data stream's ENTRY leaves out what only a manifest uses (version 4)
    assert got == dataclasses.replace(e, ctime_ns=0, ino=0, dev=0, nlink=0)
    assert out[7][1] == e       # the MANIFEST keeps them
    assert extra == {"data": "delta", "pn": b"old/name", "bl": 700,
                     "bs": 1400}
    assert out[3] == (records.COPY, 0, 2)


def test_non_utf8_path_survives():
    e = make_entry(path=b"caf\xe9/\xff\xfe")
    out = decode(*stream(records.entry(e)))
    assert out[1][1].path == b"caf\xe9/\xff\xfe"


@pytest.mark.parametrize("path", [
    b"/etc/passwd", b"../x", b"a/../../x", b"a//b", b"./a", b"a/.", b"",
    b"a\x00b", b"x" * 256, b"a/" * 2100])
def test_unsafe_paths_are_rejected(path):
    raw = records.pack([records.ENTRY, {**entrymap.entry_map(make_entry()),
                                        "p": path}])
    with pytest.raises((errors.UnsafePathError, errors.CorruptRecordError)):
        decode(*stream(raw))
    with pytest.raises((errors.UnsafePathError, errors.CorruptRecordError)):
        decode(*stream(records.pack([records.DELETE, path])))


@pytest.mark.parametrize("rec", [
    [records.COPY, -1, 1], [records.COPY, 0, 0], [records.COPY, 0, 1 << 63],
    [records.COPY, "0", 1], [records.HOLE, 0], [records.HOLE, -5],
    [records.LITERAL, b""], [records.LITERAL, "text"],
    [records.END_FILE, 1, b"short"], [99, 1], [], "notalist",
    [records.COPY, 0, 1, 2], [records.ENTRY, "x"],
    [records.ENTRY, {"p": b"a", "k": "f"}],
    [records.ENTRY, {**entrymap.entry_map(make_entry()), "k": "z"}],
    [records.ENTRY, {**entrymap.entry_map(make_entry()), "m": True}],
    [records.ENTRY, {**entrymap.entry_map(make_entry()), "zz": 1}],
    [records.ENTRY, {**entrymap.entry_map(make_entry()), "data": "evil"}],
    [records.ENTRY, {**entrymap.entry_map(make_entry()), "s": -1}],
    [records.ENTRY, {**entrymap.entry_map(make_entry()), "x": {b"": b"v"}}],
    [records.SIGBLOCKS, 0, b"", b""],
    [records.SIGBLOCKS, 0, b"www", b"s" * 16],
    [records.SIGBLOCKS, 0, b"wwww", b"s" * 15],
    [records.SIGBLOCKS, -1, b"wwww", b"s" * 16],
    [records.SIGBLOCKS, 0, b"w" * 4 * (records.MAX_SIG_RUN + 1),
     b"s" * 16 * (records.MAX_SIG_RUN + 1)],
    [records.SIGBLOCKS, 0, "wwww", b"s" * 16],
    [records.SIGBLOCKS, 0, b"wwww"],
    [records.SIGZERO, 0, 0], [records.SIGZERO, -1, 1],
    [records.SIGZERO, 0, 1 << 63],
])
def test_malformed_records_are_rejected(rec):
    with pytest.raises(errors.FormatError):
        decode(*stream(records.pack(rec)))


def test_stream_must_open_with_begin_and_close_with_end():
    with pytest.raises(errors.CorruptRecordError):
        decode(records.literal(b"x"), records.end({}))
    with pytest.raises(errors.TruncatedError):
        decode(records.begin({}), records.literal(b"x"))
    with pytest.raises(errors.CorruptRecordError):
        decode(*stream(), records.literal(b"x"))
    with pytest.raises(errors.CorruptRecordError):
        decode(*stream(records.begin({})))
    with pytest.raises(errors.CorruptRecordError):
        decode(*stream(), b"\x92")


def test_any_chunking_decodes_the_same():
    data = b"".join(stream(records.literal(b"y" * 100000),
                           records.copy(3, 4)))
    for size in (1, 3, 1000):
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        assert [r[0] for r in records.decode(chunks)] == [
            records.BEGIN, records.LITERAL, records.COPY, records.END]


def test_oversized_literal_is_refused():
    big = msgpack.packb([records.LITERAL, b"z" * (records.MAX_LITERAL * 3)],
                        use_bin_type=True)
    with pytest.raises(errors.FormatError):
        decode(*stream(big))


@pytest.mark.parametrize("size", [1, 255, 256, 65535, 65536, records.MAX_LITERAL])
def test_literal_head_is_the_start_of_a_literal_record(size):
    data = os.urandom(size)
    assert records.literal_head(size) + data == records.literal(data)


def _mixed_stream():
    e = make_entry()
    body = [records.entry(e, data=entrymap.DATA_FULL)]
    for size in (1, 255, 256, 65535, 65536, records.MAX_LITERAL):
        body.append(records.literal(os.urandom(size)))
    body += [records.copy(3, 4), records.hole(4096),
             records.end_file(10, b"d" * 32)]
    return stream(*body)


def test_every_chunking_gives_the_same_records():
    recs = _mixed_stream()
    expected = decode(*recs)
    data = b"".join(recs)
    for size in (1, 2, 7, 300, 513, 4096, 65537, 1 << 20, len(data)):
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        got = list(records.decode(chunks))
        assert [(r[0], bytes(r[1]) if r[0] == records.LITERAL else r[1:])
                for r in got] == \
            [(r[0], bytes(r[1]) if r[0] == records.LITERAL else r[1:])
             for r in expected]


def test_literal_inside_one_plaintext_is_a_view_not_a_copy():
    data = os.urandom(70000)
    plain = b"".join(stream(records.literal(data)))
    lit = list(records.decode([plain]))[1]
    assert isinstance(lit[1], memoryview) and lit[1].obj is plain
    assert lit[1].readonly and bytes(lit[1]) == data


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7, 100])
def test_record_cut_short_is_truncated(cut):
    recs = stream(records.literal(os.urandom(1000)))
    body = b"".join(recs[:2])
    with pytest.raises(errors.TruncatedError):
        list(records.decode([body[:len(body) - cut]]))


def test_over_long_record_is_refused_without_reading_it_all():
    # an ENTRY-like map that claims to go on and on
    huge = b"\x92\x02\xdf\xff\xff\xff\xff" + b"\xa1a\x01" * 600000
    with pytest.raises(errors.FormatError):
        list(records.decode([records.begin({"level": 0}), huge]))


# -- integer ranges (hostile storage, round 2, finding 3) ---------------------

def test_every_integer_field_has_bounds():
    ints = {k for k, (_a, typ, _r) in entrymap._ENTRY_FIELDS.items()
            if typ is int}
    ints |= {k for k, typ in entrymap._EXTRA_FIELDS.items() if typ is int}
    assert ints == set(entrymap.INT_BOUNDS)


OUT_OF_RANGE = [
    ("m", -1), ("m", 0o10000), ("m", 0o100644), ("m", 1 << 32),
    ("u", -1), ("u", (1 << 32) - 1), ("u", 1 << 32), ("u", (1 << 63) - 1),
    ("g", -1), ("g", (1 << 32) - 1), ("g", 1 << 32),
    ("s", -1), ("s", 1 << 63),
    ("mt", -(1 << 63) - 1), ("mt", 1 << 64), ("at", 1 << 64),
    ("ct", -(1 << 64)),
    ("i", -1), ("i", 1 << 64), ("d", -1), ("n", -1), ("n", 1 << 64),
    ("rd", -1), ("rd", 1 << 32), ("rd", (1 << 63) - 1),
    ("bl", 0), ("bl", -1), ("bl", (1 << 24) + 1), ("bl", 1 << 62),
    ("bs", -1), ("bs", 1 << 63),
    ("B", 0), ("B", -700), ("B", (1 << 24) + 1),
]


@pytest.mark.parametrize("key,value", OUT_OF_RANGE)
def test_out_of_range_integers_are_refused_by_name(key, value):
    m = {**entrymap.entry_map(make_entry()), key: value}
    with pytest.raises(errors.CorruptRecordError) as exc:
        entrymap.entry_from_map(m)
    assert type(exc.value) is errors.CorruptRecordError
    shown = ("%#o" % value) if key == "m" else str(value)
    assert repr(key) in str(exc.value) and shown in str(exc.value)


@pytest.mark.parametrize("key,value", [
    (k, v) for k, v in OUT_OF_RANGE
    if -(1 << 63) <= v < 1 << 64])          # what msgpack can carry
def test_out_of_range_integers_are_refused_in_a_stream(key, value):
    for rtype in (records.ENTRY, records.MANIFEST):
        raw = records.pack([rtype, {**entrymap.entry_map(make_entry()),
                                    key: value}])
        with pytest.raises(errors.CorruptRecordError, match=repr(key)):
            decode(*stream(raw))


@pytest.mark.parametrize("key,value", [
    ("m", 0), ("m", 0o7777), ("u", 0), ("u", (1 << 32) - 2),
    ("g", (1 << 32) - 2), ("g", 1 << 31), ("s", (1 << 63) - 1),
    ("mt", -(1 << 63)), ("mt", (1 << 64) - 1), ("mt", -1),
    ("at", (1 << 64) - 1), ("ct", -(1 << 63)),
    ("i", (1 << 64) - 1), ("d", (1 << 64) - 1), ("n", (1 << 64) - 1),
    ("rd", 0), ("rd", (1 << 32) - 1),
    ("bl", 1), ("bl", 1 << 24), ("bs", 0), ("bs", (1 << 63) - 1),
    ("B", 1), ("B", 1 << 24),
])
def test_integers_at_the_bounds_are_taken(key, value):
    raw = records.pack([records.MANIFEST, {**entrymap.entry_map(make_entry()),
                                           key: value}])
    rec = decode(*stream(raw))[1]
    attr = entrymap._ENTRY_FIELDS.get(key, (None,))[0]
    got = rec[2][key] if attr is None else getattr(rec[1], attr)
    assert got == value


def test_bool_is_no_integer():
    for key in entrymap.INT_BOUNDS:
        with pytest.raises(errors.CorruptRecordError):
            entrymap.entry_from_map({**entrymap.entry_map(make_entry()),
                                    key: True})


# -- nothing after END, checked before END is handed on (finding 4) ----------

@pytest.mark.parametrize("tail", [
    records.delete(b"x"), records.end({}), b"\x00", b"\xc1",
    records.literal(b"z" * 70000)])
@pytest.mark.parametrize("size", [1, 5, 64, None])
def test_a_consumer_stopping_at_end_still_sees_trailing_data(tail, size):
    """A restore returns at END and never resumes the decoder: the check
    must run before END comes out, whatever the frame boundaries."""
    data = b"".join(stream(records.delete(b"a"))) + tail
    if size is None:        # the tail in a plaintext of its own
        plains = [data[:-len(tail)], b"", tail]
    else:
        plains = [data[i:i + size] for i in range(0, len(data), size)]
    seen = []
    with pytest.raises(errors.CorruptRecordError, match="after END"):
        for rec in records.decode(plains):
            seen.append(rec[0])
            if rec[0] == records.END:
                break
    assert seen == [records.BEGIN, records.DELETE]


def test_empty_plaintexts_after_end_are_fine():
    data = b"".join(stream(records.delete(b"a")))
    assert [r[0] for r in records.decode([data, b"", b""])] == [
        records.BEGIN, records.DELETE, records.END]


def test_errors_of_the_frames_after_end_come_out_before_end():
    def plains():
        yield b"".join(stream())
        raise errors.TruncatedError("no final frame")
    with pytest.raises(errors.TruncatedError):
        for rec in records.decode(plains()):
            assert rec[0] != records.END
