"""LocalStorage specifics beyond the contract: on-disk layout, temp files, fsync ordering."""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from freezer_rsyncv2.handoff import QueueStopped, RichQueue
from freezer_rsyncv2.errors import StorageError
from freezer_rsyncv2.storage import local, localfs
from freezer_rsyncv2.storage.base import Backup, StorageFileNotFoundError
from freezer_rsyncv2.storage.local import LocalStorage
from tests.unit.storage.test_contract import ENGINE, NAME, levels, queue_of, read_all, write_level


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_prepare_creates_tree(tmp_path: Path) -> None:
    LocalStorage(tmp_path / "c")
    assert (tmp_path / "c" / "metadata").is_dir()
    assert (tmp_path / "c" / "data").is_dir()


def test_skip_prepare(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "c", skip_prepare=True)
    assert not (tmp_path / "c").exists()
    assert storage.listdir(storage.storage_path) == []


def test_relative_path_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = LocalStorage("rel")
    assert storage.storage_path == str(tmp_path / "rel")
    assert storage.type == "local"
    assert storage.max_segment_size == 32 * 1024 * 1024


@pytest.mark.parametrize("size", [0, -1, 1.5, None, True])
def test_bad_segment_size(tmp_path: Path, size: object) -> None:
    with pytest.raises(ValueError):
        LocalStorage(tmp_path, max_segment_size=size)  # type: ignore[arg-type]


def test_on_disk_layout_is_freezers(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "c", max_segment_size=16)
    work = tmp_path / "w"
    work.mkdir()
    write_level(storage, work, 100, 100, 0)
    write_level(storage, work, 100, 160, 1)
    assert all_files(tmp_path / "c") == [
        "data/rsyncv2/host_docs/100/0_100/data",
        "data/rsyncv2/host_docs/100/0_100/engine_metadata",
        "data/rsyncv2/host_docs/100/1_160/data",
        "data/rsyncv2/host_docs/100/1_160/engine_metadata",
        "metadata/rsyncv2/host_docs/100/0_100/metadata",
        "metadata/rsyncv2/host_docs/100/1_160/metadata",
    ]


def test_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "c")
    rich = RichQueue(size=4)
    rich.put(b"abc")
    rich.force_stop()
    backup = Backup(ENGINE, NAME, 10, 10, 0, storage=storage)
    with pytest.raises(QueueStopped):
        storage.write_backup(rich, backup)
    assert os.listdir(backup.data_prefix_path) == []


def test_write_error_becomes_storage_error(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalStorage(tmp_path / "c")
    backup = Backup(ENGINE, NAME, 10, 10, 0, storage=storage)

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(local.os, "fsync", broken_fsync)
    rich = queue_of([b"abc"])
    with pytest.raises(StorageError, match="No space"):
        storage.write_backup(rich, backup)
    assert rich.is_force_stop
    assert os.listdir(backup.data_prefix_path) == []


def test_fsync_before_each_rename_and_metadata_last(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalStorage(tmp_path / "c")
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(src: str, dst: str, **dir_fds: int) -> None:
        events.append("rename " + os.path.basename(dst))
        real_replace(src, dst, **dir_fds)

    monkeypatch.setattr(local.os, "fsync", fsync)
    monkeypatch.setattr(local.os, "replace", replace)
    work = tmp_path / "w"
    work.mkdir()
    write_level(storage, work, 100, 100, 0)
    renames = [e for e in events if e.startswith("rename")]
    assert renames == ["rename data", "rename engine_metadata", "rename metadata"]
    for i, event in enumerate(events):
        if event.startswith("rename"):
            assert events[i - 1] == "fsync"  # file data durable before it gets its name
            assert events[i + 1] == "fsync"  # directory entry durable right after
    assert events[-1] == "fsync"


def test_no_temp_files_after_success(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "c")
    work = tmp_path / "w"
    work.mkdir()
    write_level(storage, work, 100, 100, 0)
    assert not [f for f in all_files(tmp_path / "c") if ".tmp-" in f]


def test_missing_files_name_the_path(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "c")
    missing = str(tmp_path / "c" / "absent")
    with pytest.raises(StorageFileNotFoundError, match="absent") as info:
        storage.get_file(missing, str(tmp_path / "out"))
    assert info.value.path == missing
    backup = Backup(ENGINE, NAME, 10, 10, 0, storage=storage)
    with pytest.raises(StorageFileNotFoundError, match="0_10"):
        list(storage.backup_blocks(backup))
    with pytest.raises(StorageError, match="nosrc"):
        storage.put_file(str(tmp_path / "nosrc"), str(tmp_path / "c" / "x"))
    assert not os.path.exists(tmp_path / "c" / "x")


def test_get_file_of_directory_is_storage_error(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "c")
    with pytest.raises(StorageError):
        storage.get_file(storage.storage_path, str(tmp_path / "out"))


def test_listdir_of_file_is_empty(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "c")
    (tmp_path / "f").write_text("x")
    assert storage.listdir(str(tmp_path / "f")) == []


def test_info_shape(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "c")
    work = tmp_path / "w"
    work.mkdir()
    write_level(storage, work, 100, 100, 0)
    (entry,) = storage.info()
    assert entry["container_name"] == storage.storage_path
    assert entry["objects_count"] == 3
    assert entry["size"] == "1 MB"


def test_backup_blocks_reads_other_storage_backup_by_path(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "c", max_segment_size=4)
    storage.write_backup(queue_of([b"0123456789"]), Backup(ENGINE, NAME, 1, 1, 0, storage=storage))
    unbound = Backup(ENGINE, NAME, 1, 1, 0)
    assert list(storage.backup_blocks(unbound)) == [b"0123", b"4567", b"89"]


def test_writev_all_writes_every_piece_in_order(tmp_path, monkeypatch):
    pieces = [os.urandom(n) for n in (0, 1, 7, 4096, 3)] * 700   # > IOV_MAX
    pieces.append(memoryview(b"tail-view"))
    real = os.writev

    calls = []

    def short_writev(fd, buffers):      # the kernel may write a prefix only
        calls.append(len(buffers))
        return real(fd, [b"".join(bytes(b) for b in buffers)[:4099]])
    monkeypatch.setattr(local.os, "writev", short_writev)
    path = tmp_path / "out"
    with open(path, "wb", buffering=0) as f:
        localfs.writev_all(f.fileno(), pieces)
    assert path.read_bytes() == b"".join(bytes(p) for p in pieces)
    assert max(calls) <= localfs._IOV_MAX


def test_early_writeback_starts_the_disk_writes_as_the_file_grows(
        tmp_path, monkeypatch):
    calls = []

    def fake(fd, offset, nbytes, flags):
        calls.append((offset, nbytes, flags))
        return -1 if len(calls) == 2 else 0     # one failure: retried later
    monkeypatch.setattr(localfs.EarlyWriteback, "call", staticmethod(fake))
    flusher = localfs.EarlyWriteback(99)
    step = localfs._WRITEBACK_STEP
    for _ in range(5):
        flusher.written(step // 2)
    # the failed range (the second call) is asked for again, with more
    assert calls == [(0, step, 2), (step, step, 2), (step, 3 * step // 2, 2)]
    flusher.written(step // 2)      # less than a step since the last call
    assert len(calls) == 3


def test_early_writeback_without_sync_file_range(monkeypatch):
    monkeypatch.setattr(localfs.EarlyWriteback, "call", None)
    localfs.EarlyWriteback(99).written(1 << 30)      # nothing to call
    assert localfs._sync_file_range() is not None or not \
        os.uname().sysname == "Linux"


# -- a hostile container: special files and symlinks ---------------------------------------------

def within(seconds: float, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` on a daemon thread; fail (not hang) if it takes longer than ``seconds``."""
    result: list[Any] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn} still running after {seconds} s"
    if failure:
        raise failure[0]
    return result[0]


@pytest.fixture
def level(tmp_path: Path) -> tuple[LocalStorage, Backup, Path]:
    """A published level 0 and a work directory."""
    storage = LocalStorage(tmp_path / "c", max_segment_size=16)
    work = tmp_path / "w"
    work.mkdir()
    backup = write_level(storage, work, 100, 100, 0, segments=[b"level zero data"],
                         meta={"summary": {"stored_bytes": 15, "manifest_bytes": 11}})
    return storage, backup, work


def replace_with(path: str, kind: str, target: Path) -> None:
    """Put a FIFO, a symlink to ``target``, a directory or a socket where ``path`` was."""
    os.unlink(path)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        os.symlink(target, path)
    elif kind == "directory":
        os.mkdir(path)
    else:   # a socket node (mknod: bind() would limit the path to 108 bytes)
        os.mknod(path, 0o600 | stat.S_IFSOCK)


KINDS = {"fifo": "a FIFO", "symlink": "a symbolic link", "directory": "a directory",
         "socket": "a socket"}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("which", ["data", "engine_metadata", "metadata"])
def test_only_regular_files_are_read(level: tuple[LocalStorage, Backup, Path], tmp_path: Path,
                                     kind: str, which: str) -> None:
    """A FIFO would block the open, a symlink to /dev/zero never end: both refused at once."""
    storage, backup, work = level
    outside = tmp_path / "outside"
    outside.write_bytes(b'{"summary": {}}')
    path = {"data": backup.data_path, "engine_metadata": backup.engine_metadata_path,
            "metadata": backup.metadata_path}[which]
    replace_with(path, kind, outside)
    message = f"{path} is {KINDS[kind]}, not a regular file: refusing to read it"
    reads = [lambda: storage.get_file(path, str(work / "out")),
             lambda: storage.read_object(path, 1 << 20)]
    if which == "data":
        reads.append(lambda: read_all(storage, backup))
    if which == "metadata":
        reads.append(backup.metadata)
    for read in reads:
        with pytest.raises(StorageError) as info:
            within(5, read)
        assert type(info.value) is StorageError and str(info.value) == message
    assert not (work / "out").exists()
    assert storage.stored_size(path) is None
    assert outside.read_bytes() == b'{"summary": {}}'
    if which == "metadata":     # not a regular file: the level is not published
        assert not storage.is_published(path)
        assert storage.get_level_zero(ENGINE, NAME) == []


def test_a_sparse_giant_is_refused_before_any_copy(level: tuple[LocalStorage, Backup, Path]) -> None:
    storage, backup, work = level
    os.truncate(backup.engine_metadata_path, 1 << 40)       # 1 TiB of nothing
    with pytest.raises(StorageError, match=f"holds {1 << 40} bytes, more than the {64 << 30}"):
        within(5, storage.get_file, backup.engine_metadata_path, str(work / "out"))
    assert not (work / "out").exists()
    os.truncate(backup.metadata_path, 1 << 40)
    with pytest.raises(StorageError, match="more than the 1048576 expected there"):
        within(5, backup.metadata)


def test_data_longer_than_declared_is_refused_before_reading(
        level: tuple[LocalStorage, Backup, Path]) -> None:
    storage, backup, _work = level
    os.truncate(backup.data_path, 1 << 40)
    with pytest.raises(StorageError, match="more than the 15 its level's metadata declares"):
        within(5, read_all, storage, backup)


def test_symlinked_directories_inside_the_container_are_not_followed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    storage = LocalStorage(tmp_path / "c", max_segment_size=16)
    work = tmp_path / "w"
    work.mkdir()
    elsewhere = tmp_path / "elsewhere"
    write_level(LocalStorage(elsewhere), work, 100, 100, 0)
    # the whole backup name, and one chain of another name, linked to another container
    for rel in ("metadata/rsyncv2/host_docs", "data/rsyncv2/host_docs",
                "metadata/rsyncv2/other/100"):
        link = tmp_path / "c" / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(elsewhere / rel.replace("other", "host_docs"), link)
    before = all_files(elsewhere)
    with caplog.at_level(logging.WARNING):
        assert storage.get_level_zero(ENGINE, NAME) == []
        assert storage.get_level_zero(ENGINE, "other") == []
        assert storage.backup_names(ENGINE.name) == []
        storage.remove_older_than(ENGINE, 1000, NAME)
        storage.remove_older_than(ENGINE, 1000, "other")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == len(set(warned)) == 3
    assert all("a symbolic link inside the container: never followed" in w for w in warned)
    backup = Backup(ENGINE, NAME, 100, 100, 0, storage=storage)
    with pytest.raises(StorageError, match="is a symbolic link inside the container") as info:
        read_all(storage, backup)
    assert type(info.value) is StorageError
    with pytest.raises(StorageError, match="is a symbolic link inside the container"):
        storage.get_file(backup.engine_metadata_path, str(work / "out"))
    # writes and removals neither: nothing of the other container changes
    with pytest.raises(StorageError, match="cannot write under .* symbolic link inside"):
        write_level(storage, work, 200, 200, 0)
    with pytest.raises(StorageError, match="symbolic link inside"):
        storage.create_dirs(backup.data_prefix_path)
    backup.remove()
    assert all_files(elsewhere) == before
    assert not list(work.glob("out*"))


def test_rmtree_removes_symlinks_without_entering_them(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "c")
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "keep").write_bytes(b"keep")
    chain = tmp_path / "c" / "data" / "rsyncv2" / NAME / "100"
    (chain / "0_100").mkdir(parents=True)
    os.symlink(victim, chain / "0_100" / "data")
    os.symlink(victim / "sub", chain / "1_200")
    os.symlink(victim, tmp_path / "c" / "data" / "rsyncv2" / NAME / "200")
    storage.rmtree(str(chain))
    storage.rmtree(str(tmp_path / "c" / "data" / "rsyncv2" / NAME / "200"))
    assert os.listdir(tmp_path / "c" / "data" / "rsyncv2" / NAME) == []
    assert (victim / "sub" / "keep").read_bytes() == b"keep"


def test_rmtree_of_a_deep_tree(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "c")
    top = tmp_path / "c" / "data" / "deep"
    fd = os.open(tmp_path / "c" / "data", os.O_RDONLY)
    try:
        os.mkdir("deep", dir_fd=fd)
        for _ in range(400):        # deeper than PATH_MAX allows to name
            sub = os.open("deep", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = sub
            os.mkdir("deep", dir_fd=fd)
            with open(os.open("f", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as handle:
                handle.write(b"x")
    finally:
        os.close(fd)
    storage.rmtree(str(top))
    assert not top.exists()


def test_a_symlinked_container_is_the_operators_choice(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "above").symlink_to(tmp_path)
    (tmp_path / "link").symlink_to(real)
    work = tmp_path / "w"
    work.mkdir()
    for container in (tmp_path / "link", tmp_path / "above" / "link" / "c"):
        storage = LocalStorage(container)
        backup = write_level(storage, work, 100, 100, 0, segments=[b"through the link"])
        assert levels(storage.get_latest_level_zero_increments(ENGINE, NAME)) == {0: 100}
        assert read_all(storage, backup) == b"through the link"
    assert (real / "c" / "data").is_dir()


def test_writes_replace_a_planted_symlink_instead_of_following_it(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "c")
    work = tmp_path / "w"
    work.mkdir()
    target = tmp_path / "target"
    target.write_bytes(b"precious")
    backup = Backup(ENGINE, NAME, 100, 100, 0, storage=storage)
    storage.create_dirs(backup.data_prefix_path)
    storage.create_dirs(backup.metadata_path.rsplit("/", 1)[0])
    for path in (backup.data_path, backup.engine_metadata_path, backup.metadata_path):
        os.symlink(target, path)
    write_level(storage, work, 100, 100, 0, segments=[b"new data"])
    assert target.read_bytes() == b"precious"
    assert read_all(storage, backup) == b"new data"
    assert not os.path.islink(backup.metadata_path)


def test_paths_may_not_climb_out_of_the_container(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "c")
    with pytest.raises(StorageError, match="leaves the container") as info:
        storage.get_file(f"{storage.storage_path}/data/../../x", str(tmp_path / "out"))
    assert type(info.value) is StorageError
