"""freezer_compat: Freezer's S3 storage gets a working put_file and a checked data upload.

Freezer is not installed here: a stand-in ``freezer.storage.s3`` module
holds an ``S3Storage`` with freezer 19.0.0's two faults (``put_file``
passes ``len()`` of an open file; ``write_backup`` loses a failed upload
without raising) over an in-memory S3 client.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from freezer_rsyncv2 import errors, freezer_compat
from freezer_rsyncv2 import freezer_s3 as s3_fixes
from freezer_rsyncv2.freezer_engine import Rsyncv2Engine
from freezer_rsyncv2.storage.local import LocalStorage

NAME = "host_s3"


def client_error(status: int, code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


class FakeS3Client:
    """The few calls Freezer's S3 storage and our fixes make, on a dict of objects."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.puts: list[dict[str, Any]] = []
        self.head_error: ClientError | None = None

    def put_object(self, Bucket: str, Key: str, Body: Any, ContentLength: int) -> dict:
        data = Body if isinstance(Body, bytes) else Body.read()
        assert len(data) == ContentLength
        self.puts.append({"Bucket": Bucket, "Key": Key, "Body": Body,
                          "ContentLength": ContentLength})
        self.objects[(Bucket, Key)] = data
        return {}

    def head_object(self, Bucket: str, Key: str) -> dict:
        if self.head_error is not None:
            raise self.head_error
        if (Bucket, Key) not in self.objects:
            raise client_error(404, "404", "HeadObject")
        return {"ContentLength": len(self.objects[(Bucket, Key)])}

    def keys(self) -> list[str]:
        return sorted(key for _bucket, key in self.objects)


class FreezerS3Storage:
    """What our engine uses of freezer 19.0.0's S3Storage, faults included."""

    def __init__(self, container: str, client: FakeS3Client) -> None:
        self.storage_path = container
        self.endpoint = "http://s3.example"
        self.client = client
        self.lose_upload = False        # as a failed part or completion does
        self.cut_upload = 0             # bytes missing from the stored object

    def get_s3_connection(self) -> FakeS3Client:
        return self.client

    def previous_backup(self, **_kwargs: Any) -> None:
        return None

    def get_level_zero(self, **_kwargs: Any) -> list:
        return []

    def write_backup(self, rich_queue: Any, backup: Any) -> None:
        bucket, key = backup.copy(self).data_path.split("/", 1)
        data = b"".join(rich_queue.get_messages())
        if self.lose_upload:
            return          # logged and aborted, not raised
        self.client.objects[(bucket, key)] = data[:len(data) - self.cut_upload]

    def put_metadata(self, engine_metadata_path: str, freezer_metadata_path: str,
                     backup: Any) -> None:
        backup = backup.copy(self)
        self.put_file(engine_metadata_path, backup.engine_metadata_path)
        self.put_file(freezer_metadata_path, backup.metadata_path)

    def put_file(self, from_path: str, to_path: str) -> None:
        bucket, key = to_path.split("/", 1)
        with open(from_path, "rb") as f:
            self.get_s3_connection().put_object(Bucket=bucket, Key=key, Body=f,
                                                ContentLength=len(f))


@pytest.fixture
def freezer_s3(monkeypatch) -> type:
    """Freezer's S3 module, as loaded in freezer-agent (the stand-in)."""
    module = types.ModuleType(freezer_compat.FREEZER_S3_MODULE)
    module.S3Storage = type("S3Storage", (FreezerS3Storage,), {})
    monkeypatch.setitem(sys.modules, freezer_compat.FREEZER_S3_MODULE, module)
    return module.S3Storage


@pytest.fixture
def src(tmp_path: Path) -> str:
    (tmp_path / "src" / "d").mkdir(parents=True)
    (tmp_path / "src" / "a.txt").write_bytes(b"alpha\n" * 100)
    (tmp_path / "src" / "d" / "b.bin").write_bytes(os.urandom(200_000))
    return str(tmp_path / "src")


def backup(engine: Any, src: str) -> int:
    return engine.backup(src, NAME, incremental=False, max_level=None,
                         always_level=None, restart_always_level=None)


def test_freezers_put_file_is_replaced_on_the_engines_storage_only(freezer_s3, tmp_path):
    client = FakeS3Client()
    storage, other = freezer_s3("bucket/pre", client), freezer_s3("bucket/pre", client)
    original = freezer_s3.put_file
    engine = Rsyncv2Engine(storage=storage)
    assert engine.storage.inner is storage      # wrapped once (storage.foreign)
    assert "put_file" in vars(storage) and "stored_size" in vars(storage)
    assert freezer_s3.put_file is original and not hasattr(freezer_s3, "stored_size")
    assert "put_file" not in vars(other)
    meta = tmp_path / "meta"
    meta.write_bytes(b"x" * 12345)
    with pytest.raises(TypeError, match="has no len"):     # the fault, still there
        other.put_file(str(meta), "bucket/pre/k")
    storage.put_file(str(meta), "bucket/pre/some/key")
    put = client.puts[-1]
    assert (put["Bucket"], put["Key"], put["ContentLength"]) == ("bucket", "pre/some/key", 12345)
    assert not isinstance(put["Body"], bytes)       # streamed from the file, not read first
    assert client.objects[("bucket", "pre/some/key")] == b"x" * 12345
    # Adapting twice changes nothing.
    fixed = vars(storage)["put_file"]
    freezer_compat.adapt_storage(storage)
    assert vars(storage)["put_file"] is fixed


def test_backup_to_freezers_s3_is_published(freezer_s3, src):
    client = FakeS3Client()
    engine = Rsyncv2Engine(storage=freezer_s3("bucket/pre", client))
    assert backup(engine, src) == 0
    data = [k for k in client.keys() if k.endswith("/data")]
    assert len(data) == 1 and data[0].startswith("pre/data/rsyncv2/%s/" % NAME)
    assert len(client.objects[("bucket", data[0])]) == engine.handed_bytes
    assert engine.handed_bytes == engine.last_summary.stored_bytes
    metadata = [k for k in client.keys() if k.endswith("/metadata")]
    assert len(metadata) == 1 and metadata[0].startswith("pre/metadata/rsyncv2/")
    assert json.loads(client.objects[("bucket", metadata[0])])["engine_name"] == "rsyncv2"
    assert any(k.endswith("/engine_metadata") for k in client.keys())


@pytest.mark.parametrize("lose, cut", [(True, 0), (False, 7)])
def test_failed_upload_raises_and_publishes_nothing(freezer_s3, src, lose, cut):
    client = FakeS3Client()
    storage = freezer_s3("bucket", client)
    storage.lose_upload, storage.cut_upload = lose, cut
    engine = Rsyncv2Engine(storage=storage)
    with pytest.raises(errors.StorageError) as info:
        backup(engine, src)
    wrote = engine.handed_bytes
    message = str(info.value)
    assert message.startswith("backup %s level 0: bucket/data/rsyncv2/%s/" % (NAME, NAME))
    found = "is missing" if lose else "holds %d bytes" % (wrote - cut)
    assert "/data %s after %d bytes were written to it" % (found, wrote) in message
    assert message.endswith("the level is not recorded")
    assert client.puts == []        # neither engine metadata nor metadata


def test_stored_size_errors(freezer_s3):
    client = FakeS3Client()
    storage = freezer_compat.adapt_storage(freezer_s3("bucket/pre", client))
    assert storage.stored_size("bucket/pre/none") is None
    client.objects[("bucket", "pre/there")] = b"abc"
    assert storage.stored_size("bucket/pre/there") == 3
    client.head_error = client_error(403, "AccessDenied", "HeadObject")
    with pytest.raises(errors.StorageAccessError, match="bucket/pre/there.*http://s3.example"):
        storage.stored_size("bucket/pre/there")
    client.head_error = client_error(400, "InvalidRequest", "HeadObject")
    with pytest.raises(errors.StorageError, match="HeadObject bucket/pre/there failed"):
        storage.stored_size("bucket/pre/there")
    with pytest.raises(errors.StorageError, match="not BUCKET/KEY"):
        storage.stored_size("bucket")


def test_put_file_errors(freezer_s3, tmp_path):
    client = FakeS3Client()
    storage = freezer_compat.adapt_storage(freezer_s3("bucket", client))
    with pytest.raises(errors.StorageError, match="cannot read local file .*missing"):
        storage.put_file(str(tmp_path / "missing"), "bucket/k")

    def refuse(**_kwargs: Any) -> None:
        raise client_error(403, "AccessDenied", "PutObject")
    client.put_object = refuse
    (tmp_path / "f").write_bytes(b"f")
    with pytest.raises(errors.StorageAccessError, match="PutObject bucket/k refused"):
        storage.put_file(str(tmp_path / "f"), "bucket/k")


def test_other_storages_are_untouched(freezer_s3, tmp_path):
    local = LocalStorage(str(tmp_path / "c"))
    before = dict(vars(local))
    assert freezer_compat.adapt_storage(local) is local
    assert vars(local) == before

    class FreezerLocal:             # another Freezer storage: not ours to fix
        storage_path = str(tmp_path / "c")

        def put_file(self, from_path: str, to_path: str) -> None:
            raise AssertionError("not called")
    other = freezer_compat.adapt_storage(FreezerLocal())
    assert vars(other) == {}

    class OwnPutFile(freezer_s3):   # overrides put_file: left as it is
        def put_file(self, from_path: str, to_path: str) -> None:
            pass
    assert "put_file" not in vars(freezer_compat.adapt_storage(OwnPutFile("b", FakeS3Client())))
    inherits = type("Inherits", (freezer_s3,), {})("b", FakeS3Client())
    assert "put_file" in vars(freezer_compat.adapt_storage(inherits))


def test_each_s3_storage_of_a_multiple_storage(freezer_s3, tmp_path):
    s3 = freezer_s3("bucket", FakeS3Client())
    local = LocalStorage(str(tmp_path / "c"))
    multiple = types.SimpleNamespace(storages=[s3, local])
    freezer_compat.adapt_storage(multiple)
    assert "put_file" in vars(s3) and "put_file" not in vars(local)


def test_nothing_without_freezer(monkeypatch):
    monkeypatch.delitem(sys.modules, freezer_compat.FREEZER_S3_MODULE, raising=False)
    storage = FreezerS3Storage("bucket", FakeS3Client())
    assert freezer_compat.freezer_s3_class() is None
    freezer_compat.adapt_storage(storage)
    assert "put_file" not in vars(storage)


@pytest.mark.parametrize("segment, warned", [(1 << 20, True), (5 << 20, False), (32 << 20, False)])
def test_segments_below_s3s_part_minimum_are_warned_of(freezer_s3, caplog, segment, warned):
    storage = freezer_s3("bucket", FakeS3Client())
    storage.max_segment_size = segment
    with caplog.at_level(logging.WARNING):
        freezer_compat.adapt_storage(storage)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(said) is warned
    if warned:
        assert "--max-segment-size %d is below 5 MiB" % segment in said[0]


@pytest.fixture
def s3_module(monkeypatch) -> types.ModuleType:
    """Freezer's S3 module as imported, its S3Storage making a new client for every request (``made``)."""
    made: list[Any] = []

    class S3Storage(FreezerS3Storage):
        def get_s3_connection(self) -> FakeS3Client:
            made.append(self)
            return FakeS3Client()
    module = types.ModuleType(freezer_compat.FREEZER_S3_MODULE)
    module.S3Storage = S3Storage
    module.made = made
    monkeypatch.setitem(sys.modules, freezer_compat.FREEZER_S3_MODULE, module)
    return module


def test_adapted_s3_module_keeps_one_client_per_storage_object(s3_module):
    freezer_compat.adapt_s3_module(s3_module)
    one, two = s3_module.S3Storage("bucket", None), s3_module.S3Storage("bucket", None)
    assert s3_module.made == []                     # made at first use
    client = one.get_s3_connection()
    assert one.get_s3_connection() is client and one.get_s3_connection() is client
    assert two.get_s3_connection() is not client
    # Without Freezer's settings (access_key, secret_key, endpoint) each
    # client is made by Freezer's own method, once per object.
    assert s3_module.made == [one, two]


def test_adapted_s3_module_makes_lean_clients_from_the_settings(s3_module, monkeypatch):
    made: list[tuple[Any, ...]] = []

    def lean_client(*settings: Any) -> FakeS3Client:
        made.append(settings)
        return FakeS3Client()
    monkeypatch.setattr(s3_fixes, "lean_client", lean_client)
    freezer_compat.adapt_s3_module(s3_module)
    storage = s3_module.S3Storage("bucket", None)
    storage.access_key, storage.secret_key = "ak", "sk"
    assert storage.get_s3_connection() is storage.get_s3_connection()
    assert made == [("ak", "sk", "http://s3.example")]
    assert s3_module.made == []                     # Freezer's never called


def test_adapt_s3_module_is_idempotent(s3_module):
    original = vars(s3_module.S3Storage)["get_s3_connection"]
    freezer_compat.adapt_s3_module(s3_module)
    adapted = vars(s3_module.S3Storage)["get_s3_connection"]
    assert adapted is not original and adapted.__wrapped__ is original
    freezer_compat.adapt_s3_module(s3_module)
    assert vars(s3_module.S3Storage)["get_s3_connection"] is adapted
    storage = s3_module.S3Storage("bucket", None)
    assert storage.get_s3_connection() is storage.get_s3_connection()
    assert s3_module.made == [storage]


def test_adapt_s3_module_leaves_other_modules_alone():
    empty = types.ModuleType(freezer_compat.FREEZER_S3_MODULE)
    freezer_compat.adapt_s3_module(empty)
    assert not hasattr(empty, freezer_compat.FREEZER_S3_CLASS)
    not_a_class = types.ModuleType("elsewhere")
    not_a_class.S3Storage = lambda: None
    freezer_compat.adapt_s3_module(not_a_class)
    inherits = types.ModuleType("elsewhere")        # the method is not the class's own
    inherits.S3Storage = type("S3Storage", (FreezerS3Storage,), {})
    freezer_compat.adapt_s3_module(inherits)
    assert "get_s3_connection" not in vars(inherits.S3Storage)
    assert not hasattr(FreezerS3Storage.get_s3_connection, "__wrapped__")


def test_engine_keeps_the_client_made_before_it_was_loaded(s3_module):
    freezer_compat.adapt_s3_module(s3_module)
    early = s3_module.S3Storage("bucket", None)
    client = early.get_s3_connection()              # Freezer's prepare()
    late = s3_module.S3Storage("bucket", None)
    freezer_compat.adapt_storage(early)
    freezer_compat.adapt_storage(late)
    assert "put_file" in vars(early) and "put_file" in vars(late)
    assert early.get_s3_connection() is client
    assert late.get_s3_connection() is late.get_s3_connection()
    assert s3_module.made == [early, late]          # one client each, never more
