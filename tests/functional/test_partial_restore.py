"""restore --include: only the paths asked for, through every kind of change, reading only what they need."""

from __future__ import annotations

import os
import random

import pytest

from freezer_rsyncv2 import cli
from freezer_rsyncv2 import errors
from freezer_rsyncv2 import manifest_writer as mw
from freezer_rsyncv2 import partial
from freezer_rsyncv2 import verify as verify_mod
from freezer_rsyncv2.engine import rsyncv2
from freezer_rsyncv2.storage import local, s3
from freezer_rsyncv2.storage.s3_upload import MIN_PART_SIZE
from tests import s3server
from tests.functional import treeutil
from tests.functional.conftest import backup, restore
from tests.functional.test_roundtrip import build_level0, change_level1, change_level2

NAME = "host_test"


def _without_groups(snap):
    return {path: {k: v for k, v in desc.items() if k != "group"} for path, desc in snap.items()}


def _expected(full, path):
    """The part of a full restore's snapshot a restore of ``path`` writes: it,
    what is below it, and its parents (kind and mode: their times change as
    their content differs)."""
    out = {}
    for p, desc in full.items():
        if p == path or p.startswith(path + b"/"):
            out[p] = desc
        elif path.startswith(p + b"/"):
            out[p] = {k: v for k, v in desc.items() if k != "mtime"}
    return out


def _got(snap, path):
    return {p: ({k: v for k, v in desc.items() if k != "mtime"} if path.startswith(p + b"/") else desc)
            for p, desc in snap.items()}


@pytest.fixture
def three_levels(make_engine, src, restore_dir):
    """The round-trip tree through its three levels (every kind, renames, type changes), restored whole."""
    build_level0(src)
    for change in (None, change_level1, change_level2):
        if change:
            change(src)
        backup(make_engine(), src)
    full = restore_dir()
    restore(make_engine(), full)
    return _without_groups(treeutil.snapshot(full))


def test_each_path_alone_is_as_in_a_full_restore(make_engine, restore_dir, three_levels):
    full = three_levels
    top = {p for p in full if b"/" not in p}
    for path in sorted(top | {b"dir/nested/deep.txt", b"todir/now-inside", b"new/brand-new.txt"}):
        dest = restore_dir()
        assert partial.restore(make_engine(), NAME, dest, [os.fsdecode(path)]).level == 2
        got = _without_groups(treeutil.snapshot(dest))
        if full[path]["fmt"] == 0o100000 and path in (b"dir/hard-small", b"small.txt"):
            # a hardlink brings the file it links to, and it stays a link
            assert os.stat(os.path.join(dest, "small.txt")).st_ino == \
                os.stat(os.path.join(dest, "dir/hard-small")).st_ino
            continue
        assert _got(got, path) == _expected(full, path), path


def test_globs_directories_and_several_patterns(make_engine, restore_dir, three_levels):
    full = three_levels
    dest = restore_dir()
    partial.restore(make_engine(), NAME, dest, ["*.bin", "./dir/nested/"])
    got = _without_groups(treeutil.snapshot(dest))
    want = {p for p in full if p.endswith(b".bin") or p == b"dir/nested" or p.startswith(b"dir/nested/")}
    assert set(got) == want | {b"dir"}
    for p in want:
        assert got[p] == full[p], p
    assert got[b"renamed.bin"]["sha256"] == full[b"renamed.bin"]["sha256"]     # renamed, then patched


def test_nothing_matches(make_engine, src, restore_dir):
    build_level0(src)
    backup(make_engine(), src)
    dest = restore_dir()
    with pytest.raises(partial.NothingSelectedError, match="no path of the backup matches no-such"):
        partial.restore(make_engine(), NAME, dest, ["no-such*"])
    assert not os.path.exists(dest)


def test_a_level_at_a_date(make_engine, src, restore_dir, clock):
    treeutil.write(os.path.join(src, "f.txt"), b"one")
    backup(make_engine(), src)
    first = clock.last
    treeutil.write(os.path.join(src, "f.txt"), b"two, longer")
    backup(make_engine(), src)
    dest = restore_dir()
    assert partial.restore(make_engine(), NAME, dest, ["f.txt"], date=first) == partial.Restored(0, 1)
    assert open(os.path.join(dest, "f.txt"), "rb").read() == b"one"


def test_encrypted_chain(make_engine, src, restore_dir, tmp_path, cheap_kdf):
    key = tmp_path / "pass"
    key.write_text("correct horse battery staple")
    build_level0(src)
    backup(make_engine(encrypt_key=str(key)), src)
    change_level1(src)
    backup(make_engine(encrypt_key=str(key)), src)
    dest = restore_dir()
    partial.restore(make_engine(encrypt_key=str(key)), NAME, dest, ["big.bin", "renamed.bin"])
    for name in ("big.bin", "renamed.bin"):
        assert open(os.path.join(dest, name), "rb").read() == open(os.path.join(src, name), "rb").read()
    assert sorted(os.listdir(dest)) == ["big.bin", "hard-big", "renamed.bin"] or \
        sorted(os.listdir(dest)) == ["big.bin", "renamed.bin"]


def test_a_wrong_index_is_refused_and_writes_nothing(make_engine, src, restore_dir, monkeypatch):
    build_level0(src)
    backup(make_engine(), src)
    real = partial.plan

    def shifted(tree, wanted):
        plans = real(tree, wanted)
        plans[0].take = {p: (o + 1 if o else o) for p, o in plans[0].take.items()}
        return plans
    monkeypatch.setattr(partial, "plan", shifted)
    dest = restore_dir()
    with pytest.raises(errors.FormatError):
        partial.restore(make_engine(), NAME, dest, ["shrink.bin"])
    assert not os.path.exists(os.path.join(dest, "shrink.bin"))


# -- what a one-file restore reads ------------------------------------------

BIG_FILES = 40          # of 2 MiB each: an 80 MiB level
DATA_BOUND = 6 << 20    # per level: the frame holding BEGIN and the frames holding the file


def _haystack(src):
    for i in range(BIG_FILES):
        treeutil.write(os.path.join(src, f"hay/{i:03d}.bin"), random.Random(i).randbytes(2 << 20))
    treeutil.write(os.path.join(src, "hay/020-needle.txt"), b"needle\n")


class _Counting:
    """Counts the data bytes a storage class hands out, by ranged read and by whole read."""

    def __init__(self, monkeypatch, cls):
        self.ranged, self.whole = 0, 0
        real_range, real_blocks = cls.read_data, cls.backup_blocks

        def read_data(storage, backup, offset, length):
            for chunk in real_range(storage, backup, offset, length):
                self.ranged += len(chunk)
                yield chunk

        def backup_blocks(storage, backup):
            for chunk in real_blocks(storage, backup):
                self.whole += len(chunk)
                yield chunk
        monkeypatch.setattr(cls, "read_data", read_data)
        monkeypatch.setattr(cls, "backup_blocks", backup_blocks)


def _needle_levels(engine_for, src):
    _haystack(src)
    assert backup(engine_for(), src) == 0
    with open(os.path.join(src, "hay/020-needle.txt"), "ab") as f:
        f.write(b"patched at level 1\n")
    os.utime(os.path.join(src, "hay/005.bin"), ns=(1, 1))      # metadata only
    assert backup(engine_for(), src) == 1


def test_one_file_of_a_big_local_level_reads_a_few_mib(make_engine, src, restore_dir, monkeypatch):
    _needle_levels(make_engine, src)
    counting = _Counting(monkeypatch, local.LocalStorage)
    dest = restore_dir()
    partial.restore(make_engine(), NAME, dest, ["hay/020-needle.txt"])
    assert open(os.path.join(dest, "hay/020-needle.txt"), "rb").read() == b"needle\npatched at level 1\n"
    assert sorted(os.listdir(os.path.join(dest, "hay"))) == ["020-needle.txt"]
    assert counting.whole == 0
    assert 0 < counting.ranged <= 2 * DATA_BOUND, counting.ranged


def test_one_file_of_a_big_s3_level_reads_a_few_mib(s3_server, clock, src, restore_dir, monkeypatch):
    bucket = s3server.unique_bucket("partial")

    def engine():
        storage = s3_server.storage(bucket, max_segment_size=8 << 20, part_size=MIN_PART_SIZE)
        return rsyncv2.Rsyncv2Engine(storage=storage, compression="zstd", max_segment_size=8 << 20)
    _needle_levels(engine, src)
    counting = _Counting(monkeypatch, s3.S3Storage)
    dest = restore_dir()
    partial.restore(engine(), NAME, dest, ["hay/020-needle.txt"])
    assert open(os.path.join(dest, "hay/020-needle.txt"), "rb").read() == b"needle\npatched at level 1\n"
    assert counting.whole == 0
    assert 0 < counting.ranged <= 2 * DATA_BOUND, counting.ranged


# -- command line -----------------------------------------------------------

def test_cli_include(make_engine, src, tmp_path, capsys):
    build_level0(src)
    change_level1(src)
    container = str(tmp_path / "store")
    common = ("--container", container, "--backup-name", "n", "--hostname", "h")
    assert cli.main(["backup", "--path-to-backup", src, *common]) == 0
    dest = str(tmp_path / "out")
    assert cli.main(["restore", "--restore-abs-path", dest, "--include", "dir/nested", "--include", "grow.bin",
                     *common]) == 0
    # dir, dir/nested, dir/nested/deep.txt, grow.bin
    assert "restored 4 paths of h_n up to level 0 into" in capsys.readouterr().out
    assert sorted(os.listdir(dest)) == ["dir", "grow.bin"]
    assert os.listdir(os.path.join(dest, "dir")) == ["nested"]
    empty = str(tmp_path / "empty")
    assert cli.main(["restore", "--restore-abs-path", empty, "--include", "nothing-here", *common]) == 2
    err = capsys.readouterr().err
    assert "no path of the backup matches nothing-here" in err and "Traceback" not in err
    assert not os.path.exists(empty)


def test_verify_checks_the_index_against_the_data(make_engine, src, monkeypatch):
    build_level0(src)
    backup(make_engine(), src)
    change_level1(src)              # tolink becomes a symlink to a directory
    backup(make_engine(), src)
    assert verify_mod.verify(make_engine(), NAME).levels == [0, 1]
    change_level2(src)
    real_add = mw.ManifestWriter.add

    def off_by_one(writer, me, *args, **kwargs):
        if me.entry.path == b"renamed.bin" and kwargs.get("at") is not None:
            kwargs["at"] += 1
        return real_add(writer, me, *args, **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(mw.ManifestWriter, "add", off_by_one)
        backup(make_engine(), src)
    with pytest.raises(errors.IntegrityError, match="level 2 of host_test: the manifest's index does not match"):
        verify_mod.verify(make_engine(), NAME)
