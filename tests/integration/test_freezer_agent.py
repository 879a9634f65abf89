"""freezer-agent 19.0.0 with ``--engine rsyncv2`` runs our engine, with unchanged command lines."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import random
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

import freezer_rsyncv2
from freezer_rsyncv2.freezer_hook import DISABLE_ENV, TARGET
from tests.functional import treeutil
from tests.integration.conftest import HOST

pytestmark = pytest.mark.integration

OUR_LINE = "using freezer_rsyncv2 %s" % freezer_rsyncv2.__version__


def storage_args(container: Any) -> list[str]:
    """freezer-agent's storage options: a Path is a local container; any
    other container gives its own (``agent_args()``, e.g. an S3 bucket)."""
    if isinstance(container, Path):
        return ["--storage", "local", "--container", str(container)]
    return container.agent_args()


def common(container: Any, name: str) -> list[str]:
    return [*storage_args(container), "--engine", "rsyncv2",
            "--backup-name", name, "--hostname", HOST]


def backup_args(container: Any, name: str, src: Path, *extra: str) -> list[str]:
    return ["--action", "backup", "--mode", "fs", "--incremental",
            "--path-to-backup", str(src), *common(container, name), *extra]


def restore_args(container: Any, name: str, dest: Path, *extra: str) -> list[str]:
    return ["--action", "restore", "--restore-abs-path", str(dest),
            *common(container, name), *extra]


def levels(container: Path, name: str, engine: str = "rsyncv2"
           ) -> dict[int, list[int]]:
    """level -> timestamps, read from the local container's metadata tree."""
    found: dict[int, list[int]] = {}
    root = container / "metadata" / engine / ("%s_%s" % (HOST, name))
    for chain in sorted(root.iterdir()) if root.is_dir() else []:
        for level_dir in chain.iterdir():
            if (level_dir / "metadata").is_file():
                level, ts = level_dir.name.split("_")
                found.setdefault(int(level), []).append(int(ts))
    return found


def stored_metadata(container: Path, name: str, level: int) -> dict:
    root = container / "metadata" / "rsyncv2" / ("%s_%s" % (HOST, name))
    for path in root.glob("*/%d_*/metadata" % level):
        return json.loads(path.read_text())
    raise AssertionError("no level %d metadata under %s" % (level, root))


def utc_date(ts: int) -> str:
    """freezer-agent reads --restore-from-date without a zone as UTC."""
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S")


def same_tree(src: Path | dict, dest: Path) -> None:
    expected = src if isinstance(src, dict) else treeutil.snapshot(str(src))
    treeutil.assert_same_tree(expected, treeutil.snapshot(str(dest)))


def rand(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def write(path: Path, data: bytes, mtime_ns: int | None = None) -> None:
    treeutil.write(str(path), data, mtime_ns)


# -- the tree and its three states ------------------------------------------

T0 = 1_700_000_000 * 10**9          # file mtimes we set explicitly (ns)


def make_level0(src: Path, rng: random.Random) -> None:
    write(src / "big.bin", rand(rng, 4 << 20), T0)
    write(src / "docs/readme.txt", b"read me\n" * 100, T0)
    write(src / "docs/sub/notes.txt", b"notes\n", T0)
    write(src / "todelete.txt", b"bye\n", T0)
    write(src / "torename.bin", rand(rng, 300_000), T0)
    write(src / "modes.sh", b"#!/bin/sh\necho hi\n", T0)
    os.chmod(src / "modes.sh", 0o755)
    os.symlink("docs/readme.txt", src / "link")
    write(src / "dir2file/inner.txt", b"inside\n", T0)
    write(src / "hard1", b"linked twice\n", T0)
    os.link(src / "hard1", src / "hard2")
    write(src / "empty.txt", b"", T0)
    (src / "emptydir").mkdir()


def make_level1(src: Path, rng: random.Random) -> None:
    data = (src / "big.bin").read_bytes()
    write(src / "big.bin", data[:1000] + rand(rng, 5000) + data[1000:],
          T0 + 10**12)
    (src / "todelete.txt").unlink()
    (src / "moved").mkdir()
    os.rename(src / "torename.bin", src / "moved/renamed.bin")
    os.chmod(src / "modes.sh", 0o700)
    (src / "link").unlink()
    os.symlink("docs/sub/notes.txt", src / "link")
    shutil.rmtree(src / "dir2file")
    write(src / "dir2file", b"now a file\n", T0 + 10**12)


def make_level2(src: Path, rng: random.Random) -> None:
    data = bytearray((src / "big.bin").read_bytes())
    data[2_000_000:2_000_010] = b"0123456789"
    write(src / "big.bin", bytes(data) + rand(rng, 100_000), T0 + 2 * 10**12)
    write(src / "new.txt", b"brand new\n", T0 + 2 * 10**12)
    write(src / "docs/readme.txt", b"read me again\n" * 90, T0 + 2 * 10**12)
    os.utime(src / "docs/sub/notes.txt", ns=(T0 + 5, T0 + 5))
    (src / "emptydir").rmdir()
    (src / "empty.txt").unlink()
    write(src / "empty.txt/now_a_dir", b"x\n", T0 + 2 * 10**12)


def test_incremental_backups_and_restores(agent, tmp_path):
    """Three levels with inserts, deletes, a rename, chmod, retargeted link, dir<->file."""
    rng = random.Random(3)
    src, container = tmp_path / "src", tmp_path / "container"
    src.mkdir()
    snaps = []
    for level, change in enumerate((make_level0, make_level1, make_level2)):
        change(src, rng)
        snaps.append(treeutil.snapshot(str(src)))
        run = agent(*backup_args(container, "main", src)).ok()
        assert OUR_LINE in run.log, run.explain()
        assert ("POST", "/v3/auth/tokens") in agent.keystone.requests
        assert run.metadata["curr_backup_level"] == level, run.metadata
        assert run.metadata["engine_name"] == "rsyncv2"
    stored = levels(container, "main")
    assert sorted(stored) == [0, 1, 2] and all(len(v) == 1 for v in stored.values())
    meta = stored_metadata(container, "main", 1)
    assert meta["engine_name"] == "rsyncv2"
    assert meta["compression"] == "gzip"
    # --rsync-block-size not given: chosen per file, not Freezer's 4096.
    assert meta["rsync_block_size"] == 0
    assert meta["engine_version"] == freezer_rsyncv2.__version__
    # Level 1: the 5000-byte insert near the start of big.bin must not
    # resend the rest of it, nor the renamed 300 kB file; level 2: the
    # 100 kB appended and little more.
    for level, limit in ((1, 64 << 10), (2, 100_000 + (64 << 10))):
        size = next(container.glob("data/rsyncv2/*/*/%d_*/data" % level)
                    ).stat().st_size
        assert size < limit, "level %d stored %d bytes" % (level, size)

    dest = tmp_path / "restored"
    run = agent(*restore_args(container, "main", dest)).ok()
    assert OUR_LINE in run.log
    treeutil.assert_same_tree(snaps[2], treeutil.snapshot(str(dest)))

    middle = utc_date(stored[1][0])
    dest = tmp_path / "restored-middle"
    agent(*restore_args(container, "main", dest,
                        "--restore-from-date", middle)).ok()
    treeutil.assert_same_tree(snaps[1], treeutil.snapshot(str(dest)))

    # Our CLI restores the agent's backup from the same container.
    dest = tmp_path / "restored-cli"
    done = agent.cli("restore", "--container", str(container), "--backup-name",
                     "main", "--hostname", HOST, "--restore-abs-path", str(dest))
    assert done.returncode == 0, done.stdout + done.stderr
    treeutil.assert_same_tree(snaps[2], treeutil.snapshot(str(dest)))
    listing = agent.cli("list", "--container", str(container), "--hostname",
                        HOST, "--backup-name", "main")
    assert listing.returncode == 0 and "level 2" in listing.stdout, listing


def small_tree(src: Path, rng: random.Random, tag: bytes = b"") -> None:
    write(src / "a.txt", b"alpha " + tag + b"\n")
    write(src / "d/b.bin", rand(rng, 200_000))
    os.symlink("a.txt", src / "to-a")


def test_xz_compression(agent, tmp_path):
    rng = random.Random(5)
    src, container = tmp_path / "src", tmp_path / "container"
    small_tree(src, rng)
    agent(*backup_args(container, "xz", src, "--compression", "xz")).ok()
    write(src / "c.txt", rand(rng, 50_000))
    agent(*backup_args(container, "xz", src, "--compression", "xz")).ok()
    assert stored_metadata(container, "xz", 0)["compression"] == "xz"
    assert stored_metadata(container, "xz", 1)["compression"] == "xz"
    dest = tmp_path / "restored"
    # The restore command line says nothing of xz: it is read from the backup.
    agent(*restore_args(container, "xz", dest)).ok()
    same_tree(src, dest)


def test_encrypted_round_trip(agent, tmp_path):
    rng = random.Random(7)
    src, container = tmp_path / "src", tmp_path / "container"
    marker = b"PLAINTEXT-MARKER-1234567890"
    small_tree(src, rng, marker)
    write(src / "secret-name-marker.txt", marker * 100)
    pass_file = tmp_path / "pass"
    pass_file.write_text("correct horse battery staple\n")
    agent(*backup_args(container, "enc", src,
                       "--encrypt-pass-file", str(pass_file))).ok()
    write(src / "d/b.bin", rand(rng, 200_000))
    agent(*backup_args(container, "enc", src,
                       "--encrypt-pass-file", str(pass_file))).ok()
    assert stored_metadata(container, "enc", 1)["encryption"] is True
    for stored in container.glob("data/rsyncv2/**/*"):
        if stored.is_file():
            blob = stored.read_bytes()
            assert marker not in blob and b"secret-name-marker" not in blob, \
                "%s holds plaintext" % stored
    dest = tmp_path / "restored"
    agent(*restore_args(container, "enc", dest,
                        "--encrypt-pass-file", str(pass_file))).ok()
    same_tree(src, dest)


def test_wrong_pass_file_fails(agent, tmp_path):
    rng = random.Random(8)
    src, container = tmp_path / "src", tmp_path / "container"
    small_tree(src, rng)
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text("the right one\n")
    wrong.write_text("the wrong one\n")
    agent(*backup_args(container, "enc", src,
                       "--encrypt-pass-file", str(right))).ok()
    dest = tmp_path / "restored"
    run = agent(*restore_args(container, "enc", dest,
                              "--encrypt-pass-file", str(wrong)), timeout=120)
    assert run.returncode != 0, run.explain()
    assert "freezer_rsyncv2.errors.AuthenticationError" in run.log, \
        run.explain()
    assert "Critical Error: level 0 of %s_enc" % HOST in run.log
    leftovers = [p for p in dest.rglob("*") if p.is_file()] \
        if dest.exists() else []
    assert leftovers == [], leftovers
    # No pass file at all: a failed run too, not a garbled restore.
    run = agent(*restore_args(container, "enc", tmp_path / "restored2"),
                timeout=120)
    assert run.returncode != 0, run.explain()
    assert "freezer_rsyncv2.errors." in run.log, run.explain()


def test_single_file_source(agent, tmp_path):
    """A file as --path-to-backup: the agent chdirs to its parent and passes its name."""
    rng = random.Random(9)
    src, container = tmp_path / "src", tmp_path / "container"
    write(src / "only.bin", rand(rng, 300_000), T0)
    write(src / "other.txt", b"not backed up\n")
    agent(*backup_args(container, "file", src / "only.bin")).ok()
    data = bytearray((src / "only.bin").read_bytes())
    data[1000:1010] = b"X" * 10
    write(src / "only.bin", bytes(data), T0 + 10**9)
    run = agent(*backup_args(container, "file", src / "only.bin")).ok()
    assert run.metadata["curr_backup_level"] == 1
    dest = tmp_path / "restored"
    agent(*restore_args(container, "file", dest)).ok()
    want = treeutil.snapshot(str(src))
    got = treeutil.snapshot(str(dest))
    assert got == {b"only.bin": want[b"only.bin"]}


def test_options_reach_the_engine(agent, tmp_path):
    """--exclude, --dereference-symlink, segment and block sizes, --dry-run, --overwrite."""
    rng = random.Random(11)
    src, container = tmp_path / "src", tmp_path / "container"
    write(src / "keep.txt", b"keep\n")
    write(src / "noise.log", b"excluded\n")
    write(src / "sub/more.log", b"excluded too\n")
    write(src / "data.bin", rand(rng, 1 << 20))
    os.symlink("data.bin", src / "link")
    opts = ("--exclude", "*.log", "--dereference-symlink", "soft",
            "--max-segment-size", "65536", "--rsync-block-size", "2048",
            "--compression", "bzip2")
    agent(*backup_args(container, "opts", src, *opts)).ok()
    meta = stored_metadata(container, "opts", 0)
    assert meta["compression"] == "bzip2" and meta["rsync_block_size"] == 2048

    dest = tmp_path / "restored"
    # Restore chunks (the restore run's --max-segment-size) differ from
    # the backup's segments on purpose.
    agent(*restore_args(container, "opts", dest, "--max-segment-size",
                        "70001")).ok()
    got = treeutil.snapshot(str(dest))
    want = treeutil.snapshot(str(src))
    assert set(got) == set(want) - {b"noise.log", b"sub/more.log"}
    link = got.pop(b"link")
    assert link["fmt"] == stat.S_IFREG
    assert link["sha256"] == want[b"data.bin"]["sha256"]
    for path in got:
        if path != b"sub":      # its mtime moved when more.log was written
            assert got[path] == want[path], path

    # --dry-run: the engine runs, nothing is stored.
    write(src / "keep.txt", b"changed\n")
    before = levels(container, "opts")
    agent(*backup_args(container, "opts", src, "--dry-run", *opts)).ok()
    assert levels(container, "opts") == before

    # --overwrite: restoring into the non-empty directory again.
    run = agent(*restore_args(container, "opts", dest))
    assert run.returncode != 0 and "--overwrite" in run.log, run.explain()
    agent(*restore_args(container, "opts", dest, "--overwrite")).ok()


def test_level_options(agent, tmp_path):
    """--max-level, --always-level and --restart-always-level as Freezer defines them."""
    rng = random.Random(13)
    src, container = tmp_path / "src", tmp_path / "container"
    small_tree(src, rng)

    def run(name: str, *extra: str) -> int:
        write(src / "a.txt", rand(rng, 100))
        done = agent(*backup_args(container, name, src, *extra)).ok()
        return done.metadata["curr_backup_level"]

    assert [run("max", "--max-level", "1") for _ in range(3)] == [0, 1, 0]
    assert [run("always", "--always-level", "1") for _ in range(3)] == [0, 1, 1]
    # The same chain with --restart-always-level 1 (day): still fresh, so
    # level 1 again; made two days old (renamed in the container), a new
    # chain starts.
    restart = ("--always-level", "1", "--restart-always-level", "1")
    assert run("always", *restart) == 1
    for kind in ("metadata", "data"):
        for level_dir in container.glob("%s/rsyncv2/*_always/*/*_*" % kind):
            level, ts = level_dir.name.split("_")
            level_dir.rename(level_dir.with_name(
                "%s_%d" % (level, int(ts) - 2 * 86400)))
    assert run("always", *restart) == 0

    # --action admin goes through Freezer's storage.remove_older_than.
    agent("--action", "admin", "--remove-before-date", "2099-01-01T00:00:00",
          *common(container, "max")).ok()
    assert levels(container, "max") == {}
    assert levels(container, "always")


def test_scheduler_style_config_file(agent, tmp_path):
    """freezer-scheduler runs `freezer-agent --config FILE` with the job's [action] keys."""
    rng = random.Random(29)
    src, container = tmp_path / "src", tmp_path / "container"
    small_tree(src, rng)
    job = tmp_path / "job.ini"

    def config(**action: str) -> str:
        keys = {"storage": "local", "container": str(container),
                "engine_name": "rsyncv2", "backup_name": "sched",
                "hostname": HOST, "compression": "xz", **action}
        job.write_text("[action]\n" + "".join(
            "%s = %s\n" % kv for kv in keys.items()))
        return str(job)

    run = agent("--config", config(action="backup", mode="fs",
                                   path_to_backup=str(src),
                                   incremental="True")).ok()
    assert OUR_LINE in run.log, run.explain()
    assert stored_metadata(container, "sched", 0)["compression"] == "xz"
    dest = tmp_path / "restored"
    agent("--config", config(action="restore",
                             restore_abs_path=str(dest))).ok()
    same_tree(src, dest)


def test_engine_errors_fail_the_run(agent, tmp_path):
    """Errors raised by our engine give a non-zero exit and our message, never a hang."""
    rng = random.Random(17)
    src, container = tmp_path / "src", tmp_path / "container"
    small_tree(src, rng)
    run = agent(*backup_args(container, "err", src, "--rsync-block-size", "1"),
                timeout=60)
    assert run.returncode != 0, run.explain()
    assert "Critical Error: rsync_block_size must be between" in run.log, \
        run.explain()

    agent(*backup_args(container, "err", src)).ok()
    write(src / "a.txt", b"second level\n")
    agent(*backup_args(container, "err", src)).ok()
    data = next(container.glob("data/rsyncv2/*/*/1_*/data"))
    data.write_bytes(data.read_bytes()[:-7])
    run = agent(*restore_args(container, "err", tmp_path / "restored"),
                timeout=60)
    assert run.returncode != 0, run.explain()
    assert "freezer_rsyncv2.errors." in run.log, run.explain()
    assert "Critical Error: " in run.log

    # The storage fails while the engine streams (many small segments):
    # Freezer's LocalStorage cannot create the level's directory.
    write(src / "big.bin", rand(rng, 3 << 20))
    blocked = tmp_path / "blocked"
    write(blocked / "data" / "rsyncv2" / ("%s_err" % HOST), b"a file")
    run = agent(*backup_args(blocked, "err", src, "--max-segment-size", "65536"),
                timeout=60)
    assert run.returncode != 0, run.explain()
    assert "Critical Error: [Errno 20] Not a directory" in run.log, run.explain()
    assert levels(blocked, "err") == {}


def test_agent_restores_our_cli_backup(agent, tmp_path):
    rng = random.Random(19)
    src, container = tmp_path / "src", tmp_path / "container"
    small_tree(src, rng)

    def cli_backup() -> None:
        done = agent.cli("backup", "--path-to-backup", str(src), "--container",
                         str(container), "--backup-name", "cli", "--hostname",
                         HOST, "--compression", "zstd")
        assert done.returncode == 0, done.stdout + done.stderr

    cli_backup()
    write(src / "d/c.txt", rand(rng, 10_000))
    os.remove(src / "a.txt")
    cli_backup()
    assert sorted(levels(container, "cli")) == [0, 1]
    dest = tmp_path / "restored"
    # zstd is not among the agent's --compression choices: restore reads
    # the codec from the backup.
    agent(*restore_args(container, "cli", dest)).ok()
    same_tree(src, dest)


def test_opt_out_loads_freezers_engine(agent, freezer_venv, tmp_path):
    rng = random.Random(23)
    src, container = tmp_path / "src", tmp_path / "container"
    write(src / "a.txt", b"alpha\n")
    write(src / "b.bin", rand(rng, 10_000))
    probe = "import %s as m; print(m.__file__)" % TARGET
    for env, expected in (({}, "freezer_rsyncv2/freezer_engine.py"),
                          ({DISABLE_ENV: "1"},
                           "freezer/engine/rsyncv2/rsyncv2.py")):
        done = agent.venv_python(probe, env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().endswith(expected), done.stdout

    run = agent(*backup_args(container, "optout", src),
                env={DISABLE_ENV: "1"}).ok()
    assert OUR_LINE not in run.log
    assert "freezer.engine.rsyncv2.rsyncv2" in run.log, run.explain()
    # Freezer's own engine names itself "rsync" in the storage layout.
    assert levels(container, "optout", engine="rsync")
    assert not levels(container, "optout")


def _record_hash_ok(site: Path, dist_info: Path) -> list[str]:
    bad = []
    for line in (dist_info / "RECORD").read_text().splitlines():
        path, digest, _size = line.rsplit(",", 2)
        if not digest.startswith("sha256="):
            continue
        full = site / path
        actual = base64.urlsafe_b64encode(
            hashlib.sha256(full.read_bytes()).digest()).rstrip(b"=").decode()
        if "sha256=" + actual != digest:
            bad.append(path)
    return bad


def test_install_layout_and_uninstall(agent, freezer_venv):
    """The .pth is in our RECORD, Freezer's files are untouched, uninstall removes the hook."""
    site = freezer_venv.site_packages
    pth = site / "freezer_rsyncv2_hook.pth"
    assert pth.is_file()
    ours = next(site.glob("freezer_rsyncv2-*.dist-info"))
    assert "freezer_rsyncv2_hook.pth," in (ours / "RECORD").read_text()
    freezer = next(site.glob("freezer-19.0.0.dist-info"))
    assert _record_hash_ok(site, freezer) == []

    done = freezer_venv.pip("uninstall", "-y", "freezer-rsyncv2")
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        assert not pth.exists()
        probe = agent.venv_python("import %s as m; print(m.__file__)" % TARGET)
        assert probe.stdout.strip().endswith(
            "freezer/engine/rsyncv2/rsyncv2.py"), probe
        assert _record_hash_ok(site, freezer) == []
    finally:
        freezer_venv.install_ours()
    assert pth.is_file()
