"""Manifests: signatures of any size over several records, deltas, overlay."""

import numpy as np
import pytest

from freezer_rsyncv2 import errors
from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2 import manifest_writer as mw
from freezer_rsyncv2.fs import entry as fsentry
from freezer_rsyncv2.rsync import signature as rsig
from freezer_rsyncv2.stream import compression, encoder, entrymap, frames, records


def make_entry(path=b"disk.img", size=0, mtime=1, kind=fsentry.KIND_FILE):
    return fsentry.Entry(path=path, kind=kind, mode=0o644, uid=0, gid=0,
                         uname=None, gname=None, size=size, mtime_ns=mtime,
                         atime_ns=0, ctime_ns=0, ino=0, dev=0, nlink=1)


def signature(data, block_len):
    builder = rsig.SignatureBuilder(block_len)
    builder.update(data)
    return builder.finish()


def random_blocks(n, block_len, seed):
    return np.random.default_rng(seed).integers(
        1, 256, n * block_len, dtype=np.uint8).tobytes()


def write(path, *entries, level=0):
    """A manifest of (ManifestEntry, basis signature or None) pairs."""
    writer = mw.ManifestWriter(str(path), compression.by_name("none"),
                               level=level)
    for me, basis in entries:
        writer.add(me, basis=basis)
    writer.close()
    return str(path)


def test_a_signature_of_40000_blocks_spans_records(tmp_path):
    data = random_blocks(40000, 64, 1)
    sig = signature(data, 64)
    path = write(tmp_path / "m0", (mf.ManifestEntry(
        make_entry(size=len(data)), b"d" * 32, sig), None))
    recs = list(mf.read(path))
    assert len(recs) == 1
    _t, e, extra, runs = recs[0]
    assert extra["sg"] == entrymap.SIG_FULL and extra["B"] == 64
    assert [r.count for r in runs] == [records.MAX_SIG_RUN,
                                       40000 - records.MAX_SIG_RUN]
    (got,) = mf.overlay([path])
    assert got.signature() == sig and got.digest == b"d" * 32


def test_zero_blocks_are_left_out_of_a_full_signature(tmp_path):
    data = bytearray(100 * 4096)
    data[5 * 4096:6 * 4096] = random_blocks(1, 4096, 2)
    sig = signature(bytes(data), 4096)
    path = write(tmp_path / "m0", (mf.ManifestEntry(
        make_entry(size=len(data)), b"d" * 32, sig), None))
    (_t, _e, _x, runs), = mf.read(path)
    assert [(r.first, r.count) for r in runs] == [(5, 1)]
    (got,) = mf.overlay([path])
    assert got.signature() == sig


def test_a_level_stores_only_changed_blocks_and_overlays_them(tmp_path):
    old_data = bytearray(random_blocks(50000, 64, 3))
    old = signature(bytes(old_data), 64)
    new_data = bytearray(old_data)
    new_data[64 * 7:64 * 9] = random_blocks(2, 64, 4)     # blocks 7, 8
    new_data[64 * 100:64 * 101] = bytes(64)                # block 100: zero
    new_data += random_blocks(3, 64, 5)                    # grown by 3
    new = signature(bytes(new_data), 64)
    m0 = write(tmp_path / "m0", (mf.ManifestEntry(
        make_entry(size=len(old_data)), b"0" * 32, old), None))
    m1 = write(tmp_path / "m1", (mf.ManifestEntry(
        make_entry(size=len(new_data), mtime=2), b"1" * 32, new), old),
        level=1)
    (_t, _e, extra, runs), = mf.read(m1)
    assert extra["sg"] == entrymap.SIG_DELTA
    assert [(r.first, r.count, r.weak is None) for r in runs] == [
        (7, 2, False), (100, 1, True), (50000, 3, False)]
    (got,) = mf.overlay([m0, m1])
    assert got.signature() == new and got.digest == b"1" * 32
    assert got.entry.mtime_ns == 2


def test_stat_only_record_keeps_the_signature_below(tmp_path):
    sig = signature(random_blocks(10, 700, 6), 700)
    m0 = write(tmp_path / "m0", (mf.ManifestEntry(
        make_entry(size=7000), b"0" * 32, sig), None))
    m1 = write(tmp_path / "m1", (mf.ManifestEntry(
        make_entry(size=7000, mtime=5)), None), level=1)
    (got,) = mf.overlay([m0, m1])
    assert got.entry.mtime_ns == 5 and got.signature() == sig
    assert got.digest == b"0" * 32


def _crafted(path, *recs):
    enc = encoder.StreamEncoder(frames.KIND_MANIFEST,
                                compression.by_name("none"))
    out = b""
    for rec in [records.begin({"level": 0}), *recs, records.end({})]:
        out += b"".join(enc.write(rec))
    out += b"".join(enc.close())
    with open(path, "wb") as f:
        f.write(out)
    return str(path)


def test_a_delta_without_a_basis_below(tmp_path):
    e = make_entry(size=64 * 3)
    m = _crafted(tmp_path / "m", records.manifest(e, dg=b"d" * 32, B=64,
                                                  sg="d"),
                 records.sig_blocks(0, b"w" * 4, b"s" * 16))
    with pytest.raises(errors.CorruptRecordError, match="no basis"):
        list(mf.overlay([m]))
    # only the top of a chain at hand: the file is left without signature
    (got,) = mf.overlay([m], whole_chain=False)
    assert not got.has_signature


@pytest.mark.parametrize("recs", [
    # a signature record with no MANIFEST before it
    [records.sig_blocks(0, b"w" * 4, b"s" * 16)],
    # after a stat-only record
    [records.manifest(make_entry(size=64)), records.sig_zero(0, 1)],
])
def test_signature_records_out_of_place(tmp_path, recs):
    with pytest.raises(errors.CorruptRecordError, match="without its"):
        list(mf.read(_crafted(tmp_path / "m", *recs)))


@pytest.mark.parametrize("runs", [
    [records.sig_blocks(3, b"w" * 4, b"s" * 16)],            # past the end
    [records.sig_blocks(1, b"w" * 8, b"s" * 32),
     records.sig_blocks(2, b"w" * 4, b"s" * 16)],            # overlapping
    [records.sig_zero(0, 1 << 60)],                          # huge zero run
    [records.sig_blocks(2, b"w" * 4, b"s" * 16),
     records.sig_blocks(0, b"w" * 4, b"s" * 16)],            # out of order
])
def test_bad_signature_runs_are_refused_when_built(tmp_path, runs):
    e = make_entry(size=64 * 2 + 10)
    m = _crafted(tmp_path / "m", records.manifest(e, dg=b"d" * 32, B=64,
                                                  sg="f"), *runs)
    (got,) = mf.overlay([m])
    with pytest.raises(errors.CorruptRecordError):
        got.signature()


@pytest.mark.parametrize("extra", [
    dict(sg="x", B=64), dict(sg="f"), dict(sg="f", B=64, w=b"wwww"),
])
def test_malformed_signature_kind(tmp_path, extra):
    m = _crafted(tmp_path / "m", records.manifest(make_entry(size=64),
                                                  dg=b"d" * 32, **extra))
    with pytest.raises(errors.CorruptRecordError, match="signature kind"):
        list(mf.read(m))


def test_signature_kind_on_a_directory(tmp_path):
    e = make_entry(path=b"d", kind=fsentry.KIND_DIR)
    m = _crafted(tmp_path / "m", records.manifest(e, B=64, sg="f"))
    with pytest.raises(errors.CorruptRecordError, match="signature kind"):
        list(mf.read(m))


def test_late_entries_wait_in_their_own_spill_and_merge_in_order(tmp_path):
    """Late entries (renames decided after the walk) interleave with the others,
    signatures and prefix-coded paths included, without being held in memory."""
    writer = mw.ManifestWriter(str(tmp_path / "m"), compression.by_name("zstd"))
    sigs = {}
    for i in range(3000):
        path = b"dir%02d/file%05d" % (i % 7, i)
        sigs[path] = signature(random_blocks(3, 64, i), 64) if i % 3 == 0 else None
    paths = sorted(sigs, key=lambda p: p.split(b"/"))
    for n, path in enumerate(paths):        # main and late entries, each in sort order
        me = mf.ManifestEntry(make_entry(path=path, size=64 * 3), b"d" * 32, sigs[path])
        writer.add(me, late=n % 2 == 1)
    assert writer._late is not None and not isinstance(writer._late, list)
    writer.close()
    got = list(mf.overlay([str(tmp_path / "m")]))
    assert [me.entry.path for me in got] == paths
    for me in got:
        expected = sigs[me.entry.path]
        assert (me.signature() == expected) if expected is not None else not me.has_signature


def test_late_entries_out_of_order_are_refused(tmp_path):
    writer = mw.ManifestWriter(str(tmp_path / "m"), compression.by_name("zstd"))
    writer.add(mf.ManifestEntry(make_entry(path=b"b")), late=True)
    with pytest.raises(ValueError, match="out of order"):
        writer.add(mf.ManifestEntry(make_entry(path=b"a")), late=True)


def test_a_path_shares_its_head_with_the_one_before():
    rng = np.random.default_rng(7)
    for _ in range(3000):
        a = bytes(rng.choice(list(b"ab/"), rng.integers(0, 300)))
        b = a[:rng.integers(0, len(a) + 1)] + bytes(rng.choice(list(b"ab/"), rng.integers(0, 300)))
        expected = 0
        while expected < min(len(a), len(b), 255) and a[expected] == b[expected]:
            expected += 1
        assert mw._shared(a, b) == expected
    assert mw._shared(b"x" * 400, b"x" * 400) == 255 and mw._shared(b"", b"abc") == 0
