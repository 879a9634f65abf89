"""Signals at several points of a backup (level 0 and level N, local and S3) and of a restore.

Each run is the real command line in a subprocess, signalled when what it
writes shows up: a temporary data file or a multipart upload (``writing``),
or the level's data stored but its metadata not yet written
(``publishing``: a driver holds the run in ``put_metadata``).  SIGINT and
SIGTERM must end it with 130 / 143, one line on stderr and nothing left
behind; SIGKILL leaves its leftovers to the sweep (``cleanup --sweep-age 0``
or the next backup's), after which nothing is left either.  The chain
stays usable throughout: nothing interrupted is visible, the previous
level restores, the next backup works.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pytest

from freezer_rsyncv2 import scratch
from freezer_rsyncv2.cli import main
from freezer_rsyncv2.storage.local import LocalStorage
from freezer_rsyncv2.storage.sweep import AGE_VARIABLE
from tests import s3server
from tests.functional import treeutil
from tests.s3server import S3Server, pending_uploads

HOST, NAME = "h", "n"
FULL = f"{HOST}_{NAME}"
BIG = 20 << 20                  # bytes of the big file (bzip2: a few seconds)
S3_BIG = 12 << 20               # on S3: past the first 8 MiB part
HANG = 60                       # seconds: hang guard of every wait

#: Runs the command line with ``Storage.put_metadata`` held until a signal
#: comes (the level's data is stored by then, its metadata not).
HOLD_PUBLISH = """
import sys, time
from freezer_rsyncv2 import cli
from freezer_rsyncv2.storage import base
real = base.Storage.put_metadata
def held(self, *args, **kwargs):
    time.sleep(%d)
    return real(self, *args, **kwargs)
base.Storage.put_metadata = held
sys.exit(cli.main(sys.argv[1:]))
""" % HANG

#: Runs the command line with ``abandon`` (the interrupted run's cleanup)
#: announcing itself in $MARK and then taking its time.
SLOW_CLEANUP = """
import os, sys, time
from freezer_rsyncv2 import cli
from freezer_rsyncv2 import handoff
real = handoff.RichQueue.force_stop
def slow(self, *args, **kwargs):
    open(os.environ["MARK"], "w").close()
    time.sleep(%d)
    return real(self, *args, **kwargs)
handoff.RichQueue.force_stop = slow   # the first step of an interrupted backup's cleanup
sys.exit(cli.main(sys.argv[1:]))
""" % HANG

SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]
EXPECTED = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129,
            signal.SIGKILL: -signal.SIGKILL}


class Engine:
    name = "rsyncv2"


def cli(*argv: Any, env: dict | None = None, driver: str | None = None) -> subprocess.Popen:
    head = [sys.executable, "-c", driver] if driver else [sys.executable, "-m",
                                                          "freezer_rsyncv2.cli"]
    return subprocess.Popen(head + [str(a) for a in argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **(env or {})))


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the run did not end within {HANG} s: {err}")
    return proc.returncode, out, err


def run(capsys: Any, *argv: Any) -> str:
    """A run that must succeed (in this process: cheaper); its stdout."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err == ""
    return out


def wait_for(found: Callable[[], Any], proc: subprocess.Popen, what: str) -> Any:
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        hit = found()
        if hit:
            return hit
        if proc.poll() is not None:
            pytest.fail(f"the run ended ({proc.returncode}) before {what}: "
                        f"{proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.003)
    proc.kill()
    pytest.fail(f"no {what} within {HANG} s")


def interrupt(proc: subprocess.Popen, signum: int, found: Callable[[], Any],
              what: str) -> str:
    """Send ``signum`` once ``found()``; check exit code and stderr; the stdout."""
    wait_for(found, proc, what)
    proc.send_signal(signum)
    code, out, err = finish(proc)
    assert code == EXPECTED[signum], (code, err)
    assert "Traceback" not in err and "Traceback" not in out
    if signum != signal.SIGKILL:
        assert err == f"freezer-rsyncv2: interrupted by {signal.Signals(signum).name}\n"
    return out


def temp_files(root: str) -> list[str]:
    """Temporary files: the storage's ``.<name>.tmp-<uuid>``, a restore's ``.rsyncv2-tmp-*``."""
    return [os.path.join(d, f) for d, _dirs, files in os.walk(root)
            for f in files if ".tmp-" in f or f.startswith(".rsyncv2-tmp-")]


def written_temp(root: str) -> Callable[[], list[str]]:
    def found() -> list[str]:
        return [p for p in temp_files(root) if ".data.tmp-" in p
                and os.path.exists(p) and os.path.getsize(p) > 0]
    return found


def visible(storage: Any) -> list[tuple[int, int]]:
    """(chain, level) of every level the storage shows for the name."""
    return [(b.level_zero_timestamp, level) for chain in storage.list_chains(Engine(), FULL)
            for level, b in sorted(chain.items())]


def make_tree(src: str, seed: int, big: int = BIG) -> None:
    treeutil.write(os.path.join(src, "big.bin"), os.urandom(big))
    treeutil.write(os.path.join(src, "small.txt"), b"seed %d\n" % seed)
    treeutil.write(os.path.join(src, "dir/other.bin"), os.urandom(100000))


# -- local storage ------------------------------------------------------------------------

@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_backup_interrupted_local(tmp_path: Any, capsys: Any, monkeypatch: Any,
                                  signum: int) -> None:
    src, container = str(tmp_path / "src"), str(tmp_path / "store")
    base = ["--container", container, "--backup-name", NAME, "--hostname", HOST]
    backup = ["backup", "--path-to-backup", src, *base]
    slow = ["--compression", "bzip2"]     # long enough for the signal to land
    storage = LocalStorage(container)
    make_tree(src, 0)
    kill = signum == signal.SIGKILL

    # level 0: while its data is written, then while it is being published
    interrupt(cli(*backup, *slow), signum, written_temp(container), "a temporary data file")
    assert visible(storage) == []
    assert bool(temp_files(container)) == kill
    interrupt(cli(*backup, driver=HOLD_PUBLISH), signum,
              lambda: glob.glob(f"{container}/data/rsyncv2/{FULL}/*/0_*/data"),
              "the stored data of level 0")
    assert visible(storage) == []
    stored = glob.glob(f"{container}/data/rsyncv2/{FULL}/*/*/*")
    assert bool(stored) == kill
    out = run(capsys, "cleanup", "--sweep-age", "0", *base)
    if kill:
        assert "1 temporary object removed" in out and "1 unfinished level removed" in out
    else:
        assert "nothing to remove" in out
    assert temp_files(container) == []
    assert glob.glob(f"{container}/data/rsyncv2/{FULL}/*/*/*") == []

    assert "backup level 0" in run(capsys, *backup)
    snap0 = treeutil.snapshot(src)
    [(chain, level)] = visible(storage)
    assert level == 0

    # level N: a changed big file, interrupted at the same two points
    make_tree(src, 1)
    interrupt(cli(*backup, *slow), signum, written_temp(container), "a temporary data file")
    interrupt(cli(*backup, driver=HOLD_PUBLISH), signum,
              lambda: glob.glob(f"{container}/data/rsyncv2/{FULL}/*/1_*/data"),
              "the stored data of level 1")
    assert visible(storage) == [(chain, 0)]
    assert bool(temp_files(container)) == kill
    assert bool(glob.glob(f"{container}/data/rsyncv2/{FULL}/*/1_*")) == kill

    # the previous level restores; the next backup sweeps what SIGKILL left
    dest = str(tmp_path / "restored0")
    run(capsys, "restore", "--restore-abs-path", dest, *base)
    treeutil.assert_same_tree(snap0, treeutil.snapshot(dest))
    monkeypatch.setenv(AGE_VARIABLE, "0")
    monkeypatch.setattr(scratch, "SETTLE", 0.0)     # the killed runs' scratch directories are seconds old
    out = run(capsys, *backup)
    assert "backup level 1" in out
    assert ("swept leftovers of interrupted runs: 1 temporary object removed" in out) == kill
    # four killed runs, each with its fetched manifests in a scratch directory of this test's TMPDIR
    assert ("4 local scratch directories removed" in out) == kill
    assert glob.glob(os.path.join(tempfile.gettempdir(), "rsyncv2-*")) == []
    assert temp_files(container) == []
    assert [level for _c, level in visible(storage)] == [0, 1]
    assert len(glob.glob(f"{container}/data/rsyncv2/{FULL}/*/*")) == 2
    dest = str(tmp_path / "restored1")
    run(capsys, "restore", "--restore-abs-path", dest, *base)
    treeutil.assert_same_tree(treeutil.snapshot(src), treeutil.snapshot(dest))


def test_second_signal_ends_the_run_at_once(tmp_path: Any, capsys: Any) -> None:
    src, container = str(tmp_path / "src"), str(tmp_path / "store")
    base = ["--container", container, "--backup-name", NAME, "--hostname", HOST]
    make_tree(src, 0)
    mark = str(tmp_path / "cleanup-started")
    proc = cli("backup", "--path-to-backup", src, "--compression", "bzip2", *base,
               driver=SLOW_CLEANUP, env={"MARK": mark})
    wait_for(written_temp(container), proc, "a temporary data file")
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: os.path.exists(mark), proc, "the cleanup")
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc)
    assert code == -signal.SIGTERM          # the default action: at once
    assert "Traceback" not in err
    assert "Traceback" not in out
    assert temp_files(container)            # the cleanup never ran...
    run(capsys, "cleanup", "--sweep-age", "0", *base)
    assert temp_files(container) == []      # ...the sweep did its work


# -- S3 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_backup_interrupted_s3(tmp_path: Any, capsys: Any, s3_server: S3Server,
                               signum: int) -> None:
    bucket = s3server.unique_bucket("sig")
    client = s3_server.client()
    src = str(tmp_path / "src")
    base = ["--storage", "s3", "--container", f"{bucket}/pre", "--endpoint", s3_server.endpoint,
            "--access-key", s3_server.access_key, "--secret-key", s3_server.secret_key,
            "--backup-name", NAME, "--hostname", HOST]
    backup = ["backup", "--path-to-backup", src, *base]
    slow = ["--compression", "bzip2"]     # long enough for the signal to land
    storage = s3_server.storage(bucket + "/pre")
    kill = signum == signal.SIGKILL

    def uploading() -> list:
        return pending_uploads(client, bucket)

    def uploaded_part() -> list:
        # a part sent: the upload is then recent by its parts too (moto
        # dates every upload's start in 2010)
        return [u for u in uploading() if client.list_parts(
            Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts")]

    def data_keys(level: int) -> list[str]:
        return [k for k in s3server.object_keys(client, bucket, "pre/data/")
                if f"/{level}_" in k]

    make_tree(src, 0, S3_BIG)
    interrupt(cli(*backup, *slow), signum, uploaded_part, "an uploaded part")
    assert visible(storage) == []
    assert bool(uploading()) == kill
    out = run(capsys, "cleanup", "--sweep-age", "0", *base)
    assert ("1 incomplete upload aborted" in out) == kill
    assert uploading() == []
    assert data_keys(0) == []

    run(capsys, *backup)
    snap0 = treeutil.snapshot(src)
    make_tree(src, 1, S3_BIG)
    interrupt(cli(*backup, *slow), signum, uploaded_part, "an uploaded part")
    interrupt(cli(*backup, driver=HOLD_PUBLISH), signum, lambda: data_keys(1),
              "the stored data of level 1")
    assert [level for _c, level in visible(storage)] == [0]
    assert bool(uploading()) == kill
    assert bool(data_keys(1)) == kill

    dest = str(tmp_path / "restored0")
    run(capsys, "restore", "--restore-abs-path", dest, *base)
    treeutil.assert_same_tree(snap0, treeutil.snapshot(dest))
    out = run(capsys, *backup, "--sweep-age", "0")
    assert ("1 incomplete upload aborted" in out and "1 unfinished level removed" in out) == kill
    assert uploading() == []
    assert [level for _c, level in visible(storage)] == [0, 1]
    level_dirs = {k.rsplit("/", 2)[1] for k in s3server.object_keys(client, bucket, "pre/data/")}
    assert len(level_dirs) == 2
    dest = str(tmp_path / "restored1")
    run(capsys, "restore", "--restore-abs-path", dest, *base)
    treeutil.assert_same_tree(treeutil.snapshot(src), treeutil.snapshot(dest))


# -- restore --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chain(tmp_path_factory: Any) -> dict[str, Any]:
    """Two levels and the tree of each; level 0 in bzip2, so a restore takes a second or two."""
    tmp = tmp_path_factory.mktemp("chain")
    src, container = str(tmp / "src"), str(tmp / "store")
    base = ["--container", container, "--backup-name", NAME, "--hostname", HOST]
    make_tree(src, 0)
    assert main(["backup", "--path-to-backup", src, "--compression", "bzip2", *base]) == 0
    snap0 = treeutil.snapshot(src, times=False)
    make_tree(src, 1)
    assert main(["backup", "--path-to-backup", src, *base]) == 0
    return {"src": src, "base": base, "snaps": [snap0, treeutil.snapshot(src, times=False)]}


@pytest.mark.parametrize("signum", SIGNALS + [signal.SIGHUP],
                         ids=lambda s: signal.Signals(s).name)
def test_restore_interrupted(tmp_path: Any, capsys: Any, chain: dict[str, Any],
                             signum: int) -> None:
    base = chain["base"]
    old, new = chain["snaps"]
    dest = str(tmp_path / "dest")
    # an older restore is there: the interrupted one runs over it
    run(capsys, "restore", "--restore-abs-path", dest, "--restore-from-date",
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(_level_zero_ts(base))), *base)
    treeutil.assert_same_tree(old, treeutil.snapshot(dest, times=False))

    def staged() -> list[str]:
        return [p for p in temp_files(dest) if os.path.getsize(p) > 0]

    interrupt(cli("restore", "--restore-abs-path", dest, "--overwrite", *base), signum,
              staged, "a staged file")
    left = temp_files(dest)
    assert bool(left) == (signum == signal.SIGKILL)
    # every final name holds the old content or the new one, never a mix
    now = treeutil.snapshot(dest, times=False)
    for path, desc in now.items():
        if b".rsyncv2-tmp-" in path:
            continue
        assert desc in (old.get(path), new.get(path)), path
    run(capsys, "restore", "--restore-abs-path", dest, "--overwrite", *base)
    restored = {p: d for p, d in treeutil.snapshot(dest, times=False).items()
                if b".rsyncv2-tmp-" not in p}
    treeutil.assert_same_tree(new, restored)


def _level_zero_ts(base: list[str]) -> int:
    container = base[base.index("--container") + 1]
    [chain] = LocalStorage(container, skip_prepare=True).list_chains(Engine(), FULL)
    return chain[0].timestamp


# -- a library call (freezer-agent's process model) ----------------------------------------

HOST_PROGRAM = """
import sys
from freezer_rsyncv2.engine.rsyncv2 import Rsyncv2Engine
from freezer_rsyncv2 import scratch
from freezer_rsyncv2.cli import main
from freezer_rsyncv2.storage.local import LocalStorage
engine = Rsyncv2Engine(storage=LocalStorage(sys.argv[2]), compression="bzip2")
try:
    engine.backup(sys.argv[1], "h_n", True, None, None, None)
finally:
    print("the host's own cleanup ran", flush=True)
print("not reached")
"""


def test_library_call_ends_by_the_signal_after_cleanup(tmp_path: Any) -> None:
    """As inside freezer-agent: the host's ``finally`` runs, then the process
    ends by SIGTERM itself (freezer-scheduler reads -15 as "aborted")."""
    src, container = str(tmp_path / "src"), str(tmp_path / "store")
    make_tree(src, 0)
    proc = subprocess.Popen([sys.executable, "-c", HOST_PROGRAM, src, container],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(written_temp(container), proc, "a temporary data file")
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc)
    assert code == -signal.SIGTERM
    assert "the host's own cleanup ran" in out and "not reached" not in out
    assert "Traceback" not in err
    assert err.splitlines()[-1] == "freezer-rsyncv2: interrupted by SIGTERM"
    assert temp_files(container) == []
    assert visible(LocalStorage(container)) == []


# -- the cleanup command and the age ---------------------------------------------------------

def test_cleanup_age_from_option_environment_and_config(tmp_path: Any, capsys: Any,
                                                        monkeypatch: Any) -> None:
    container = tmp_path / "store"
    base = ["--container", str(container), "--backup-name", NAME, "--hostname", HOST]
    level = container / "data" / "rsyncv2" / FULL / "1700000000" / "0_1700000000"
    level.mkdir(parents=True)
    temp = level / (".data.tmp-" + "ab" * 16)
    temp.write_bytes(b"x" * 2048)
    when = time.time() - 600
    os.utime(temp, (when, when))
    assert "1 kept (changed in the last 1 day, or in use)" in run(capsys, "cleanup", *base)
    config = tmp_path / "r.conf"
    config.write_text("[rsyncv2]\nsweep_age = 3600\n")
    assert "1 kept (changed in the last 1 hour" in run(
        capsys, "cleanup", "--config-file", config, *base)
    monkeypatch.setenv(AGE_VARIABLE, "900")
    assert "1 kept (changed in the last 15 minutes" in run(
        capsys, "cleanup", "--config-file", config, *base)
    out = run(capsys, "cleanup", "--sweep-age", "300", "--config-file", config, *base)
    assert out.endswith(f"\ncleanup of {FULL}: 1 temporary object removed (2.0 KiB)\n")
    assert not level.exists()


def test_bad_sweep_ages_are_usage_errors(tmp_path: Any, capsys: Any, monkeypatch: Any) -> None:
    base = ["cleanup", "--container", str(tmp_path), "--backup-name", NAME]
    with pytest.raises(SystemExit) as caught:
        main([*base, "--sweep-age", "-1"])
    assert caught.value.code == 2
    assert "--sweep-age" in capsys.readouterr().err
    monkeypatch.setenv(AGE_VARIABLE, "tomorrow")
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.startswith("freezer-rsyncv2: error: %s must be" % AGE_VARIABLE)
    assert err.count("\n") == 1
