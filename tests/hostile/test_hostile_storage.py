"""A hostile container: someone who can write to the storage (but has no passphrase).

Each case builds the container state such a person can leave (a FIFO or a
symlink to /dev/zero under a stored name, a sparse giant, odd or huge level
and chain names, a level directory without its metadata) and runs the real
command line on it in a subprocess, bounded in time, address space and file
size: a regression fails the test instead of hanging or filling the disk.
The outcome is either the documented behaviour (the odd entry is ignored,
with one warning) or a one-line typed error, never a traceback.
"""

from __future__ import annotations

import datetime
import os
import resource
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from freezer_rsyncv2 import errors, verify
from freezer_rsyncv2.engine import rsyncv2
from freezer_rsyncv2.storage import layout
from freezer_rsyncv2.storage.local import LocalStorage

NAME = "h_v"
SECONDS = 60        # per command; each takes well under a second when right
ADDRESS_SPACE = 3 << 30
FILE_SIZE = 64 << 20


class Container:
    """A two-level backup of ``src`` (level 1 adds b.txt) in ``root``, and commands on it."""

    def __init__(self, root: Path, src: Path, scratch: Path) -> None:
        self.root, self.src, self.scratch = root, src, scratch
        [self.l0] = os.listdir(root / "metadata" / "rsyncv2" / NAME)
        self.chain = root / "metadata" / "rsyncv2" / NAME / self.l0
        self.data_chain = root / "data" / "rsyncv2" / NAME / self.l0
        self.level_dirs = sorted(os.listdir(self.chain), key=lambda n: int(n.split("_")[0]))
        self.listed_l0 = datetime.datetime.fromtimestamp(
            int(self.l0), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def meta(self, level: int) -> Path:
        return self.chain / self.level_dirs[level] / "metadata"

    def stored(self, level: int, name: str) -> Path:
        return self.data_chain / self.level_dirs[level] / name

    def run(self, command: str, *extra: str) -> subprocess.CompletedProcess[str]:
        def limits() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
            resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE, FILE_SIZE))

        argv = [sys.executable, "-m", "freezer_rsyncv2.cli", command, "--container", str(self.root),
                "--hostname", "h", "--backup-name", "v", *extra]
        env = dict(os.environ, TMPDIR=str(self.scratch))
        return subprocess.run(argv, capture_output=True, text=True, timeout=SECONDS,
                              preexec_fn=limits, env=env, check=False)

    def restore(self) -> tuple[subprocess.CompletedProcess[str], Path]:
        dest = self.scratch / f"restore-{len(os.listdir(self.scratch))}"
        return self.run("restore", "--restore-abs-path", str(dest)), dest


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    top = tmp_path_factory.mktemp("pristine")
    src, root = top / "src", top / "container"
    src.mkdir()
    (src / "a.txt").write_bytes(b"level zero\n")
    engine = rsyncv2.Rsyncv2Engine(storage=LocalStorage(str(root)), compression="none")
    engine.backup(str(src), NAME, True, None, None, None)
    (src / "b.txt").write_bytes(b"level one\n")
    engine.backup(str(src), NAME, True, None, None, None)
    return root, src


@pytest.fixture
def box(pristine: tuple[Path, Path], tmp_path: Path) -> Container:
    root, src = pristine
    shutil.copytree(root, tmp_path / "container", symlinks=True)
    shutil.copytree(src, tmp_path / "src")
    (tmp_path / "scratch").mkdir()
    return Container(tmp_path / "container", tmp_path / "src", tmp_path / "scratch")


def failed_with(run: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The one error line of a failed command, checked to hold every fragment."""
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr + run.stdout, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("freezer-rsyncv2: error: ")]
    assert len(lines) == 1, run.stderr
    for fragment in fragments:
        assert fragment in lines[0], run.stderr
    return lines[0]


def succeeded(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == 0, run.stderr
    logged = run.stderr + run.stdout
    assert "Traceback" not in logged and " ERROR " not in logged, logged
    return run.stdout


def warnings_about(run: subprocess.CompletedProcess[str], name: str) -> list[str]:
    """Warning lines naming ``name`` (oslo.log writes to stdout or stderr, as configured)."""
    return [line for line in (run.stderr + run.stdout).splitlines()
            if " WARNING " in line and repr(name)[1:-1] in line]


def tree(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir()}


def within(seconds: float, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` on a daemon thread; fail (not hang) if it takes longer than ``seconds``."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("ok", fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            outcome.append(("raised", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"{fn} still running after {seconds} s"
    kind, value = outcome[0]
    if kind == "raised":
        raise value
    return value


def engine_on(box: Container) -> rsyncv2.Rsyncv2Engine:
    return rsyncv2.Rsyncv2Engine(storage=LocalStorage(str(box.root)), compression="none")


# -- special files under stored names -----------------------------------------------------------

@pytest.mark.parametrize("plant", ["fifo", "dev-zero"])
def test_level_data_that_is_no_regular_file(box: Container, plant: str) -> None:
    """A FIFO hung restore and verify; a symlink to /dev/zero never ended."""
    data = box.stored(1, "data")
    data.unlink()
    if plant == "fifo":
        os.mkfifo(data)
    else:
        data.symlink_to("/dev/zero")
    kind = "a FIFO" if plant == "fifo" else "a symbolic link"
    expected = f"{data} is {kind}, not a regular file: refusing to read it"
    run, dest = box.restore()
    failed_with(run, expected)
    failed_with(box.run("verify"), expected)
    with pytest.raises(errors.StorageError) as info:
        within(SECONDS, engine_on(box).restore, NAME, str(dest), True, None, "fs")
    assert type(info.value) is errors.StorageError and str(info.value) == expected
    with pytest.raises(errors.StorageError) as info:
        within(SECONDS, verify.verify, engine_on(box), NAME)
    assert type(info.value) is errors.StorageError and str(info.value) == expected


@pytest.mark.parametrize("plant", ["fifo", "dev-zero"])
def test_manifest_that_is_no_regular_file(box: Container, plant: str) -> None:
    """A manifest linked to /dev/zero made verify and the next backup copy without end."""
    manifest = box.stored(0, "engine_metadata")
    manifest.unlink()
    if plant == "fifo":
        os.mkfifo(manifest)
    else:
        manifest.symlink_to("/dev/zero")
    failed_with(box.run("verify"), str(manifest), "not a regular file: refusing to read it")
    failed_with(box.run("backup", "--path-to-backup", str(box.src)), str(manifest),
                "not a regular file")
    assert sorted(os.listdir(box.chain)) == box.level_dirs       # nothing was published


@pytest.mark.parametrize("plant", ["fifo", "dev-zero", "directory"])
def test_metadata_that_is_no_regular_file_leaves_the_level_unpublished(box: Container,
                                                                       plant: str) -> None:
    """A level is published by a regular ``metadata`` file only; else it is absent everywhere."""
    meta = box.meta(1)
    meta.unlink()
    if plant == "fifo":
        os.mkfifo(meta)
    elif plant == "directory":
        meta.mkdir()
    else:
        meta.symlink_to("/dev/zero")
    listing = succeeded(box.run("list"))
    assert "level 0" in listing and "level 1" not in listing
    assert "levels 0..0" in succeeded(box.run("verify"))
    run, dest = box.restore()
    assert "up to level 0" in succeeded(run)
    assert tree(dest) == {"a.txt": b"level zero\n"}
    assert "backup level 1 of h_v" in succeeded(box.run("backup", "--path-to-backup", str(box.src)))


def test_a_giant_sparse_metadata_is_refused_unread(box: Container) -> None:
    os.truncate(box.meta(1), 5 << 30)
    expected = f"{box.meta(1)} holds {5 << 30} bytes, more than the 1048576 expected there"
    failed_with(box.run("verify"), "level 1 of h_v: metadata unreadable: " + expected)
    failed_with(box.restore()[0], expected)
    # the next backup cannot read the chain's settings: it starts a new chain
    assert "backup level 0 of h_v" in box.run("backup", "--path-to-backup", str(box.src)).stdout


def test_level_data_longer_than_its_metadata_declares(box: Container) -> None:
    data = box.stored(1, "data")
    size = data.stat().st_size
    os.truncate(data, 5 << 30)
    expected = f"{data} holds {5 << 30} bytes, more than the {size} its level's metadata declares"
    failed_with(box.restore()[0], expected)
    failed_with(box.run("verify"), expected)


# -- names --------------------------------------------------------------------------------------

def plant_level(box: Container, name: str, like: int = 0) -> None:
    """A level directory ``name`` in the chain, with a copy of level ``like``'s files."""
    (box.chain / name).mkdir()
    shutil.copy(box.meta(like), box.chain / name / "metadata")
    shutil.copytree(box.data_chain / box.level_dirs[like], box.data_chain / name)


# Every form is parsed in tests/unit/storage (both storages); here the commands meet a few.
@pytest.mark.parametrize("name", ["100000000000_5", f"{layout.MAX_LEVEL + 1}_5", "١٢_5", "+2_5",
                                  "2_5\n", "2_99999999999999999999", "²_5", "0_1"])
def test_odd_level_names_are_ignored_with_one_warning(box: Container, name: str) -> None:
    """A level named 100000000000 made verify count to 10**11; others gave tracebacks."""
    plant_level(box, name)
    listing = box.run("list")
    assert "level 1" in succeeded(listing) and "level 2" not in listing.stdout
    assert len(warnings_about(listing, name)) == 1, listing.stderr
    checked = box.run("verify")
    assert "levels 0..1" in succeeded(checked)
    assert len(warnings_about(checked, name)) == 1, checked.stderr
    assert "backup level 2 of h_v" in succeeded(box.run("backup", "--path-to-backup",
                                                        str(box.src)))


# The engine's restore re-reads the chain directory itself to pick the newest
# entry of each level (``engine/base.py``, ``newest_per_level``): it parses
# names with str.isdigit() and does not check that the entry is published.
@pytest.mark.parametrize("name", [
    "100000000000_5", f"{layout.MAX_LEVEL + 1}_5", "١٢_5", "+2_5", "2_5\n", "02_5",
    "²_5",
    "1_99999999999999999999",
    f"1_{layout.MAX_TIMESTAMP + 1}"])
def test_odd_level_names_do_not_break_restore(box: Container, name: str) -> None:
    plant_level(box, name)
    run, dest = box.restore()
    assert "up to level 1" in succeeded(run)
    assert tree(dest) == {"a.txt": b"level zero\n", "b.txt": b"level one\n"}


@pytest.mark.parametrize("name", ["١٢", "+5", "5\n", "99999999999999999999",
                                  str(layout.MAX_TIMESTAMP + 1)])
def test_odd_chain_names_are_ignored_with_one_warning(box: Container, name: str) -> None:
    shutil.copytree(box.chain, box.chain.parent / name)
    listing = box.run("list")
    assert [line for line in succeeded(listing).splitlines() if line.startswith("  chain ")] \
        == [f"  chain {box.listed_l0}"]
    assert len(warnings_about(listing, name)) == 1, listing.stderr
    run, dest = box.restore()
    assert "up to level 1" in succeeded(run)
    assert tree(dest) == {"a.txt": b"level zero\n", "b.txt": b"level one\n"}
    assert "levels 0..1" in succeeded(box.run("verify"))


def test_the_last_printable_timestamp_is_listed(box: Container) -> None:
    last = str(layout.MAX_TIMESTAMP)
    (box.chain.parent / last / f"0_{last}").mkdir(parents=True)
    shutil.copy(box.meta(0), box.chain.parent / last / f"0_{last}" / "metadata")
    assert "chain 9999-12-31T23:59:59Z" in succeeded(box.run("list"))


def test_unprintable_backup_names_are_not_listed(box: Container) -> None:
    odd = box.root / "metadata" / "rsyncv2"
    shutil.copytree(odd / NAME, odd / "evil\x1b]2;owned\x07name")
    shutil.copytree(odd / NAME, os.fsdecode(os.fsencode(odd) + b"/bad\xffname"))   # not UTF-8
    run = subprocess.run([sys.executable, "-m", "freezer_rsyncv2.cli", "list", "--container",
                          str(box.root)], capture_output=True, text=True, timeout=SECONDS,
                         check=False)
    listed = succeeded(run).splitlines()
    assert [line for line in listed if not line.startswith(" ") and " WARNING " not in line] == [NAME]
    assert "\x1b" not in run.stdout and "\udcff" not in run.stdout
    assert len([line for line in listed if " WARNING " in line]) == 2


# -- unpublished levels ------------------------------------------------------------------------

def test_a_level_without_metadata_is_absent_everywhere(box: Container) -> None:
    """docs/storage.rst: a level exists only once its metadata file exists."""
    plant_level(box, "2_99999999999", like=1)
    os.unlink(box.chain / "2_99999999999" / "metadata")
    listing = succeeded(box.run("list"))
    assert "level 1" in listing and "level 2" not in listing
    assert "levels 0..1" in succeeded(box.run("verify"))
    run, dest = box.restore()
    assert "up to level 1" in succeeded(run)
    assert "backup level 2 of h_v" in succeeded(box.run("backup", "--path-to-backup",
                                                        str(box.src)))


def test_a_newer_unpublished_entry_of_a_level_is_not_restored(box: Container) -> None:
    plant_level(box, "1_99999999999", like=0)      # level 0's stream under a level-1 name
    os.unlink(box.chain / "1_99999999999" / "metadata")
    run, dest = box.restore()
    assert "up to level 1" in succeeded(run)
    assert tree(dest) == {"a.txt": b"level zero\n", "b.txt": b"level one\n"}


# -- symlinks inside the container -----------------------------------------------------------

def test_a_symlinked_chain_is_not_followed(box: Container, tmp_path: Path) -> None:
    """Inside the container nothing is followed; the container itself may be a symlink."""
    elsewhere = tmp_path / "elsewhere"
    shutil.move(box.chain, elsewhere)
    box.chain.symlink_to(elsewhere)
    listing = box.run("list")
    failed_with(listing, f"no backup named {NAME}")
    assert len(warnings_about(listing, str(box.chain))) == 1
    assert "a symbolic link inside the container" in warnings_about(listing, str(box.chain))[0]
    failed_with(box.restore()[0], f'No backup named "{NAME}"')
    link = tmp_path / "link"
    link.symlink_to(box.root)
    box.chain.unlink()
    shutil.move(elsewhere, box.chain)
    box.root = link
    assert "levels 0..1" in succeeded(box.run("verify"))
