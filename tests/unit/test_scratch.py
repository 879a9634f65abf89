"""Scratch directories: locked while in use, removed after; the sweep of those killed processes left."""

import os
import signal
import subprocess
import sys
import time

import pytest

from freezer_rsyncv2 import scratch

HOLDER = """
import sys, time
from freezer_rsyncv2 import scratch
with scratch.directory("held", sys.argv[1]) as path:
    with open(path + "/manifest", "wb") as f:
        f.write(b"x" * 100000)
    print(path, flush=True)
    time.sleep(60)
"""


def _holder(parent):
    """A child process inside a scratch directory of ``parent``; (process, path)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(parent)], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


@pytest.fixture
def settled(monkeypatch):
    monkeypatch.setattr(scratch, "SETTLE", 0.0)


def test_a_directory_is_removed_after_its_block_even_read_only_parts(tmp_path):
    with pytest.raises(RuntimeError):
        with scratch.directory("work", str(tmp_path)) as path:
            assert os.path.basename(path).startswith("rsyncv2-work-")
            os.makedirs(os.path.join(path, "tree", "ro"))
            open(os.path.join(path, "tree", "ro", "f"), "wb").close()
            os.chmod(os.path.join(path, "tree", "ro"), 0o500)
            raise RuntimeError("the work failed")
    assert os.listdir(tmp_path) == []


def test_the_sweep_removes_what_a_killed_process_left_and_nothing_in_use(tmp_path, settled):
    killed, left = _holder(tmp_path)
    alive, held = _holder(tmp_path)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        (tmp_path / "rsyncv2-not-ours.txt").write_bytes(b"a file, not a directory")
        (tmp_path / "other-dir").mkdir()
        removed, size, kept = scratch.sweep(86400.0, str(tmp_path))
        assert (removed, kept) == (1, 1)
        assert size >= 100000
        assert not os.path.exists(left)
        assert os.path.exists(os.path.join(held, "manifest"))
        assert sorted(os.listdir(tmp_path)) == sorted(
            [os.path.basename(held), "rsyncv2-not-ours.txt", "other-dir"])
    finally:
        alive.kill()
        alive.wait()
    assert scratch.sweep(86400.0, str(tmp_path))[0] == 1     # now it is abandoned too


def test_a_directory_without_a_lock_goes_only_once_older_than_the_age(tmp_path, settled):
    old, young = tmp_path / "rsyncv2-old", tmp_path / "rsyncv2-young"
    old.mkdir()
    young.mkdir()
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    assert scratch.sweep(1800.0, str(tmp_path)) == (1, 0, 1)
    assert os.listdir(tmp_path) == ["rsyncv2-young"]


def test_a_directory_just_made_is_left_to_settle(tmp_path):
    killed, left = _holder(tmp_path)
    killed.kill()
    killed.wait()
    assert scratch.sweep(0.0, str(tmp_path)) == (0, 0, 1)
    assert os.path.exists(left)
