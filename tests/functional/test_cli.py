"""The freezer-rsyncv2 command line: round trip, exit codes, one-line errors."""

import os
import subprocess
import sys

import pytest

from freezer_rsyncv2 import cli
from freezer_rsyncv2.engine import file_reader
from tests.functional import treeutil


@pytest.fixture
def env(tmp_path, clock):
    src = tmp_path / "src"
    src.mkdir()
    treeutil.write(str(src / "a.txt"), b"alpha\n")
    treeutil.write(str(src / "d/b.bin"), os.urandom(200000))
    return {"src": str(src), "container": str(tmp_path / "store"),
            "dest": str(tmp_path / "restored"), "tmp": tmp_path}


def run(*argv):
    return cli.main([str(a) for a in argv])


def backup_args(env, *extra):
    return ("backup", "--path-to-backup", env["src"], "--container",
            env["container"], "--backup-name", "n", "--hostname", "h",
            *extra)


def restore_args(env, *extra):
    return ("restore", "--container", env["container"], "--backup-name",
            "n", "--hostname", "h", "--restore-abs-path", env["dest"], *extra)


def test_backup_list_restore(env, capsys):
    assert run(*backup_args(env)) == 0
    out = capsys.readouterr().out
    assert "backup level 0 of h_n" in out
    assert "2 new" in out
    treeutil.write(os.path.join(env["src"], "c.txt"), b"new")
    assert run(*backup_args(env, "--compression", "xz")) == 0
    assert "backup level 1" in capsys.readouterr().out
    assert run("list", "--container", env["container"]) == 0
    listing = capsys.readouterr().out
    assert "h_n" in listing and "level 0" in listing and "level 1" in listing
    assert run(*restore_args(env)) == 0
    treeutil.assert_same_tree(treeutil.snapshot(env["src"]),
                              treeutil.snapshot(env["dest"]))


def test_no_incremental_and_dry_run(env, capsys):
    assert run(*backup_args(env)) == 0
    assert run(*backup_args(env, "--dry-run")) == 0
    assert "nothing stored" in capsys.readouterr().out
    assert run(*backup_args(env, "--no-incremental")) == 0
    assert "backup level 0" in capsys.readouterr().out
    assert run("list", "--container", env["container"], "--backup-name", "n",
               "--hostname", "h") == 0
    listing = capsys.readouterr().out
    assert listing.count("chain") == 2 and "level 1" not in listing


def test_missing_source_is_a_one_line_error(env, capsys):
    code = run("backup", "--path-to-backup", env["tmp"] / "nope",
               "--container", env["container"], "--backup-name", "n")
    err = capsys.readouterr().err
    assert code == 1
    assert "does not exist" in err and "Traceback" not in err


def test_unknown_backup_name(env, capsys):
    assert run(*backup_args(env)) == 0
    code = run("restore", "--container", env["container"], "--backup-name",
               "other", "--restore-abs-path", env["dest"])
    err = capsys.readouterr().err
    assert code == 1 and "other" in err and "Traceback" not in err
    assert run("list", "--container", env["container"], "--backup-name",
               "other") == 1


def test_restore_dir_must_be_empty_without_overwrite(env, capsys):
    assert run(*backup_args(env)) == 0
    os.makedirs(env["dest"])
    treeutil.write(os.path.join(env["dest"], "keep.txt"), b"precious")
    assert run(*restore_args(env)) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(env["dest"], "a.txt"))
    assert run(*restore_args(env, "--overwrite")) == 0
    assert open(os.path.join(env["dest"], "a.txt"), "rb").read() == b"alpha\n"
    assert open(os.path.join(env["dest"], "keep.txt"), "rb").read() == \
        b"precious"


def test_missing_restore_dir_is_created(env):
    assert run(*backup_args(env)) == 0
    env["dest"] = os.path.join(env["dest"], "deeper", "still")
    assert run(*restore_args(env)) == 0
    assert os.path.isfile(os.path.join(env["dest"], "a.txt"))


@pytest.mark.parametrize("argv", [
    ["backup"], ["frobnicate"], [],
    ["backup", "--path-to-backup", "x", "--container", "c", "--backup-name",
     "n", "--compression", "lz77"],
    ["restore", "--container", "c", "--backup-name", "n",
     "--restore-abs-path", "d", "--restore-from-date", "yesterday"],
])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2


def test_bad_option_value_exits_2(env, capsys):
    assert run(*backup_args(env, "--rsync-block-size", "3")) == 2
    assert "rsync_block_size" in capsys.readouterr().err


def test_warnings_exit_3(env, capsys, monkeypatch):
    original = file_reader.read_range

    def shrinking(fd, offset, length, step, path, warn):
        for chunk in original(fd, offset, length, step, path, warn):
            os.truncate(os.path.join(env["src"], "d/b.bin"), 10)
            yield chunk
    monkeypatch.setattr(file_reader, "read_range", shrinking)
    assert run(*backup_args(env)) == 3
    assert "PARTIAL" in capsys.readouterr().out


def test_restore_from_date(env, capsys, clock):
    assert run(*backup_args(env)) == 0
    first = clock.last
    treeutil.write(os.path.join(env["src"], "a.txt"), b"changed",
                   mtime_ns=3 * 10**18)
    assert run(*backup_args(env)) == 0
    import time
    date = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(first))
    assert run(*restore_args(env, "--restore-from-date", date)) == 0
    assert open(os.path.join(env["dest"], "a.txt"), "rb").read() == b"alpha\n"


def test_the_console_command_exits_with_main_s_code(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"alpha\n")
    common = ["--container", str(tmp_path / "store"), "--backup-name", "b"]
    command = [sys.executable, "-c", "from freezer_rsyncv2 import cli; cli.console()"]
    done = subprocess.run(command + ["backup", "--path-to-backup", str(src)] + common, capture_output=True)
    assert done.returncode == 0, done.stderr
    dest = tmp_path / "dest"
    assert subprocess.run(command + ["restore", "--restore-abs-path", str(dest)] + common).returncode == 0
    assert (dest / "a.txt").read_bytes() == b"alpha\n"
    missing = subprocess.run(command + ["restore", "--restore-abs-path", str(dest), "--container",
                                        str(tmp_path / "none"), "--backup-name", "b"], capture_output=True)
    assert missing.returncode == 1 and b"error: container" in missing.stderr


def test_console_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "freezer_rsyncv2.cli",
                          "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "exit codes" in out and "finished with warnings" in out
