"""The engine's round trips on S3 (a real S3-API server), with transient and permanent faults."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from freezer_rsyncv2.engine.rsyncv2 import Rsyncv2Engine
from freezer_rsyncv2.errors import StorageAccessError, StorageUnavailableError
from freezer_rsyncv2.storage.s3_upload import MIN_PART_SIZE
from tests import s3server
from tests.functional import treeutil
from tests.functional.conftest import backup, restore
from tests.functional.test_roundtrip import build_level0, change_level1, change_level2
from tests.s3server import Fault, FaultProxy, S3Server, object_keys, pending_uploads

# The server fixtures, made visible to pytest in this module.

NAME = "host_test"
PREFIX = "fleet/web"


def levels(engine: Rsyncv2Engine) -> dict[int, int]:
    chain = engine.storage.get_latest_level_zero_increments(engine, NAME)
    return {level: b.timestamp for level, b in chain.items()}


@pytest.fixture
def make_s3_engine(s3_server: S3Server, clock: Any) -> Callable[..., Rsyncv2Engine]:
    """Engines on one fresh bucket; ``endpoint`` may point at a FaultProxy."""
    bucket = s3server.unique_bucket("rt")
    s3_server.storage(bucket)       # create it without going through a proxy

    def factory(endpoint: str | None = None, **kwargs: Any) -> Rsyncv2Engine:
        kwargs.setdefault("compression", "zstd")
        kwargs.setdefault("max_segment_size", 1 << 20)
        storage = s3_server.storage(f"{bucket}/{PREFIX}", endpoint=endpoint,
                                    max_segment_size=kwargs["max_segment_size"],
                                    part_size=MIN_PART_SIZE)
        return Rsyncv2Engine(storage=storage, **kwargs)

    factory.bucket = bucket  # type: ignore[attr-defined]
    return factory


def test_three_levels_every_kind_on_s3(make_s3_engine: Any, s3_server: S3Server, src: str,
                                       restore_dir: Any) -> None:
    """The local round-trip scenario, unchanged, on S3: 3 levels, restore each by date."""
    build_level0(src)
    snaps, dates = [], []
    for change in (None, change_level1, change_level2):
        if change:
            change(src)
        engine = make_s3_engine()
        level = backup(engine, src, NAME)
        assert level == len(snaps)
        snaps.append(treeutil.snapshot(src))
        dates.append(levels(engine)[level])
    # restores chunk the data by their own segment size, not the backup's
    engine = make_s3_engine(max_segment_size=100_003)
    for level, (snap, date) in enumerate(zip(snaps, dates)):
        dest = restore_dir()
        assert restore(engine, dest, NAME, date=date) == level
        treeutil.assert_same_tree(snap, treeutil.snapshot(dest))
    dest = restore_dir()
    assert restore(engine, dest, NAME) == 2
    treeutil.assert_same_tree(snaps[-1], treeutil.snapshot(dest))
    keys = object_keys(s3_server.client(), make_s3_engine.bucket, f"{PREFIX}/metadata/")
    l0 = dates[0]
    assert keys == [f"{PREFIX}/metadata/rsyncv2/{NAME}/{l0}/{level}_{date}/metadata"
                    for level, date in enumerate(dates)]


def big_tree(src: str, seed: int, size: int = 12 << 20) -> None:
    """Incompressible files big enough for multipart uploads (5 MiB parts)."""
    treeutil.write(os.path.join(src, "big.bin"), os.urandom(size))
    treeutil.write(os.path.join(src, "notes.txt"), b"seed %d\n" % seed)


def test_transient_faults_are_retried(make_s3_engine: Any, fault_proxy: FaultProxy,
                                      s3_server: S3Server, src: str, restore_dir: Any) -> None:
    big_tree(src, 1)
    fault_proxy.add(Fault("UploadPart", 503, times=2), Fault("UploadPart", "drop", skip=1),
                    Fault("PutObject", 500), Fault("PutObject", "lose", skip=1),
                    Fault("CompleteMultipartUpload", "lose"),
                    Fault("ListObjectsV2", 503, code="SlowDown", times=3),
                    Fault("GetObject", "cut", times=3))
    assert backup(make_s3_engine(fault_proxy.endpoint), src, NAME) == 0
    with open(os.path.join(src, "big.bin"), "r+b") as handle:
        handle.seek(5 << 20)
        handle.write(b"changed in the middle")
    assert backup(make_s3_engine(fault_proxy.endpoint), src, NAME) == 1
    dest = restore_dir()
    assert restore(make_s3_engine(fault_proxy.endpoint), dest, NAME) == 1
    treeutil.assert_same_tree(treeutil.snapshot(src), treeutil.snapshot(dest))
    assert all(fault.hits for fault in fault_proxy.faults), fault_proxy.faults
    assert pending_uploads(s3_server.client(), make_s3_engine.bucket) == []


def test_permanent_failure_mid_backup_publishes_nothing(make_s3_engine: Any,
                                                        fault_proxy: FaultProxy,
                                                        s3_server: S3Server, src: str,
                                                        restore_dir: Any) -> None:
    big_tree(src, 2)
    assert backup(make_s3_engine(fault_proxy.endpoint), src, NAME) == 0
    first = levels(make_s3_engine())
    big_tree(src, 3, size=16 << 20)
    # the second part of level 1's data is refused for good
    fault_proxy.add(Fault("UploadPart", 403, skip=1, times=None))
    with pytest.raises(StorageAccessError, match="AccessDenied"):
        backup(make_s3_engine(fault_proxy.endpoint), src, NAME)
    assert levels(make_s3_engine()) == first
    assert pending_uploads(s3_server.client(), make_s3_engine.bucket) == []
    fault_proxy.clear()
    assert backup(make_s3_engine(fault_proxy.endpoint), src, NAME) == 1
    dest = restore_dir()
    restore(make_s3_engine(), dest, NAME)
    treeutil.assert_same_tree(treeutil.snapshot(src), treeutil.snapshot(dest))


def test_server_gone_mid_backup_then_back(make_s3_engine: Any, fault_proxy: FaultProxy,
                                          s3_server: S3Server, src: str,
                                          restore_dir: Any) -> None:
    big_tree(src, 4)
    assert backup(make_s3_engine(fault_proxy.endpoint), src, NAME) == 0
    big_tree(src, 5)
    fault_proxy.add(Fault("UploadPart", "down", skip=1))
    with pytest.raises(StorageUnavailableError, match=fault_proxy.endpoint):
        backup(make_s3_engine(fault_proxy.endpoint), src, NAME)
    fault_proxy.down = False
    engine = make_s3_engine(fault_proxy.endpoint)
    assert list(levels(engine)) == [0]
    # the upload could not be aborted while the server was gone
    client = s3_server.client()
    assert len(pending_uploads(client, make_s3_engine.bucket)) == 1
    assert backup(engine, src, NAME) == 1
    dest = restore_dir()
    restore(make_s3_engine(), dest, NAME)
    treeutil.assert_same_tree(treeutil.snapshot(src), treeutil.snapshot(dest))
    # removing the chain also removes what the failed run left behind
    engine.storage.remove_older_than(engine, 1 << 40, NAME)
    assert object_keys(client, make_s3_engine.bucket) == []
    assert pending_uploads(client, make_s3_engine.bucket) == []


def test_cli_backup_list_restore_verify_on_s3(s3_server: S3Server, tmp_path: Any,
                                              restore_dir: Any,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI with --storage s3: options on the command line, or the AWS environment."""
    from freezer_rsyncv2 import cli
    src = tmp_path / "cli-src"
    treeutil.write(str(src / "a.txt"), b"one\n")
    bucket = s3server.unique_bucket("cli")
    where = ["--storage", "s3", "--container", f"{bucket}/nightly", "--hostname", "h",
             "--backup-name", "docs"]
    keys = ["--endpoint", s3_server.endpoint, "--access-key", s3_server.access_key,
            "--secret-key", s3_server.secret_key]
    assert cli.main(["backup", "--path-to-backup", str(src), *where, *keys]) == 0
    treeutil.write(str(src / "b.txt"), b"two\n")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    assert cli.main(["backup", "--path-to-backup", str(src), *where]) == 0
    capsys.readouterr()
    assert cli.main(["list", *where]) == 0
    listing = capsys.readouterr().out
    assert "level 0" in listing and "level 1" in listing
    dest = restore_dir()
    assert cli.main(["restore", "--restore-abs-path", dest, *where]) == 0
    treeutil.assert_same_tree(treeutil.snapshot(str(src)), treeutil.snapshot(dest))
    assert cli.main(["verify", *where]) == 0
    missing = ["--storage", "s3", "--container", "no-such-bucket-here", "--hostname", "h",
               "--backup-name", "docs"]
    assert cli.main(["restore", "--restore-abs-path", restore_dir(), *missing]) == 1
    assert "no-such-bucket-here" in capsys.readouterr().err
