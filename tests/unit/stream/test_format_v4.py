"""Format version 4: prefix-coded paths, change entries, the frame index; refused where they do not belong."""

import dataclasses
import os
import random

import pytest

from freezer_rsyncv2 import errors
from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2 import manifest_writer as mw
from freezer_rsyncv2.fs import entry as fsentry
from freezer_rsyncv2.stream import compression, encoder, entrymap, frames, records


def entry(path, kind=fsentry.KIND_FILE, **kw):
    fields = dict(path=path, kind=kind, mode=0o644, uid=1000, gid=1000, uname="u", gname="g", size=5,
                  mtime_ns=1_700_000_000_123_456_789, atime_ns=1_700_000_000_123_456_789,
                  ctime_ns=1_700_000_001_000_000_000, ino=42, dev=7, nlink=1)
    fields.update(kw)
    return fsentry.Entry(**fields)


def stream(*recs, version=frames.VERSION):
    """Records as a decoder sees them, with BEGIN and END around."""
    return [records.begin({"level": 0}), *recs, records.end({})], {"version": version}


def decoded(*recs, version=frames.VERSION):
    plain, info = stream(*recs, version=version)
    return list(records.decode([b"".join(plain)], info))[1:-1]


def manifest_rec(m):
    return records.pack([records.MANIFEST, m])


# -- records -------------------------------------------------------------------

def test_a_path_shares_its_prefix_with_the_one_before():
    a = entrymap.entry_map(entry(b"dir/sub/a.txt"))
    b = {"pp": 8, **entrymap.entry_map(entry(b"b.txt"))}
    recs = decoded(manifest_rec(a), manifest_rec(b), records.tombstone(b"dir/sub/c"),
                   manifest_rec({"pp": 8, **entrymap.entry_map(entry(b"d"))}))
    assert [r[1].path if r[0] == records.MANIFEST else r[1] for r in recs] == \
        [b"dir/sub/a.txt", b"dir/sub/b.txt", b"dir/sub/c", b"dir/sub/d"]


@pytest.mark.parametrize("shared", [0, 14, -1, True, "3"])
def test_a_prefix_longer_than_the_path_before_or_not_a_count_is_refused(shared):
    a = entrymap.entry_map(entry(b"dir/sub/a.txt"))
    b = {"pp": shared, **entrymap.entry_map(entry(b"b.txt"))}
    with pytest.raises(errors.CorruptRecordError):
        decoded(manifest_rec(a), manifest_rec(b))


def test_a_prefix_cannot_make_an_unsafe_path():
    a = entrymap.entry_map(entry(b"dir"))
    b = {"pp": 3, **entrymap.entry_map(entry(b"x"))}
    b["p"] = b"/../../etc/passwd"
    with pytest.raises(errors.UnsafePathError):
        decoded(manifest_rec(a), manifest_rec(b))


@pytest.mark.parametrize("key,value", [("pp", 1), ("o", 5), ("da", "full"), ("dm", True)])
def test_version_4_keys_are_refused_in_a_version_3_manifest(key, value):
    m = entrymap.entry_map(entry(b"a"), {"sg": "f", "B": 4096} if key == "da" else {})
    m[key] = value
    with pytest.raises(errors.CorruptRecordError, match="unknown field"):
        decoded(manifest_rec(entrymap.entry_map(entry(b"a0"))), manifest_rec(m), version=3)


@pytest.mark.parametrize("key,value", [("o", 5), ("da", "full"), ("dm", True)])
def test_manifest_keys_are_refused_in_a_data_stream_entry(key, value):
    m = entrymap.entry_map(entry(b"a"), {"data": "meta"})
    m[key] = value
    with pytest.raises(errors.CorruptRecordError, match="unknown field"):
        decoded(records.pack([records.ENTRY, m]))


def test_frames_records_are_refused_before_version_4():
    rec = next(records.frame_runs(20, [100], [1 << 20]))
    assert decoded(rec)[0][:3] == (records.FRAMES, 20, 0)
    with pytest.raises(errors.CorruptRecordError, match="unknown record type 13"):
        decoded(rec, version=3)


@pytest.mark.parametrize("stored,plain", [(b"", b""), (b"\0" * 4, b"\0" * 8), (b"\0" * 3, b"\0" * 3)])
def test_malformed_frames_records_are_refused(stored, plain):
    with pytest.raises(errors.CorruptRecordError, match="FRAMES"):
        decoded(records.pack([records.FRAMES, 20, 0, stored, plain]))


def test_a_change_entry_names_only_what_changed_and_is_completed_from_below():
    below = entry(b"a", xattrs={b"user.k": b"v"})
    now = dataclasses.replace(below, mode=0o600, mtime_ns=below.mtime_ns + 1, xattrs={})
    below_map = entrymap.entry_map(below)
    assert entrymap.change_map(now, below_map) is None       # cannot say "no xattrs any more"
    now.xattrs = {b"user.k": b"w"}
    m = entrymap.change_map(now, below_map)
    assert set(m) == {"p", "k", "m", "mt", "x", "dm"}
    (rec,) = decoded(manifest_rec(m))
    assert rec[2]["dm"] == {"p", "k", "m", "mt", "x"}
    assert entrymap.merge_changes(below, rec[1], rec[2]["dm"]) == now
    other = entry(b"a", kind=fsentry.KIND_DIR)
    assert entrymap.change_map(other, below_map) is None


@pytest.mark.parametrize("extra", [{"sg": "f", "B": 4096}, {"dm": 1}])
def test_a_malformed_change_entry_is_refused(extra):
    m = {"p": b"a", "k": "f", "dm": True, **extra}
    with pytest.raises(errors.CorruptRecordError):
        decoded(manifest_rec(m))


def test_a_change_entry_still_needs_its_path_and_kind():
    with pytest.raises(errors.CorruptRecordError, match="lacks field 'k'"):
        decoded(manifest_rec({"p": b"a", "dm": True, "m": 0o600}))


# -- manifests -----------------------------------------------------------------

def test_manifest_round_trip_with_changes_prefixes_late_records_and_frames(tmp_path):
    zero = str(tmp_path / "m0")
    w = mw.ManifestWriter(zero, compression.by_name("zstd"))
    olds = [entry(b"d", kind=fsentry.KIND_DIR), entry(b"d/a.txt"), entry(b"d/b.txt"), entry(b"e.txt")]
    for at, e in enumerate(olds):
        w.add(mf.ManifestEntry(e), at=at * 100)
    w.close()
    one = str(tmp_path / "m1")
    w = mw.ManifestWriter(one, compression.by_name("zstd"), level=1)
    touched = dataclasses.replace(olds[1], mtime_ns=5)
    w.add(mf.ManifestEntry(touched), at=10, below=entrymap.entry_map(olds[1]))
    w.add(mf.ManifestEntry(entry(b"z-new")), at=30, late=True)
    w.tombstone(b"e.txt")
    table = frames.FrameTable(15)
    table.add(1000, 1 << 20)
    table.add(10, 3)
    w.frames = table
    w.close()
    index = []
    recs = list(mf.read(one, index=index))
    assert [r[1].path if r[0] == records.MANIFEST else r[1] for r in recs] == [b"d/a.txt", b"e.txt", b"z-new"]
    assert recs[0][2]["dm"] == {"p", "k", "mt"} and recs[0][2]["o"] == 10
    assert index[0].header_len == 15 and list(index[0].stored) == [1000, 10]
    assert list(index[0].plain) == [1 << 20, 3]
    tree = {me.entry.path: me.entry for me in mf.overlay([zero, one])}
    assert tree == {b"d": olds[0], b"d/a.txt": touched, b"d/b.txt": olds[2], b"z-new": entry(b"z-new")}
    # A change entry over nothing is corrupt in a whole chain, unknown in a part of one.
    with pytest.raises(errors.CorruptRecordError, match="no entry of its kind below"):
        list(mf.overlay([one]))
    assert [me.entry.path for me in mf.overlay([one], whole_chain=False)] == [b"z-new"]


def test_a_level_of_touched_files_is_small(tmp_path):
    """Every file touched (new times): change entries cost a fraction of whole ones."""
    rng = random.Random(5)
    olds = [entry(f"project/src/pkg_{i // 50:03d}/module_{i:05d}.py".encode(), ino=rng.getrandbits(24),
                  size=rng.randrange(200, 40000), mtime_ns=1_600_000_000 * 10**9 + rng.getrandbits(40),
                  ctime_ns=1_600_000_000 * 10**9 + rng.getrandbits(40)) for i in range(5000)]
    now = [dataclasses.replace(e, mtime_ns=e.mtime_ns + rng.getrandbits(36), ctime_ns=e.ctime_ns + rng.getrandbits(36),
                               atime_ns=e.atime_ns + rng.getrandbits(36)) for e in olds]
    sizes = {}
    for name, below in (("whole", None), ("changes", olds)):
        path = str(tmp_path / name)
        w = mw.ManifestWriter(path, compression.by_name("zstd"), level=1)
        for i, e in enumerate(now):
            w.add(mf.ManifestEntry(e), at=i * 50, below=None if below is None else entrymap.entry_map(below[i]))
        w.close()
        sizes[name] = os.path.getsize(path)
    assert sizes["changes"] < 0.8 * sizes["whole"], sizes     # 0.75 when written


# -- the frame index -----------------------------------------------------------

def test_frame_table_spans_and_reads_from_the_middle():
    enc = encoder.StreamEncoder(frames.KIND_DATA, compression.by_name("zstd"))
    plain = [os.urandom(300_000) for _ in range(12)]
    stored = b"".join(b"".join(enc.write(p)) for p in plain) + b"".join(enc.close())
    table = enc.table
    joined = b"".join(plain)
    assert table.plain_size == len(joined) and len(table) >= 3
    at = 2_000_000
    first, plain_at, stored_at, stored_len = table.span(at, at + 10)
    assert plain_at <= at < plain_at + table.plain[first]
    run = frames.decode_frame_run(stored[:table.header_len], [stored[stored_at:stored_at + stored_len]], first,
                                  frames.KIND_DATA)
    got = b"".join(bytes(p) for p in run)
    assert got[at - plain_at:at - plain_at + 10] == joined[at:at + 10]
    # a frame read as another index fails its checksum
    with pytest.raises(errors.IntegrityError):
        list(frames.decode_frame_run(stored[:table.header_len], [stored[stored_at:stored_at + stored_len]],
                                     first + 1, frames.KIND_DATA))
    # a run cut inside a frame is truncated
    with pytest.raises(errors.TruncatedError):
        list(frames.decode_frame_run(stored[:table.header_len], [stored[stored_at:stored_at + stored_len - 1]],
                                     first, frames.KIND_DATA))
    with pytest.raises(errors.CorruptRecordError, match="index names plaintext bytes"):
        table.span(len(joined), len(joined) + 1)


# -- files without a signature ----------------------------------------------------

def test_new_content_without_a_signature():
    m = entrymap.entry_map(entry(b"small"), {"sg": "n", "da": "full", "dg": b"d" * 32})
    (rec,) = decoded(manifest_rec(m))
    assert rec[2]["sg"] == entrymap.SIG_NONE
    with pytest.raises(errors.CorruptRecordError, match="malformed signature kind"):
        decoded(manifest_rec({**m, "B": 700}))
    with pytest.raises(errors.CorruptRecordError, match="malformed signature kind"):
        decoded(manifest_rec({k: v for k, v in m.items() if k != "da"}), version=3)
    with pytest.raises(errors.CorruptRecordError, match="malformed signature kind"):
        decoded(manifest_rec({k: v for k, v in m.items() if k != "da"} | {"sg": "f"}))


def test_signature_records_after_an_unsigned_entry_are_refused(tmp_path):
    path = tmp_path / "m"
    enc = encoder.StreamEncoder(frames.KIND_MANIFEST, compression.by_name("none"))
    m = entrymap.entry_map(entry(b"small"), {"sg": "n", "da": "full", "dg": b"d" * 32})
    plain = [records.begin({"level": 0}), manifest_rec(m), records.sig_blocks(0, b"w" * 4, b"s" * 16),
             records.end({})]
    path.write_bytes(b"".join(b"".join(enc.write(p)) for p in plain) + b"".join(enc.close()))
    with pytest.raises(errors.CorruptRecordError, match="SIGBLOCKS record without its MANIFEST"):
        list(mf.read(str(path)))


def test_writer_marks_new_unsigned_content_and_the_overlay_keeps_its_digest(tmp_path):
    path = str(tmp_path / "m")
    w = mw.ManifestWriter(path, compression.by_name("zstd"))
    w.add(mf.ManifestEntry(entry(b"small"), b"d" * 32), at=0, data=entrymap.DATA_FULL)
    w.close()
    (rec,) = list(mf.read(path))
    assert rec[2]["sg"] == "n" and rec[2]["da"] == "full" and rec[3] == []
    (me,) = list(mf.overlay([path]))
    assert me.digest == b"d" * 32 and not me.has_signature


def test_unsigned_content_must_say_how_it_travelled():
    m = entrymap.entry_map(entry(b"small"), {"sg": "n", "dg": b"d" * 32})
    with pytest.raises(errors.CorruptRecordError, match="malformed signature kind"):
        decoded(manifest_rec(m))
