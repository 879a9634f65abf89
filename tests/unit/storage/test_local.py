"""LocalStorage specifics beyond the contract: on-disk layout, temp files, fsync ordering."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from freezer_rsyncv2.engine.queue import QueueStopped, RichQueue
from freezer_rsyncv2.errors import ConfigError, StorageError
from freezer_rsyncv2.storage import local
from freezer_rsyncv2.storage.base import Backup, StorageFileNotFoundError
from freezer_rsyncv2.storage.local import LocalStorage
from tests.unit.storage.test_contract import ENGINE, NAME, queue_of, write_level


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
    with pytest.raises(ConfigError):
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
    rich = RichQueue(size=4, poll_interval=0.05)
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

    def replace(src: str, dst: str) -> None:
        events.append("rename " + os.path.basename(dst))
        real_replace(src, dst)

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
        local._writev_all(f.fileno(), pieces)
    assert path.read_bytes() == b"".join(bytes(p) for p in pieces)
    assert max(calls) <= local._IOV_MAX


def test_early_writeback_starts_the_disk_writes_as_the_file_grows(
        tmp_path, monkeypatch):
    calls = []

    def fake(fd, offset, nbytes, flags):
        calls.append((offset, nbytes, flags))
        return -1 if len(calls) == 2 else 0     # one failure: retried later
    monkeypatch.setattr(local._EarlyWriteback, "call", staticmethod(fake))
    flusher = local._EarlyWriteback(99)
    step = local._WRITEBACK_STEP
    for _ in range(5):
        flusher.written(step // 2)
    # the failed range (the second call) is asked for again, with more
    assert calls == [(0, step, 2), (step, step, 2), (step, 3 * step // 2, 2)]
    flusher.written(step // 2)      # less than a step since the last call
    assert len(calls) == 3


def test_early_writeback_without_sync_file_range(monkeypatch):
    monkeypatch.setattr(local._EarlyWriteback, "call", None)
    local._EarlyWriteback(99).written(1 << 30)      # nothing to call
    assert local._sync_file_range() is not None or not \
        os.uname().sysname == "Linux"
