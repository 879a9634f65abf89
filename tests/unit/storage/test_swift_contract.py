"""SwiftStorage against a real Swift cluster: the storage contract, on Swift's own API and on
its S3 API (S3Storage through s3api), plus what is Swift's own: SLO segments, logins, sweeps."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from freezer_rsyncv2.handoff import QueueStopped, RichQueue
from freezer_rsyncv2.errors import BucketNotFoundError, ConfigError, StorageAccessError, StorageError
from freezer_rsyncv2.storage import factory
from freezer_rsyncv2.storage.base import Backup, Storage, StorageFileNotFoundError
from freezer_rsyncv2.storage.s3 import S3Storage
from freezer_rsyncv2.storage.s3_upload import MIN_PART_SIZE
from freezer_rsyncv2.storage.swift import SwiftStorage, split_container
from freezer_rsyncv2.storage.swift_client import SwiftAuthError, SwiftSettings
from freezer_rsyncv2.storage.swift_upload import segment_prefix
from tests.s3server import FAST_RETRY as S3_FAST_RETRY
from tests.swiftserver import FAST_RETRY as FAST_RETRY_SWIFT
from tests.swiftserver import SwiftServer, unique_container
from tests.unit.storage.test_contract import (ENGINE, NAME, FakeEngine, StorageContract, queue_of,
                                              read_all, write_level)

MIB = 1 << 20
OLD = 1_000_000_000         # a level timestamp long past


def _digest(root: Path) -> str:
    return hashlib.sha256(str(root).encode()).hexdigest()[:16]


class TestSwiftStorageContract(StorageContract):
    """The shared contract, each test on its own container (with a prefix)."""

    @pytest.fixture(autouse=True)
    def _server(self, swift_server: SwiftServer) -> None:
        self.server = swift_server

    def make_storage(self, root: Path, max_segment_size: int) -> Storage:
        return self.server.storage(f"c-{_digest(root)}/{root.name}", max_segment_size=max_segment_size)


class TestS3OnSwiftContract(StorageContract):
    """The shared contract on Swift's S3 API (s3api with tempauth), one bucket, a prefix per test."""

    @pytest.fixture(autouse=True)
    def _server(self, swift_server: SwiftServer) -> None:
        self.server = swift_server

    def make_storage(self, root: Path, max_segment_size: int) -> Storage:
        return S3Storage(f"s3api-contract/{_digest(root)}/{root.name}", endpoint_url=self.server.endpoint,
                         access_key=self.server.access_key, secret_key=self.server.secret_key,
                         region=self.server.region, max_segment_size=max_segment_size,
                         part_size=MIN_PART_SIZE, retry=S3_FAST_RETRY, list_page_size=7)


@pytest.fixture
def container(swift_server: SwiftServer) -> str:
    return unique_container()


@pytest.fixture
def storage(swift_server: SwiftServer, container: str) -> SwiftStorage:
    return swift_server.storage(f"{container}/backups/site1", max_segment_size=MIB)


# -- layout ---------------------------------------------------------------------------------

def test_objects_are_named_as_freezer_names_them(storage: SwiftStorage, swift_server: SwiftServer,
                                                 container: str, tmp_path: Path) -> None:
    write_level(storage, tmp_path, 100, 100, 0, segments=[b"x" * (2 * MIB + 5)])
    write_level(storage, tmp_path, 100, 150, 1, segments=[b"small"])
    level0, level1 = "rsyncv2/host_docs/100/0_100", "rsyncv2/host_docs/100/1_150"
    assert swift_server.object_names(container) == [
        f"backups/site1/data/{level0}/data",
        f"backups/site1/data/{level0}/engine_metadata",
        f"backups/site1/data/{level0}/segments/00000000",
        f"backups/site1/data/{level0}/segments/00000001",
        f"backups/site1/data/{level0}/segments/00000002",
        f"backups/site1/data/{level1}/data",
        f"backups/site1/data/{level1}/engine_metadata",
        f"backups/site1/metadata/{level0}/metadata",
        f"backups/site1/metadata/{level1}/metadata",
    ]
    head = swift_server.client().head_object(container, f"backups/site1/data/{level0}/data")
    assert head["x-static-large-object"] == "True" and int(head["content-length"]) == 2 * MIB + 5


@pytest.mark.parametrize("text, expected", [
    ("c", ("c", "")), ("c/p", ("c", "p")), ("/c/p/q/", ("c", "p/q")),
])
def test_split_container(text: str, expected: tuple[str, str]) -> None:
    assert split_container(text) == expected


@pytest.mark.parametrize("text", ["", "/", "c//p", "c/../p", "c/./p", "a\nb"])
def test_bad_container_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        split_container(text)


def test_segment_prefix() -> None:
    assert segment_prefix("a/b/0_1/data") == "a/b/0_1/segments"
    assert segment_prefix("a/b/0_1/engine_metadata") == "a/b/0_1/.engine_metadata.segments"


# -- uploads --------------------------------------------------------------------------------

def test_segments_are_stored_while_produced(storage: SwiftStorage, swift_server: SwiftServer,
                                            container: str) -> None:
    """The first segment is in Swift before the level's last segment even exists."""
    rich = RichQueue(size=2)
    backup = Backup(ENGINE, NAME, 10, 10, 0, storage=storage)
    writer = threading.Thread(target=storage.write_backup, args=(rich, backup), daemon=True)
    writer.start()
    rich.put(b"a" * MIB)
    rich.put(b"b" * MIB)
    segments = f"backups/site1/data/rsyncv2/{NAME}/10/0_10/segments/"
    deadline = time.monotonic() + 20
    while not swift_server.object_names(container, segments):
        assert time.monotonic() < deadline, "no segment stored while the level was open"
        time.sleep(0.05)
    assert storage.stored_size(backup.data_path) is None     # not published before the end
    rich.put(b"c" * 10)
    rich.finish()
    writer.join(20)
    assert read_all(storage, backup) == b"a" * MIB + b"b" * MIB + b"c" * 10
    assert len(swift_server.object_names(container, segments)) == 3


def test_many_segments_nest_manifests(swift_server: SwiftServer, container: str) -> None:
    """Past the manifest limit, groups of segments get sub-manifests; the data reads back whole."""
    storage = swift_server.storage(container, max_segment_size=MIB, manifest_limit=4)
    data = os.urandom(10 * MIB + 123)
    backup = Backup(ENGINE, NAME, 10, 10, 0, storage=storage)
    storage.write_backup(queue_of([data[i:i + 300_000] for i in range(0, len(data), 300_000)]), backup)
    names = swift_server.object_names(container, f"data/rsyncv2/{NAME}/10/0_10/segments/")
    assert len([n for n in names if "/index-" in n]) == 3 and len(names) == 11 + 3
    assert read_all(storage, backup) == data
    assert storage.stored_size(backup.data_path) == len(data)


def test_failed_producer_deletes_the_stored_segments(storage: SwiftStorage, swift_server: SwiftServer,
                                                     container: str) -> None:
    def messages():
        yield b"x" * (3 * MIB)
        raise RuntimeError("source vanished")

    rich = RichQueue(size=1)
    producer = threading.Thread(target=lambda: pytest.raises(RuntimeError, rich.put_messages, messages()),
                                daemon=True)
    producer.start()
    backup = Backup(ENGINE, NAME, 10, 10, 0, storage=storage)
    with pytest.raises(QueueStopped):
        storage.write_backup(rich, backup)
    producer.join(5)
    assert swift_server.object_names(container) == []


def test_replacing_a_large_object_drops_its_old_segments(storage: SwiftStorage, swift_server: SwiftServer,
                                                         container: str, tmp_path: Path) -> None:
    path = f"{storage.storage_path}/misc/big"
    for size in (4 * MIB + 1, 2 * MIB + 1):
        src = tmp_path / "src"
        src.write_bytes(os.urandom(size))
        storage.put_file(str(src), path)
        out = tmp_path / "out"
        storage.get_file(path, str(out))
        assert out.read_bytes() == src.read_bytes()
    assert swift_server.object_names(container) == [
        "backups/site1/misc/.big.segments/00000000", "backups/site1/misc/.big.segments/00000001",
        "backups/site1/misc/.big.segments/00000002", "backups/site1/misc/big"]
    assert storage.listdir(f"{storage.storage_path}/misc") == [".big.segments", "big"]


def test_a_freezer_dlo_level_reads_back(storage: SwiftStorage, swift_server: SwiftServer,
                                        container: str, tmp_path: Path) -> None:
    """Freezer's own Swift storage writes a Dynamic Large Object over the same segment names."""
    backup = Backup(ENGINE, NAME, 10, 10, 0, storage=storage)
    client = swift_server.client()
    data_name = backup.data_path.split("/", 1)[1]
    segments = backup.segments_path.split("/", 1)[1]
    for i, part in enumerate((b"first-", b"second-", b"third")):
        client.put_object(container, f"{segments}/{i:08d}", part)
    client.put_object(container, data_name, b"", headers={"X-Object-Manifest": backup.segments_path})
    assert read_all(storage, backup) == b"first-second-third"
    assert storage.stored_size(backup.data_path) == len(b"first-second-third")


# -- logins and errors ----------------------------------------------------------------------

def test_wrong_password_is_an_access_error(swift_server: SwiftServer, container: str) -> None:
    with pytest.raises(SwiftAuthError, match="refused") as info:
        swift_server.storage(container, settings=swift_server.settings(password="wrong"))
    assert isinstance(info.value, StorageAccessError) and not isinstance(info.value, ConfigError)
    assert "\n" not in str(info.value) and "wrong" not in str(info.value)


def test_wrong_password_without_prepare_fails_on_first_request(swift_server: SwiftServer,
                                                               container: str) -> None:
    storage = swift_server.storage(container, skip_prepare=True,
                                   settings=swift_server.settings(password="wrong"))
    with pytest.raises(SwiftAuthError):
        storage.listdir(container)


def test_a_user_without_rights_is_refused(swift_server: SwiftServer, container: str) -> None:
    reader = swift_server.settings(username="test:reader", password="reading")
    with pytest.raises(SwiftAuthError, match="403"):
        swift_server.storage(container, settings=reader)


def test_missing_container_without_create(swift_server: SwiftServer, container: str,
                                          tmp_path: Path) -> None:
    with pytest.raises(BucketNotFoundError, match=container):
        swift_server.storage(container, create_container=False)
    storage = swift_server.storage(container, skip_prepare=True)
    assert storage.listdir(container) == []
    with pytest.raises(StorageFileNotFoundError):
        storage.get_file(f"{container}/x", str(tmp_path / "x"))


def test_unreachable_swift_is_a_storage_error(container: str) -> None:
    settings = SwiftSettings.from_options(auth_url="http://127.0.0.1:9/auth/v1.0", username="a:b",
                                          password="c", auth_version="1", environ={})
    with pytest.raises(StorageError, match="127.0.0.1:9") as info:
        SwiftStorage(container, settings, retry=FAST_RETRY_SWIFT, timeout=2)
    assert not isinstance(info.value, ConfigError)


def test_settings_come_from_the_os_environment() -> None:
    environ = {"OS_AUTH_URL": "http://k/v3", "OS_USERNAME": "u", "OS_PASSWORD": "p",
               "OS_PROJECT_NAME": "proj", "OS_REGION_NAME": "R1", "OS_IDENTITY_API_VERSION": "3",
               "OS_USER_DOMAIN_NAME": "ud", "OS_PROJECT_DOMAIN_NAME": "pd", "OS_INTERFACE": "internal"}
    got = SwiftSettings.from_options(environ=environ)
    assert (got.auth_url, got.username, got.password, got.project_name, got.region_name, got.auth_version,
            got.user_domain_name, got.project_domain_name, got.interface) == (
        "http://k/v3", "u", "p", "proj", "R1", "3", "ud", "pd", "internal")
    explicit = SwiftSettings.from_options(auth_url="http://t/auth/v1.0", username="a:b", password="k",
                                          auth_version=1, environ=environ)
    assert (explicit.auth_url, explicit.username, explicit.auth_version) == ("http://t/auth/v1.0", "a:b", "1")
    assert "p" not in repr(got).replace("proj", "").replace("pd", "").replace("http", "")


@pytest.mark.parametrize("environ, message", [
    ({}, "--os-auth-url, --os-username, --os-password"),
    ({"OS_AUTH_URL": "u", "OS_USERNAME": "u", "OS_PASSWORD": "p"}, "--os-project-name"),
    ({"OS_AUTH_URL": "u", "OS_USERNAME": "u", "OS_PASSWORD": "p", "OS_AUTH_VERSION": "4"}, "auth-version"),
])
def test_incomplete_settings_are_config_errors(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SwiftSettings.from_options(environ=environ)


def test_factory_builds_swift_from_the_environment(swift_server: SwiftServer, container: str) -> None:
    storage = factory.build_storage("swift", f"{container}/p", environ=swift_server.env(),
                                    max_segment_size=1000, retry=FAST_RETRY_SWIFT)
    assert isinstance(storage, SwiftStorage) and storage.type == "swift"
    assert (storage.storage_path, storage.max_segment_size, storage.segment_size) == (f"{container}/p", 1000, MIB)
    assert storage.listdir(storage.storage_path) == []
    with pytest.raises(ConfigError, match="os auth url only apply to --storage swift"):
        factory.build_storage("s3", "b", os_options={"auth_url": "http://x"})
    with pytest.raises(ConfigError, match="endpoint only apply to --storage s3"):
        factory.build_storage("swift", "b", endpoint="http://x", environ=swift_server.env())


# -- interrupted runs ------------------------------------------------------------------------

def test_sweep_removes_the_segments_of_a_killed_upload(storage: SwiftStorage, swift_server: SwiftServer,
                                                       container: str, tmp_path: Path) -> None:
    """A killed run leaves segments and no manifest: an unfinished level, swept once old enough."""
    level0 = write_level(storage, tmp_path, OLD, OLD, 0, [b"zero"])
    client = swift_server.client()
    orphan = f"backups/site1/data/rsyncv2/{NAME}/{OLD}/1_{OLD + 10}/segments/"
    for i in range(3):
        client.put_object(container, f"{orphan}{i:08d}", b"s" * 1000)
    other = f"backups/site1/data/rsyncv2/{NAME}2/{OLD}/1_{OLD + 10}/segments/00000000"
    client.put_object(container, other, b"o")
    assert storage.sweep(ENGINE, NAME, 3600).kept == 1          # written a moment ago
    report = storage.sweep(ENGINE, NAME, 0)
    assert (report.levels, report.level_bytes) == (1, 3000)
    assert swift_server.object_names(container, orphan) == []
    assert swift_server.object_names(container, other) == [other]
    assert read_all(storage, level0) == b"zero"


def test_abandon_deletes_the_running_uploads_segments(storage: SwiftStorage, swift_server: SwiftServer,
                                                      container: str) -> None:
    engine = FakeEngine()
    rich = RichQueue(size=2)
    rich.put(b"x" * (MIN_PART_SIZE + 1))       # more than a segment: one is uploaded
    backup = Backup(engine, NAME, OLD, OLD, 0, storage=storage)
    writer = threading.Thread(target=lambda: pytest.raises(BaseException, storage.write_backup, rich, backup),
                              daemon=True)
    writer.start()
    deadline = time.monotonic() + 20
    while not swift_server.object_names(container):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert storage.abandon(engine, timeout=20)
    writer.join(5)
    assert swift_server.object_names(container) == []


def test_metadata_is_written_last(storage: SwiftStorage, swift_server: SwiftServer, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    real = storage.writer

    def spy(name: str):
        order.append(name.rsplit("/", 1)[1])
        return real(name)

    monkeypatch.setattr(storage, "writer", spy)
    backup = write_level(storage, tmp_path, 100, 100, 0, segments=[b"d" * (MIB + 1)])
    assert order == ["data", "engine_metadata", "metadata"]
    assert json.loads(storage.read_object(backup.metadata_path, 100)) == {"level": 0, "ts": 100}
