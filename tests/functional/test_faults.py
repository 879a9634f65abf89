"""Faults on both sides: killed backups, full disks, odd names, verify."""

import errno
import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from freezer_rsyncv2 import cli, errors
from freezer_rsyncv2 import verify as verify_mod
from freezer_rsyncv2.fs import filedata
from tests.functional import treeutil
from tests.functional.conftest import backup, restore
from tests.unprivileged import run_unprivileged


def rnd(n):
    return os.urandom(n)


def cli_args(*argv):
    return [str(a) for a in argv]


def test_killed_backup_leaves_no_visible_level(tmp_path, restore_dir):
    src = tmp_path / "src"
    treeutil.write(str(src / "small.txt"), b"v1")
    container = tmp_path / "store"
    base = ["--container", container, "--backup-name", "k", "--hostname", "h"]
    assert cli.main(cli_args("backup", "--path-to-backup", src, *base)) == 0
    treeutil.write(str(src / "big.bin"), rnd(32 << 20))
    proc = subprocess.Popen(
        [sys.executable, "-m", "freezer_rsyncv2.cli", "backup",
         "--path-to-backup", str(src), "--compression", "bzip2",
         "--max-segment-size", "65536", *cli_args(*base)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    written = []
    while time.monotonic() < deadline and not written:
        for dirpath, _dirs, files in os.walk(container / "data"):
            written += [f for f in files if "/1_" in dirpath
                        and os.path.getsize(os.path.join(dirpath, f)) > 0]
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert written, "the backup never started writing"
    # the killed level is invisible to list, restore and the next backup
    assert cli.main(cli_args("list", *base)) == 0
    dest = restore_dir()
    assert cli.main(cli_args("restore", "--restore-abs-path", dest,
                             *base)) == 0
    assert sorted(os.listdir(dest)) == ["small.txt"]
    assert cli.main(cli_args("backup", "--path-to-backup", src, *base)) == 0
    dest = restore_dir()
    assert cli.main(cli_args("restore", "--restore-abs-path", dest,
                             *base)) == 0
    treeutil.assert_same_tree(treeutil.snapshot(str(src)),
                              treeutil.snapshot(dest))
    assert cli.main(cli_args("verify", *base)) == 0


def test_full_disk_on_restore_then_rerun(make_engine, src, restore_dir,
                                         monkeypatch):
    for i in range(5):
        treeutil.write(os.path.join(src, "f%d" % i), rnd(300000))
    backup(make_engine(), src)
    calls = []
    real = filedata.write_all

    def enospc(fd, data):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)
    monkeypatch.setattr(filedata, "write_all", enospc)
    dest = restore_dir()
    with pytest.raises(errors.RestoreError, match="No space left"):
        restore(make_engine(), dest)
    monkeypatch.undo()
    for name in os.listdir(dest):
        assert not name.startswith(".rsyncv2-tmp-")
    restore(make_engine(), dest, overwrite=True)
    treeutil.assert_same_tree(treeutil.snapshot(src), treeutil.snapshot(dest))


@pytest.mark.parametrize("name", ["with space", "ünïcødé", "100%_done",
                                  "semi;colon", "-dash"])
def test_odd_backup_names_and_containers(tmp_path, name, restore_dir):
    src = tmp_path / "src"
    treeutil.write(str(src / "a"), b"a")
    container = tmp_path / ("store " + name)
    base = ["--container", container, "--backup-name=" + name,
            "--hostname", "h"]
    assert cli.main(cli_args("backup", "--path-to-backup", src, *base)) == 0
    treeutil.write(str(src / "b"), b"b")
    assert cli.main(cli_args("backup", "--path-to-backup", src, *base)) == 0
    dest = restore_dir()
    assert cli.main(cli_args("restore", "--restore-abs-path", dest,
                             *base)) == 0
    assert sorted(os.listdir(dest)) == ["a", "b"]


@pytest.mark.parametrize("name", ["a/b", "nul\x00", "../up"])
def test_unusable_backup_names_are_usage_errors(tmp_path, name, capsys):
    src = tmp_path / "src"
    src.mkdir()
    code = cli.main(cli_args("backup", "--path-to-backup", src, "--container",
                             tmp_path / "c", "--backup-name", name,
                             "--hostname", "h"))
    assert code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_source_that_is_a_symlink_to_a_directory(tmp_path, make_engine,
                                                 restore_dir):
    real = tmp_path / "real"
    treeutil.write(str(real / "inside.txt"), b"inside")
    link = tmp_path / "link"
    os.symlink(str(real), str(link))
    backup(make_engine(), str(link))
    dest = restore_dir()
    restore(make_engine(), dest)
    assert open(os.path.join(dest, "inside.txt"), "rb").read() == b"inside"


def test_verify_clean_and_corrupt(tmp_path, capsys, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    src = tmp_path / "src"
    treeutil.write(str(src / "a.bin"), rnd(200000))
    base = ["--container", tmp_path / "store", "--backup-name", "v",
            "--hostname", "h"]
    assert cli.main(cli_args("backup", "--path-to-backup", src, *base)) == 0
    with open(src / "a.bin", "r+b") as f:
        f.write(b"changed")
    os.utime(src / "a.bin", ns=(1, 2 * 10**18))
    assert cli.main(cli_args("backup", "--path-to-backup", src, *base)) == 0
    assert cli.main(cli_args("verify", *base)) == 0
    assert "verified h_v levels 0..1" in capsys.readouterr().out
    [data1] = glob.glob(str(tmp_path / "store/data/rsyncv2/h_v/*/1_*/data"))
    blob = bytearray(open(data1, "rb").read())
    blob[len(blob) // 2] ^= 1
    open(data1, "wb").write(bytes(blob))
    assert cli.main(cli_args("verify", *base)) == 1
    err = capsys.readouterr().err
    assert "level 1 of h_v" in err and "Traceback" not in err
    assert os.listdir(scratch) == []     # the scratch replay is removed
    [meta0] = glob.glob(str(tmp_path /
                            "store/data/rsyncv2/h_v/*/0_*/engine_metadata"))
    open(meta0, "ab").write(b"junk")
    open(data1, "wb").write(bytes(blob[:-1]))
    assert cli.main(cli_args("verify", *base)) == 1
    assert "level 0 of h_v: manifest" in capsys.readouterr().err


def test_verify_unknown_name(tmp_path, capsys):
    (tmp_path / "store").mkdir()
    assert cli.main(cli_args("verify", "--container", tmp_path / "store",
                             "--backup-name", "none", "--hostname", "h")) == 1
    assert "h_none" in capsys.readouterr().err


def test_verify_removes_its_scratch_tree_with_read_only_directories(
        tmp_path, make_engine, src):
    treeutil.write(os.path.join(src, "ro/inner/f.txt"), b"kept")
    os.chmod(os.path.join(src, "ro/inner"), 0o555)
    os.chmod(os.path.join(src, "ro"), 0o555)
    try:
        backup(make_engine(), src)
    finally:
        os.chmod(os.path.join(src, "ro"), 0o755)
        os.chmod(os.path.join(src, "ro/inner"), 0o755)
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    def verify_without_root_override():
        return verify_mod.verify(make_engine(), "host_test",
                                 scratch_parent=str(scratch)).levels

    assert run_unprivileged(verify_without_root_override) == [0]
    assert os.listdir(scratch) == []
