"""``freezer-rsyncv2 --storage swift`` against a real Swift cluster: a 1 GiB file in segments over
three levels, a backup killed mid-upload and its sweep, wrong credentials."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.swiftserver import SwiftServer, unique_container

MIB = 1 << 20
GIB = 1 << 30
TIMEOUT = 600


def cli(server: SwiftServer, *argv: object, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Our CLI in a child process, logging in to the cluster from OS_* variables (tempauth)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "ST_"))}
    environ.update(server.env(), **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "freezer_rsyncv2.cli", *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)


def run(server: SwiftServer, *argv: object, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = cli(server, *argv, env=env)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"freezer-rsyncv2 {argv[0]} did not end within {TIMEOUT} s: {err}")
    return proc.returncode, out, err


def common(container: str, name: str) -> list[str]:
    return ["--storage", "swift", "--container", container, "--hostname", "h", "--backup-name", name]


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(8 * MIB):
            sha.update(block)
    return sha.hexdigest()


def scatter(path: Path, rng: random.Random, regions: int, size: int) -> None:
    """Write ``regions`` random runs of ``size`` bytes at random places of ``path`` (in place)."""
    length = path.stat().st_size
    with open(path, "r+b") as handle:
        for _ in range(regions):
            handle.seek(rng.randrange(0, length - size))
            handle.write(rng.randbytes(size))


def test_a_1_gib_file_in_segments_over_three_levels(swift_server: SwiftServer, tmp_path: Path) -> None:
    """A sparse 1 GiB image with 48 MiB of data, then two levels of scattered edits; restore exact."""
    rng = random.Random(1)
    container = unique_container("gib")
    src = tmp_path / "src"
    src.mkdir()
    image = src / "disk.img"
    with open(image, "wb") as handle:
        handle.truncate(GIB)
    scatter(image, rng, 48, MIB)
    times = []
    for level, (regions, size) in enumerate(((0, 0), (20, 4096), (3, 2 * MIB))):
        scatter(image, rng, regions, size) if regions else None
        os.utime(image, (1_700_000_000 + level, 1_700_000_000 + level))
        start = time.monotonic()
        code, out, err = run(swift_server, "backup", *common(container, "img"), "--path-to-backup", src,
                             "--max-segment-size", 4 * MIB)
        times.append(time.monotonic() - start)
        assert code == 0 and f"backup level {level} " in out, out + err
    print(f"\n1 GiB image to Swift: levels 0, 1, 2 in {', '.join(f'{t:.1f}' for t in times)} s",
          file=sys.stderr)
    names = swift_server.object_names(container, "data/rsyncv2/h_img/")
    level0 = [n for n in names if "/0_" in n and "/segments/" in n]
    assert len(level0) >= 12, level0        # 48 MiB of data in 4 MiB segments
    assert len([n for n in names if n.endswith("/data")]) == 3

    dest = tmp_path / "restored"
    start = time.monotonic()
    code, out, err = run(swift_server, "restore", *common(container, "img"), "--restore-abs-path", dest)
    print(f"1 GiB image from Swift: restore in {time.monotonic() - start:.1f} s", file=sys.stderr)
    assert code == 0 and "up to level 2" in out, out + err
    assert (dest / "disk.img").stat().st_size == GIB
    assert digest(dest / "disk.img") == digest(image)


def test_a_killed_backup_leaves_no_level_and_the_sweep_no_segment(swift_server: SwiftServer,
                                                                  tmp_path: Path) -> None:
    container = unique_container("kill")
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "random.bin", "wb") as handle:
        for _ in range(128):
            handle.write(os.urandom(MIB))
    proc = cli(swift_server, "backup", *common(container, "k"), "--path-to-backup", src,
               "--max-segment-size", MIB, "--compression", "none")
    segments = "data/rsyncv2/h_k/"
    deadline = time.monotonic() + 120
    while not swift_server.object_names(container, segments):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no segment stored within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    left = swift_server.object_names(container, segments)
    assert left and all("/segments/" in n for n in left), left      # killed before the manifest
    assert swift_server.object_names(container, "metadata/") == []

    code, out, err = run(swift_server, "list", *common(container, "k"))
    assert code == 1 and "no backup named h_k" in err, out + err
    code, out, err = run(swift_server, "restore", *common(container, "k"), "--restore-abs-path",
                         tmp_path / "nothing")
    assert code == 1 and 'No backup named "h_k"' in err, out + err

    code, out, err = run(swift_server, "cleanup", *common(container, "k"), "--sweep-age", 0)
    assert code == 0 and "1 unfinished level" in out, out + err
    assert swift_server.object_names(container) == []


@pytest.mark.parametrize("command", ["backup", "list"])
def test_wrong_credentials_exit_1_with_one_line(swift_server: SwiftServer, tmp_path: Path,
                                                command: str) -> None:
    extra = ["--path-to-backup", tmp_path] if command == "backup" else []
    code, out, err = run(swift_server, command, *common(unique_container("auth"), "a"), *extra,
                         env={"OS_PASSWORD": "not-the-key"})
    assert code == 1, out + err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("freezer-rsyncv2: error: Swift "), err
    assert "refused" in lines[0] and "not-the-key" not in lines[0]
    assert out == ""
