"""The sweep (leftovers of killed runs) and ``abandon`` (this run's writes), local and S3."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from freezer_rsyncv2.handoff import RichQueue
from freezer_rsyncv2.errors import ConfigError
from freezer_rsyncv2.storage import sweep
from freezer_rsyncv2.storage.base import Backup, Storage
from freezer_rsyncv2.storage.local import LocalStorage
from freezer_rsyncv2.storage.s3 import S3Storage
from freezer_rsyncv2.storage.s3_upload import MIN_PART_SIZE
from tests.s3server import S3Server, object_keys, pending_uploads, unique_bucket
from tests.unit.storage.test_contract import (ENGINE, NAME, FakeEngine, queue_of, read_all,
                                              write_level)

OTHER = NAME + "2"          # a name sharing NAME's prefix: never touched
HOUR = 3600.0
OLD = 1_000_000_000         # a level timestamp long past


def temp_file(level_dir: Path, name: str = "data", age: float = 2 * HOUR,
              size: int = 1000) -> Path:
    """A temporary file as the local storage names it, last modified ``age`` ago."""
    level_dir.mkdir(parents=True, exist_ok=True)
    path = level_dir / f".{name}.tmp-{os.urandom(16).hex()}"
    path.write_bytes(b"x" * size)
    when = time.time() - age
    os.utime(path, (when, when))
    return path


def age_files(root: Path, age: float = 2 * HOUR) -> None:
    """Make every file below ``root`` last modified ``age`` ago."""
    when = time.time() - age
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (when, when))


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store", max_segment_size=64)


def level_dir(storage: LocalStorage, name: str, l0: int, level: int, ts: int,
              tree: str = "data") -> Path:
    return Path(storage.storage_path, tree, "rsyncv2", name, str(l0), f"{level}_{ts}")


# -- local ----------------------------------------------------------------------------------

def test_old_temporary_files_go_young_ones_stay(local: LocalStorage) -> None:
    old = temp_file(level_dir(local, NAME, OLD, 0, OLD))
    old_meta = temp_file(level_dir(local, NAME, OLD, 0, OLD, "metadata"), "metadata")
    young = temp_file(level_dir(local, NAME, OLD, 1, OLD + 5), age=60)
    report = local.sweep(ENGINE, NAME, HOUR)
    assert (report.temp_objects, report.temp_bytes, report.kept) == (2, 2000, 1)
    assert not old.exists() and not old_meta.exists() and young.exists()
    # the level holding the young one is not taken for unfinished either
    assert young.parent.is_dir()
    assert local.sweep(ENGINE, NAME, 0).temp_objects == 1
    assert not young.exists()


def test_a_locked_temporary_file_is_never_swept(local: LocalStorage) -> None:
    path = temp_file(level_dir(local, NAME, OLD, 0, OLD))
    with open(path, "rb") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)      # as a running write_backup holds it
        report = local.sweep(ENGINE, NAME, 0)
        assert (report.temp_objects, report.kept, report.levels) == (0, 1, 0)
        assert path.exists()
    assert local.sweep(ENGINE, NAME, 0).temp_objects == 1
    assert not path.exists()


def test_the_writer_locks_its_temporary_file(local: LocalStorage, tmp_path: Path) -> None:
    rich = RichQueue(size=2)
    rich.put(b"first")
    backup = Backup(ENGINE, NAME, OLD, OLD, 0, storage=local)
    writer = threading.Thread(target=lambda: pytest.raises(Exception, local.write_backup,
                                                           rich, backup), daemon=True)
    writer.start()
    deadline = time.monotonic() + 10
    while not list(level_dir(local, NAME, OLD, 0, OLD).glob(".data.tmp-*")):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    report = local.sweep(ENGINE, NAME, 0)
    assert report.temp_objects == 0 and report.levels == 0
    rich.force_stop()
    writer.join(10)


def test_unfinished_levels_go_published_ones_stay(local: LocalStorage, tmp_path: Path) -> None:
    level0 = write_level(local, tmp_path, OLD, OLD, 0, [b"zero"])
    write_level(local, tmp_path, OLD, OLD + 10, 1, [b"unfinished" * 10], complete=False)
    now = int(time.time())
    write_level(local, tmp_path, OLD, now + 100, 1, [b"running"], complete=False)
    write_level(local, tmp_path, OLD + 50, OLD + 50, 0, [b"lonely"], complete=False)
    write_level(local, tmp_path, OLD, OLD + 20, 1, [b"other"], name=OTHER, complete=False)
    age_files(Path(local.storage_path))
    report = local.sweep(ENGINE, NAME, HOUR)
    assert (report.levels, report.level_bytes) == (2, 100 + 6)
    assert not level_dir(local, NAME, OLD, 1, OLD + 10).exists()
    assert not Path(local.storage_path, "data/rsyncv2", NAME, str(OLD + 50)).exists()
    assert level_dir(local, NAME, OLD, 1, now + 100).is_dir()       # may be running
    assert level_dir(local, OTHER, OLD, 1, OLD + 20).is_dir()       # another name
    assert read_all(local, level0) == b"zero"
    assert sorted(local.list_chains(ENGINE, NAME)[0]) == [0]
    assert not local.sweep(ENGINE, NAME, HOUR)      # nothing left to say


def test_an_unfinished_level_written_lately_stays(local: LocalStorage, tmp_path: Path) -> None:
    """The level's name is old (its run started long ago) but its data is fresh."""
    write_level(local, tmp_path, OLD, OLD, 0, [b"slow run"], complete=False)
    report = local.sweep(ENGINE, NAME, HOUR)
    assert (report.levels, report.kept) == (0, 1)
    assert local.sweep(ENGINE, NAME, 0).levels == 1


def test_the_sweep_follows_no_symlink(local: LocalStorage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    victim = temp_file(outside)
    chain = Path(local.storage_path, "data/rsyncv2", NAME)
    chain.mkdir(parents=True)
    (chain / str(OLD)).symlink_to(outside)
    local.sweep(ENGINE, NAME, 0)
    assert victim.exists()


def test_abandon_removes_only_its_engines_unpublished_levels(local: LocalStorage,
                                                             tmp_path: Path) -> None:
    mine, theirs = FakeEngine(), FakeEngine()
    done = write_level(local, tmp_path, OLD, OLD, 0, [b"done"])
    local.write_backup(queue_of([b"mine"]), Backup(mine, NAME, OLD, OLD + 1, 1, storage=local))
    local.write_backup(queue_of([b"theirs"]), Backup(theirs, NAME, OLD, OLD + 2, 1, storage=local))
    assert local.abandon(mine)
    assert not level_dir(local, NAME, OLD, 1, OLD + 1).exists()
    assert level_dir(local, NAME, OLD, 1, OLD + 2).is_dir()
    assert read_all(local, done) == b"done"


def test_abandon_stops_a_running_write(local: LocalStorage) -> None:
    engine = FakeEngine()
    rich = RichQueue(size=2)
    rich.put(b"partial")
    backup = Backup(engine, NAME, OLD, OLD, 0, storage=local)
    failures: list[BaseException] = []

    def write() -> None:
        try:
            local.write_backup(rich, backup)
        except BaseException as exc:
            failures.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    target = level_dir(local, NAME, OLD, 0, OLD)
    deadline = time.monotonic() + 10
    while not list(target.glob(".data.tmp-*")):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert local.abandon(engine, timeout=10)
    assert not writer.is_alive() and failures
    assert not target.exists()
    assert not Path(local.storage_path, "data/rsyncv2", NAME, str(OLD)).exists()


# -- the age --------------------------------------------------------------------------------

def test_the_age_comes_from_the_option_the_environment_the_file_or_a_day() -> None:
    env = {sweep.AGE_VARIABLE: "120"}
    assert sweep.resolve_age(5, 7, env) == 5
    assert sweep.resolve_age(None, 7, env) == 120
    assert sweep.resolve_age(None, 7, {}) == 7
    assert sweep.resolve_age(None, None, {}) == sweep.DEFAULT_AGE == 86400
    assert sweep.resolve_age(None, None, {sweep.AGE_VARIABLE: " "}) == 86400


@pytest.mark.parametrize("value", ["-1", "soon", "nan", "inf"])
def test_a_bad_age_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match=sweep.AGE_VARIABLE):
        sweep.resolve_age(None, None, {sweep.AGE_VARIABLE: value})
    with pytest.raises(ConfigError):
        sweep.resolve_age(value)


def test_only_our_storages_have_the_extras(local: LocalStorage) -> None:
    class FreezerStorage:       # what freezer-agent hands the engine
        def write_backup(self, rich_queue: Any, backup: Any) -> None: ...

    assert sweep.ours(local) is local
    assert sweep.ours(FreezerStorage()) is None


# -- S3 -------------------------------------------------------------------------------------

@pytest.fixture
def s3(s3_server: S3Server) -> S3Storage:
    return s3_server.storage(f"{unique_bucket('sw')}/pre", max_segment_size=1 << 20,
                             part_size=MIN_PART_SIZE)


def test_s3_stale_uploads_are_aborted_fresh_ones_kept(s3: S3Storage,
                                                      s3_server: S3Server) -> None:
    client = s3_server.client()
    mine = f"pre/data/rsyncv2/{NAME}/{OLD}/0_{OLD}/data"
    other = f"pre/data/rsyncv2/{OTHER}/{OLD}/0_{OLD}/data"
    for key in (mine, other):
        upload = client.create_multipart_upload(Bucket=s3.bucket, Key=key)
        client.upload_part(Bucket=s3.bucket, Key=key, UploadId=upload["UploadId"],
                           PartNumber=1, Body=b"p" * 1000)
    report = s3.sweep(ENGINE, NAME, HOUR)           # its part is fresh: a running upload
    assert (report.uploads, report.kept, report.levels) == (0, 1, 0)
    report = s3.sweep(ENGINE, NAME, 0)
    assert (report.uploads, report.upload_bytes) == (1, 1000)
    assert [u["Key"] for u in pending_uploads(client, s3.bucket)] == [other]


def test_s3_unfinished_levels_go_published_ones_stay(s3: S3Storage, s3_server: S3Server,
                                                     tmp_path: Path) -> None:
    level0 = write_level(s3, tmp_path, OLD, OLD, 0, [b"zero"])
    write_level(s3, tmp_path, OLD, OLD + 10, 1, [b"unfinished"], complete=False)
    assert s3.sweep(ENGINE, NAME, HOUR).kept == 1     # written a moment ago
    report = s3.sweep(ENGINE, NAME, 0)
    assert (report.levels, report.level_bytes) == (1, 10)
    keys = object_keys(s3_server.client(), s3.bucket)
    assert not [k for k in keys if f"/1_{OLD + 10}/" in k]
    assert read_all(s3, level0) == b"zero"


def test_s3_abandon_aborts_the_running_upload(s3: S3Storage, s3_server: S3Server) -> None:
    engine = FakeEngine()
    rich = RichQueue(size=2)
    rich.put(b"x" * (MIN_PART_SIZE + 1))      # a part: a multipart upload starts
    backup = Backup(engine, NAME, OLD, OLD, 0, storage=s3)
    writer = threading.Thread(target=lambda: pytest.raises(BaseException, s3.write_backup,
                                                           rich, backup), daemon=True)
    writer.start()
    client = s3_server.client()
    deadline = time.monotonic() + 20
    while not pending_uploads(client, s3.bucket):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert s3.abandon(engine, timeout=20)
    writer.join(5)
    assert pending_uploads(client, s3.bucket) == []
    assert object_keys(client, s3.bucket) == []


def test_storages_without_the_hooks_never_remove_anything(tmp_path: Path) -> None:
    """A Storage subclass that supplies none of the sweep hooks (the defaults)."""
    class Minimal(LocalStorage):
        sweep_temporaries = Storage.sweep_temporaries
        subtree_info = Storage.subtree_info
        object_paths = Storage.object_paths
        remove_empty_dir = Storage.remove_empty_dir

    store = Minimal(tmp_path / "store", max_segment_size=64)
    write_level(store, tmp_path, OLD, OLD, 0, [b"orphan"], complete=False)
    temp = temp_file(level_dir(store, NAME, OLD, 0, OLD))
    report = store.sweep(ENGINE, NAME, 0)
    assert (report.temp_objects, report.levels) == (0, 0)
    assert temp.exists() and (temp.parent / "data").exists()
