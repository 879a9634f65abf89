"""S3Storage against a real S3-API server: the whole storage contract plus S3 specifics."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest

from freezer_rsyncv2.handoff import QueueStopped, RichQueue
from freezer_rsyncv2.errors import (BucketNotFoundError, ConfigError, StorageAccessError,
                                    StorageError, StorageUnavailableError)
from freezer_rsyncv2.storage import factory, s3_client
from freezer_rsyncv2.storage.base import Backup, Storage, StorageFileNotFoundError
from freezer_rsyncv2.storage.local import LocalStorage
from freezer_rsyncv2.storage.retry import RetryPolicy, is_transient
from freezer_rsyncv2.storage.s3 import S3Storage
from freezer_rsyncv2.storage.s3_upload import MIN_PART_SIZE, ObjectWriter
from tests import s3server
from tests.s3server import (ACCESS_KEY as ACCESS, SECRET_KEY as SECRET, Fault, FaultProxy,
                            S3Server, object_keys, pending_uploads, unique_bucket)
from tests.unit.storage.test_contract import (ENGINE, NAME, StorageContract, queue_of,
                                              read_all, write_level)

MIB = 1 << 20

# The server fixtures, made visible to pytest in this module.


class TestS3StorageContract(StorageContract):
    """The shared contract on one bucket, each test under its own prefix."""

    newline_in_names = False    # moto mangles keys holding a newline

    @pytest.fixture(autouse=True)
    def _server(self, s3_server: S3Server) -> None:
        self.server = s3_server

    def make_storage(self, root: Path, max_segment_size: int) -> Storage:
        digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
        # A tiny listing page makes every listing test exercise pagination.
        return self.server.storage(f"contract/{digest}/{root.name}",
                                   max_segment_size=max_segment_size, list_page_size=7,
                                   part_size=MIN_PART_SIZE)


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return unique_bucket()


@pytest.fixture
def storage(s3_server: S3Server, bucket: str) -> S3Storage:
    return s3_server.storage(f"{bucket}/backups/site1", max_segment_size=MIB,
                             part_size=MIN_PART_SIZE)


def spy(monkeypatch: pytest.MonkeyPatch, client: Any, method: str) -> list[dict[str, Any]]:
    """Record the keyword arguments of every call of ``client.<method>``."""
    calls: list[dict[str, Any]] = []
    real = getattr(client, method)

    def wrapper(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(client, method, wrapper)
    return calls


# -- layout -----------------------------------------------------------------------------------

def test_keys_mirror_the_local_layout_under_the_prefix(storage: S3Storage, s3_server: S3Server,
                                                       bucket: str, tmp_path: Path) -> None:
    assert storage.storage_path == f"{bucket}/backups/site1"
    write_level(storage, tmp_path, 100, 100, 0)
    level = "rsyncv2/host_docs/100/0_100"
    assert object_keys(s3_server.client(), bucket) == [
        f"backups/site1/data/{level}/data",
        f"backups/site1/data/{level}/engine_metadata",
        f"backups/site1/metadata/{level}/metadata",
    ]


def test_bucket_without_prefix(s3_server: S3Server, bucket: str, tmp_path: Path) -> None:
    storage = s3_server.storage(f"/{bucket}/")
    assert storage.storage_path == bucket
    write_level(storage, tmp_path, 100, 100, 0)
    assert object_keys(s3_server.client(), bucket, "metadata/") == [
        "metadata/rsyncv2/host_docs/100/0_100/metadata"]
    assert storage.listdir(bucket) == ["data", "metadata"]
    assert storage.info()[0]["objects_count"] == 3


@pytest.mark.parametrize("container, expected", [
    ("b", ("b", "")), ("b/p", ("b", "p")), ("/b/p/q/", ("b", "p/q")),
])
def test_split_container(container: str, expected: tuple[str, str]) -> None:
    assert s3_client.split_container(container) == expected


@pytest.mark.parametrize("container", ["", "/", "b//p", "b/../p", "b/./p", "my bucket"])
def test_bad_container_is_a_config_error(container: str) -> None:
    with pytest.raises(ConfigError):
        s3_client.split_container(container)


def test_path_outside_bucket_is_refused(storage: S3Storage) -> None:
    with pytest.raises(StorageError, match="not in bucket"):
        storage.listdir("other-bucket/x")


# -- uploads ----------------------------------------------------------------------------------

def test_segments_are_uploaded_as_parts_while_produced(storage: S3Storage, s3_server: S3Server,
                                                       bucket: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A part is stored before the level's last segment even exists: nothing waits for the end."""
    calls = spy(monkeypatch, storage.client, "upload_part")
    real = storage.client.upload_part
    part_stored = threading.Event()

    def probe(**kwargs: Any) -> Any:
        response = real(**kwargs)
        part_stored.set()
        return response

    monkeypatch.setattr(storage.client, "upload_part", probe)
    segments = [bytes([i]) * MIB for i in range(13)]
    stored_before_last: list[bool] = []

    def produce():
        for i, segment in enumerate(segments):
            if i == len(segments) - 1:
                stored_before_last.append(part_stored.wait(10))
            yield segment

    rich = RichQueue(size=2)
    threading.Thread(target=rich.put_messages, args=(produce(),), daemon=True).start()
    backup = Backup(ENGINE, NAME, 10, 10, 0, storage=storage)
    storage.write_backup(rich, backup)
    assert stored_before_last == [True]
    assert sorted(len(c["Body"]) for c in calls) == [3 * MIB, 5 * MIB, 5 * MIB]
    assert read_all(storage, backup) == b"".join(segments)
    assert pending_uploads(s3_server.client(), bucket) == []


def test_part_sizes(storage: S3Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy(monkeypatch, storage.client, "upload_part")
    segments = [b"a" * (3 * MIB), b"b" * (11 * MIB), b"c" * 100]
    backup = Backup(ENGINE, NAME, 10, 10, 0, storage=storage)
    storage.write_backup(queue_of(segments), backup)
    sizes = sorted((c["PartNumber"], len(c["Body"])) for c in calls)
    assert sizes == [(1, 14 * MIB), (2, 100)]
    assert read_all(storage, backup) == b"".join(segments)


def test_small_level_is_one_put(storage: S3Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    creates = spy(monkeypatch, storage.client, "create_multipart_upload")
    puts = spy(monkeypatch, storage.client, "put_object")
    backup = Backup(ENGINE, NAME, 10, 10, 0, storage=storage)
    storage.write_backup(queue_of([b"x" * 1000] * 10), backup)
    assert creates == [] and len(puts) == 1


def test_part_size_grows_to_fit_s3_part_limit() -> None:
    writer = ObjectWriter(None, "b", "k", lambda op, fn: fn(), part_size=MIN_PART_SIZE)
    assert writer.threshold() == MIN_PART_SIZE
    writer._next_part = 1001
    assert writer.threshold() == 2 * MIN_PART_SIZE
    writer._next_part = 9999
    assert writer.threshold() == 512 * MIN_PART_SIZE


@pytest.mark.parametrize("part_size", [MIN_PART_SIZE - 1, 0, True, 6 << 30])
def test_bad_part_size_is_a_config_error(s3_server: S3Server, part_size: Any) -> None:
    with pytest.raises(ConfigError):
        s3_server.storage("x", part_size=part_size, skip_prepare=True)


def test_failed_producer_aborts_the_multipart_upload(storage: S3Storage, s3_server: S3Server,
                                                     bucket: str) -> None:
    def broken():
        for i in range(12):
            yield bytes([i]) * MIB
        raise RuntimeError("disk read error")

    rich = RichQueue(size=2)
    threading.Thread(target=lambda: pytest.raises(RuntimeError, rich.put_messages, broken()),
                     daemon=True).start()
    backup = Backup(ENGINE, NAME, 10, 10, 0, storage=storage)
    with pytest.raises(QueueStopped):
        storage.write_backup(rich, backup)
    assert object_keys(s3_server.client(), bucket) == []
    assert pending_uploads(s3_server.client(), bucket) == []


def test_put_file_large_round_trip(storage: S3Storage, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    parts = spy(monkeypatch, storage.client, "upload_part")
    src, out = tmp_path / "big", tmp_path / "out"
    src.write_bytes(hashlib.sha256(b"seed").digest() * (12 * MIB // 32 + 5))
    target = f"{storage.storage_path}/misc/big"
    storage.put_file(str(src), target)
    assert len(parts) == 3
    storage.get_file(target, str(out))
    assert out.read_bytes() == src.read_bytes()


def test_rmtree_aborts_unfinished_uploads(storage: S3Storage, s3_server: S3Server,
                                          bucket: str) -> None:
    client = s3_server.client()
    client.create_multipart_upload(Bucket=bucket, Key="backups/site1/data/x/data")
    client.create_multipart_upload(Bucket=bucket, Key="backups/site10/data/x/data")
    storage.rmtree(f"{storage.storage_path}/data")
    assert [u["Key"] for u in pending_uploads(client, bucket)] == ["backups/site10/data/x/data"]


# -- errors and retries -----------------------------------------------------------------------

def proxied(server: S3Server, proxy: FaultProxy, bucket: str, **kwargs: Any) -> S3Storage:
    server.storage(bucket)      # create the bucket directly
    return server.storage(f"{bucket}/p", endpoint=proxy.endpoint, max_segment_size=MIB,
                          part_size=MIN_PART_SIZE, **kwargs)


def test_transient_errors_are_retried(s3_server: S3Server, fault_proxy: FaultProxy,
                                      bucket: str, tmp_path: Path) -> None:
    storage = proxied(s3_server, fault_proxy, bucket)
    fault_proxy.add(Fault("UploadPart", 503, times=2), Fault("UploadPart", "drop", skip=1),
                    Fault("CompleteMultipartUpload", "lose"),
                    Fault("CompleteMultipartUpload", 404, code="NoSuchUpload"),
                    Fault("PutObject", 500),
                    Fault("ListObjectsV2", "drop"), Fault("HeadObject", 503),
                    Fault("GetObject", "cut", times=2, path="/data"))
    segments = [bytes([i]) * MIB for i in range(12)]
    backup = write_level(storage, tmp_path, 100, 100, 0, segments=segments)
    assert read_all(storage, backup) == b"".join(segments)
    assert storage.level_size(backup) == 12 * MIB + len(b"engine-meta")
    assert list(storage.get_latest_level_zero_increments(ENGINE, NAME)) == [0]
    assert fault_proxy.outcomes("UploadPart").count("503") == 2
    # the first answer was lost; the retry found the upload already complete
    assert fault_proxy.outcomes("CompleteMultipartUpload") == ["lose", "404"]
    # the level's metadata is read first (the data's declared size), then the data
    assert fault_proxy.outcomes("GetObject")[:4] == ["200", "cut", "cut", "206"]
    assert pending_uploads(s3_server.client(), bucket) == []


def test_corrupted_uploads_are_detected_and_resent(s3_server: S3Server,
                                                   fault_proxy: FaultProxy, bucket: str,
                                                   tmp_path: Path) -> None:
    storage = proxied(s3_server, fault_proxy, bucket)
    assert storage.content_md5      # custom endpoint: Content-MD5 on every upload
    fault_proxy.add(Fault("UploadPart", "corrupt", times=2), Fault("PutObject", "corrupt"))
    segments = [bytes([i]) * MIB for i in range(7)]
    backup = write_level(storage, tmp_path, 100, 100, 0, segments=segments)
    assert read_all(storage, backup) == b"".join(segments)
    assert fault_proxy.outcomes("UploadPart").count("BadDigest") == 2
    assert fault_proxy.outcomes("PutObject")[0] == "BadDigest"


def test_retries_give_up_with_a_clear_error(s3_server: S3Server,
                                            fault_proxy: FaultProxy, bucket: str) -> None:
    storage = proxied(s3_server, fault_proxy, bucket)
    fault_proxy.add(Fault("ListObjectsV2", 503, times=None))
    with pytest.raises(StorageUnavailableError) as info:
        storage.listdir(storage.storage_path)
    message = str(info.value)
    assert "\n" not in message and bucket in message and fault_proxy.endpoint in message
    assert fault_proxy.outcomes("ListObjectsV2") == ["503"] * 4


def test_access_denied_is_permanent(s3_server: S3Server, fault_proxy: FaultProxy,
                                    bucket: str, tmp_path: Path) -> None:
    storage = proxied(s3_server, fault_proxy, bucket)
    fault_proxy.add(Fault("PutObject", 403, times=None))
    src = tmp_path / "f"
    src.write_bytes(b"x")
    with pytest.raises(StorageAccessError, match="AccessDenied") as info:
        storage.put_file(str(src), f"{storage.storage_path}/f")
    assert not isinstance(info.value, ConfigError)     # exit 1, not a usage error
    assert info.value.exit_code == 1
    assert bucket in str(info.value) and fault_proxy.endpoint in str(info.value)
    assert fault_proxy.outcomes("PutObject") == ["403"]


def test_missing_bucket(s3_server: S3Server, bucket: str) -> None:
    with pytest.raises(BucketNotFoundError, match=bucket):
        s3_server.storage(bucket, create_bucket=False)
    lazy = s3_server.storage(f"{bucket}/p", skip_prepare=True)
    with pytest.raises(BucketNotFoundError, match=s3_server.endpoint):
        lazy.listdir(f"{bucket}/p/metadata")
    s3_server.storage(bucket)       # create_bucket=True (default) creates it
    assert lazy.listdir(f"{bucket}/p/metadata") == []


def test_unreachable_endpoint(bucket: str) -> None:
    retry = RetryPolicy(attempts=2, initial_delay=0, max_delay=0)
    with pytest.raises(StorageUnavailableError, match="127.0.0.1:9"):
        S3Storage(bucket, endpoint_url="http://127.0.0.1:9", access_key="a", secret_key="b",
                  retry=retry, connect_timeout=1)


@pytest.mark.parametrize("endpoint", ["not a url", "ftp//x"])
def test_malformed_endpoint_is_a_config_error(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="endpoint"):
        S3Storage("b", endpoint_url=endpoint, access_key="a", secret_key="b", skip_prepare=True)


def test_missing_credentials(s3_server: S3Server, bucket: str, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageAccessError, match="credentials"):
        S3Storage(bucket, endpoint_url=s3_server.endpoint)
    with pytest.raises(ConfigError, match="both"):
        S3Storage(bucket, endpoint_url=s3_server.endpoint, access_key="only-one")


def test_missing_object_errors_name_the_path(storage: S3Storage) -> None:
    backup = Backup(ENGINE, NAME, 10, 10, 0, storage=storage)
    with pytest.raises(StorageFileNotFoundError) as info:
        list(storage.backup_blocks(backup))
    assert info.value.path == backup.data_path


@pytest.mark.parametrize("status, transient", [(500, True), (503, True), (429, True),
                                               (400, False), (403, False), (404, False)])
def test_transient_classification(status: int, transient: bool) -> None:
    from botocore.exceptions import ClientError
    error = ClientError({"Error": {"Code": "X"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                        "GetObject")
    assert is_transient(error) is transient
    slow = ClientError({"Error": {"Code": "SlowDown"},
                        "ResponseMetadata": {"HTTPStatusCode": 400}}, "PutObject")
    assert is_transient(slow)


def test_retry_policy_backoff_is_bounded() -> None:
    policy = RetryPolicy(attempts=10, initial_delay=1, max_delay=8, jitter=False)
    assert [policy.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]
    jittery = RetryPolicy(initial_delay=4, max_delay=8)
    assert all(2 <= jittery.delay(1) <= 4 for _ in range(50))
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


# -- building a storage from CLI/config values ------------------------------------------------

def test_factory_builds_s3_from_the_aws_environment(s3_server: S3Server, bucket: str) -> None:
    environ = {"AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_ACCESS_KEY_ID": ACCESS,
               "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    storage = factory.build_storage("s3", f"{bucket}/p", environ=environ,
                                    max_segment_size=1000, retry=s3server.FAST_RETRY)
    assert isinstance(storage, S3Storage) and storage.type == "s3"
    assert (storage.storage_path, storage.max_segment_size) == (f"{bucket}/p", 1000)
    assert storage.endpoint_url == s3_server.endpoint
    assert storage.listdir(storage.storage_path) == []


def test_factory_explicit_values_beat_the_environment() -> None:
    environ = {"AWS_ENDPOINT_URL": "http://env", "AWS_ENDPOINT_URL_S3": "http://env-s3",
               "AWS_ACCESS_KEY_ID": "env-key", "AWS_SECRET_ACCESS_KEY": "env-secret",
               "AWS_SESSION_TOKEN": "env-token", "AWS_REGION": "eu-west-1",
               "AWS_DEFAULT_REGION": "us-west-2"}
    assert factory.s3_settings(environ=environ) == {
        "endpoint_url": "http://env-s3", "access_key": "env-key", "secret_key": "env-secret",
        "session_token": "env-token", "region": "eu-west-1"}
    assert factory.s3_settings("http://cli", "k", "s", "r", environ=environ) == {
        "endpoint_url": "http://cli", "access_key": "k", "secret_key": "s",
        "session_token": None, "region": "r"}
    assert factory.s3_settings(environ={}) == {
        "endpoint_url": None, "access_key": None, "secret_key": None,
        "session_token": None, "region": None}


def test_factory_local(tmp_path: Path) -> None:
    for kind in ("local", None):
        storage = factory.build_storage(kind, str(tmp_path / "c"), max_segment_size=77)
        assert isinstance(storage, LocalStorage) and storage.max_segment_size == 77
    with pytest.raises(ConfigError, match="endpoint.*only apply to --storage s3"):
        factory.build_storage("local", str(tmp_path / "c"), endpoint="http://x")
    with pytest.raises(ConfigError, match="unknown storage"):
        factory.build_storage("ftp", "c")
    with pytest.raises(ConfigError, match="container"):
        factory.build_storage("s3", "")
