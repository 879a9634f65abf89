"""A level sets aside what did not change from its stat alone.

The walk gives each object's stat (``fs.walk.Found``); an object whose
inode, ctime, kind, size, mtime, mode and owners equal its entry's in the
chain is unchanged, with no Entry made (no xattr read, no symlink read) and
its manifest map not checked further.  Anything else takes the long way.
"""

import os
import random

import pytest

from freezer_rsyncv2 import config as cfgmod
from freezer_rsyncv2 import errors
from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2 import manifest_writer as mw
from freezer_rsyncv2 import progress as prog
from freezer_rsyncv2.engine import backup_pass
from freezer_rsyncv2.fs import owners
from freezer_rsyncv2.fs import walk as fswalk
from freezer_rsyncv2.stream import compression, encoder, frames, records

T0 = 1_700_000_000 * 10**9


def _tree(src):
    (src / "d" / "e").mkdir(parents=True)
    for i, rel in enumerate(("a.txt", "d/b.bin", "d/e/c", "z")):
        (src / rel).write_bytes(b"%d" % i * (100 + 3000 * i))
    os.symlink("a.txt", src / "link")
    os.link(src / "z", src / "d" / "z-again")
    for top, dirs, files in os.walk(src, topdown=False):
        for name in files:
            os.utime(os.path.join(top, name), ns=(T0, T0))
        os.utime(top, ns=(T0, T0))


def _level(src, manifest, level, previous, summary=None):
    writer = mw.ManifestWriter(str(manifest), compression.by_name("zstd"), level=level)
    summary = summary or prog.Summary(level=level)
    bpass = backup_pass.BackupPass(cfgmod.EngineConfig(), str(src), previous, writer, level, summary)
    data = list(bpass.records())
    writer.close()
    return data, summary


def _made(monkeypatch):
    """The paths the walk makes an Entry of, from now on."""
    made = []
    real = fswalk.Walker.make_entry

    def make_entry(self, found):
        made.append(found.path)
        return real(self, found)
    monkeypatch.setattr(fswalk.Walker, "make_entry", make_entry)
    return made


@pytest.fixture
def chain(tmp_path):
    src = tmp_path / "src"
    _tree(src)
    _level(src, tmp_path / "m0", 0, [])
    return src, tmp_path


def test_a_level_with_no_change_makes_no_entry(chain, monkeypatch):
    src, tmp = chain
    made = _made(monkeypatch)
    data, summary = _level(src, tmp / "m1", 1, mf.overlay_lazy([str(tmp / "m0")]))
    # only the hardlinked pair takes the long way (its group is the walk's to decide)
    assert sorted(made) == [b"d/z-again", b"z"]
    assert [r[0] for r in records.decode([b"".join(data)])] == [records.BEGIN, records.END]
    assert summary.files_unchanged == 4 and summary.files_meta == 0
    assert summary.files_new == summary.files_changed == 0


def test_a_changed_ctime_takes_the_long_way(chain, monkeypatch):
    src, tmp = chain
    os.chmod(src / "a.txt", 0o600)
    os.chmod(src / "a.txt", 0o644)        # the same mode, a new ctime
    os.chmod(src / "d", 0o700)
    os.chmod(src / "d", 0o755)
    made = _made(monkeypatch)
    data, summary = _level(src, tmp / "m1", 1, mf.overlay_lazy([str(tmp / "m0")]))
    assert sorted(made) == [b"a.txt", b"d", b"d/z-again", b"z"]
    # the file is stored as metadata only (its ctime is an entry field);
    # the directory's stored fields are all the same: nothing for it
    assert summary.files_meta == 1 and summary.files_unchanged == 3
    entries = [r[1].path for r in records.decode([b"".join(data)]) if r[0] == records.ENTRY]
    assert entries == [b"a.txt"]


def test_an_xattr_change_is_found_by_its_ctime(chain, monkeypatch):
    src, tmp = chain
    try:
        os.setxattr(src / "d" / "b.bin", b"user.tag", b"blue")
    except OSError as err:
        pytest.fail(f"this file system takes no user xattrs: {err}")
    data, summary = _level(src, tmp / "m1", 1, mf.overlay_lazy([str(tmp / "m0")]))
    (me,) = [me for me in mf.overlay([str(tmp / "m0"), str(tmp / "m1")]) if me.entry.path == b"d/b.bin"]
    assert me.entry.xattrs == {b"user.tag": b"blue"}
    assert summary.files_meta == 1


def test_a_changed_size_or_owner_name_is_no_quick_match(chain, monkeypatch):
    src, tmp = chain
    with open(src / "d" / "e" / "c", "ab") as f:
        f.write(b"more")
    os.utime(src / "d" / "e" / "c", ns=(T0, T0))    # the mtime as before, the size not
    made = _made(monkeypatch)
    monkeypatch.setattr(owners, "group_name", lambda gid: "renamed")
    _data, summary = _level(src, tmp / "m1", 1, mf.overlay_lazy([str(tmp / "m0")]))
    # a group renamed in the group database: every entry names it anew
    assert len(made) == 8
    assert summary.files_changed == 1 and summary.files_meta == 3     # the new group name stored


def _rewritten(src_manifest, dst, change):
    """``src_manifest`` with ``change(map)`` applied to each MANIFEST map."""
    plain = frames.decode_frames([open(src_manifest, "rb").read()], frames.KIND_MANIFEST,
                                 frames.null_cipher_for, {})
    enc = encoder.StreamEncoder(frames.KIND_MANIFEST, compression.by_name("none"))
    out = b""
    for rec in records.decode(plain, {"version": 4}, small=True, lazy=True):
        if rec[0] == records.MANIFEST:
            m = dict(rec[1])
            m.pop("o", None)
            change(m)
            raw = records.pack([records.MANIFEST, m])
        elif rec[0] in (records.BEGIN, records.END):
            raw = records.pack([rec[0], rec[1]])
        else:
            continue
        out += b"".join(enc.write(raw))
    out += b"".join(enc.close())
    dst.write_bytes(out)
    return str(dst)


def test_an_unknown_key_in_an_unchanged_entry_is_refused(chain):
    src, tmp = chain

    def add_key(m):
        if m["p"] == b"a.txt":
            m["zz"] = 1
    bad = _rewritten(tmp / "m0", tmp / "bad", add_key)
    with pytest.raises(errors.CorruptRecordError, match="unknown field 'zz'"):
        _level(src, tmp / "m1", 1, mf.overlay_lazy([bad]))


def test_a_tampered_value_is_refused_where_it_would_be_used(chain):
    """A file whose content changed is read as a delta over its entry below: that entry is checked."""
    src, tmp = chain

    def bad_mode(m):
        if m["p"] == b"d/e/c":
            m["m"] = 0o7777777
    bad = _rewritten(tmp / "m0", tmp / "bad", bad_mode)
    (src / "d" / "e" / "c").write_bytes(b"3" * 6100)
    with pytest.raises(errors.CorruptRecordError, match="field 'm' out of range"):
        _level(src, tmp / "m1", 1, mf.overlay_lazy([bad]))


def test_a_tampered_value_the_walk_replaces_is_only_compared(chain):
    """A file's metadata change is written over its map below, compared and never used:
    the level carries the file's own value; the chain stays refused where it is tampered with."""
    src, tmp = chain

    def bad_mode(m):
        if m["p"] == b"d/e/c":
            m["m"] = 0o7777777
    bad = _rewritten(tmp / "m0", tmp / "bad", bad_mode)
    _data, summary = _level(src, tmp / "m1", 1, mf.overlay_lazy([bad]))
    assert summary.files_meta == 1 and summary.files_changed == 0
    (rec,) = [r for r in mf.read(str(tmp / "m1")) if r[0] == records.MANIFEST and r[1].path == b"d/e/c"]
    assert "m" in rec[2]["dm"] and rec[1].mode == 0o644 == os.stat(src / "d" / "e" / "c").st_mode & 0o7777
    with pytest.raises(errors.CorruptRecordError, match="field 'm' out of range"):
        list(mf.overlay([bad, str(tmp / "m1")]))


def test_a_tampered_value_equal_to_the_stat_is_harmless(chain, monkeypatch):
    """A map whose compared fields are the file's own is used for nothing:
    a checksum, digest or signature of it is never read."""
    src, tmp = chain

    def drop_digest(m):
        if m["p"] == b"a.txt":
            m["dg"] = b"not a digest"
    bad = _rewritten(tmp / "m0", tmp / "bad", drop_digest)
    data, summary = _level(src, tmp / "m1", 1, mf.overlay_lazy([bad]))
    assert [r[0] for r in records.decode([b"".join(data)])] == [records.BEGIN, records.END]
    assert summary.files_unchanged == 4


def test_a_change_entry_overlays_the_map_below(chain):
    src, tmp = chain
    os.chmod(src / "a.txt", 0o640)
    _level(src, tmp / "m1", 1, mf.overlay_lazy([str(tmp / "m0")]))
    (prior,) = [p for p in mf.overlay_lazy([str(tmp / "m0"), str(tmp / "m1")]) if p.path == b"a.txt"]
    assert prior.map.get("dm") is True
    fields = prior.fields()
    assert fields["m"] == 0o640 and fields["s"] == 100 and fields["k"] == "f"
    me = prior.resolve()
    assert me.entry.mode == 0o640 and me.entry.size == 100 and me.digest is not None


def test_sort_key_orders_paths_by_their_components():
    rng = random.Random(7)
    alphabet = [b"a", b"b", b".", b"-", b"\x01", b"\xff", b"a.b"]
    paths = {b"/".join(rng.choice(alphabet) * rng.randint(1, 2) for _ in range(rng.randint(1, 4)))
             for _ in range(2000)}
    assert sorted(paths, key=fswalk.sort_key) == sorted(paths, key=lambda p: p.split(b"/"))
