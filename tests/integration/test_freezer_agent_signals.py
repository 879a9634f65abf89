"""freezer-agent stopped by SIGTERM in the middle of a backup with our engine.

docs/freezer-agent.rst ("Signals"): the agent unwinds through its own
cleanup and still ends by SIGTERM, which freezer-scheduler reads as
"aborted" (-15); the level is not visible, our ``cleanup`` removes what
Freezer's local storage left of it, and the next backup works.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import AGENT_TIMEOUT, HOST
from tests.integration.test_freezer_agent import (
    backup_args, levels, restore_args, same_tree, write)

pytestmark = pytest.mark.integration


def test_sigterm_ends_the_agent_by_sigterm_after_cleanup(agent, tmp_path: Path) -> None:
    src, container = tmp_path / "src", tmp_path / "store"
    write(src / "big.bin", os.urandom(32 << 20))
    write(src / "small.txt", b"small\n")
    log = tmp_path / "interrupted.log"
    # bzip2: slow enough for the signal to land while the level is written
    argv = [agent.venv.bin("freezer-agent"),
            *backup_args(container, "sig", src, "--compression", "bzip2"),
            "--log-file", str(log)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=agent.env(), cwd=str(tmp_path))
    data = container / "data" / "rsyncv2" / f"{HOST}_sig"
    deadline = time.monotonic() + AGENT_TIMEOUT
    while not [p for p in data.rglob("data") if p.is_file() and p.stat().st_size]:
        assert proc.poll() is None, "the agent ended before writing: %s" % proc.stderr.read()
        assert time.monotonic() < deadline, "the agent wrote nothing"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=AGENT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the agent did not end after SIGTERM")
    assert proc.returncode == -signal.SIGTERM, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "freezer-rsyncv2: interrupted by SIGTERM"
    assert "interrupted by SIGTERM" in log.read_text(errors="replace")
    assert levels(container, "sig") == {}

    # Freezer's local storage writes under the final name: an unfinished level
    swept = agent.cli("cleanup", "--container", str(container), "--backup-name", "sig",
                      "--hostname", HOST, "--sweep-age", "0")
    assert swept.returncode == 0, swept.stderr
    assert "1 unfinished level removed" in swept.stdout
    assert [p for p in data.rglob("*") if p.is_file()] == []

    agent(*backup_args(container, "sig", src)).ok()
    dest = tmp_path / "restored"
    agent(*restore_args(container, "sig", dest)).ok()
    same_tree(src, dest)
