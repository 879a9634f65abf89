"""S3Storage.read_data on a 64 MiB multipart level: one ranged GET of the range, resumed where it broke."""

from __future__ import annotations

import random
from typing import Any

import pytest

from freezer_rsyncv2.errors import StorageError
from freezer_rsyncv2.storage.base import StorageFileNotFoundError
from freezer_rsyncv2.storage.layout import Backup
from freezer_rsyncv2.storage.s3 import S3Storage
from freezer_rsyncv2.storage.s3_upload import MIN_PART_SIZE
from tests.s3server import Fault, FaultProxy, S3Server, unique_bucket
from tests.unit.storage.test_contract import ENGINE, NAME, write_level

MIB = 1 << 20
CHUNK = 4 * MIB                 # max_segment_size, so read_data's chunk
SIZE = 64 * MIB
DATA = random.Random(64).randbytes(SIZE)


class CountingBody:
    """A response body that counts the bytes read from it."""

    def __init__(self, body: Any, tally: list[int]) -> None:
        self.body = body
        self.tally = tally

    def read(self, size: int | None = None) -> bytes:
        data: bytes = self.body.read(size)
        self.tally[0] += len(data)
        return data

    def close(self) -> None:
        self.body.close()


class GetSpy:
    """Records every GetObject of a client: its arguments, the answer's length and the bytes read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, client: Any, drop_range: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.lengths: list[int] = []
        self.read = [0]
        real = client.get_object

        def get_object(**kwargs: Any) -> Any:
            self.calls.append(dict(kwargs))
            if drop_range:
                kwargs.pop("Range", None)       # a server that ignores Range
            response = real(**kwargs)
            self.lengths.append(int(response["ContentLength"]))
            response["Body"] = CountingBody(response["Body"], self.read)
            return response

        monkeypatch.setattr(client, "get_object", get_object)

    @property
    def ranges(self) -> list[str | None]:
        return [call.get("Range") for call in self.calls]


@pytest.fixture(scope="module")
def big_level(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Backup]:
    """A 64 MiB level uploaded in 5 MiB parts (one multipart object), once for the module."""
    bucket = unique_bucket("rr")
    storage = s3_server.storage(f"{bucket}/site", max_segment_size=CHUNK, part_size=MIN_PART_SIZE)
    work = tmp_path_factory.mktemp("rr-s3")
    backup = write_level(storage, work, 100, 100, 0, segments=[DATA[i:i + CHUNK] for i in range(0, SIZE, CHUNK)])
    head = storage.client.head_object(Bucket=bucket, Key=storage.key(backup.data_path))
    assert int(head["ContentLength"]) == SIZE and "-" in head["ETag"]       # a multipart object
    return bucket, backup


def storage_on(s3_server: S3Server, bucket: str, endpoint: str | None = None) -> S3Storage:
    return s3_server.storage(f"{bucket}/site", endpoint=endpoint, max_segment_size=CHUNK, part_size=MIN_PART_SIZE)


@pytest.mark.parametrize("offset, length", [
    (0, 3 * MIB), (20 * MIB + 12345, 9 * MIB), (5 * MIB - 1, 2), (SIZE - MIB, MIB), (SIZE - 100, 5 * MIB),
])
def test_range_of_a_64_mib_object_transfers_the_range_only(s3_server: S3Server, big_level: tuple[str, Backup],
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           offset: int, length: int) -> None:
    bucket, backup = big_level
    storage = storage_on(s3_server, bucket)
    spy = GetSpy(monkeypatch, storage.client)
    chunks = list(storage.read_data(backup, offset, length))
    expected = DATA[offset:offset + length]
    assert b"".join(chunks) == expected
    assert all(0 < len(chunk) <= CHUNK for chunk in chunks)
    assert spy.ranges == [f"bytes={offset}-{offset + length - 1}"]
    assert sum(spy.lengths) <= length + CHUNK
    assert spy.read[0] == len(expected)


def test_range_past_the_end_asks_once_and_yields_nothing(s3_server: S3Server, big_level: tuple[str, Backup],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    bucket, backup = big_level
    storage = storage_on(s3_server, bucket)
    calls: list[dict[str, Any]] = []
    real = storage.client.get_object

    def get_object(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(storage.client, "get_object", get_object)
    assert list(storage.read_data(backup, SIZE, 10)) == []
    assert list(storage.read_data(backup, SIZE + 10 * MIB, MIB)) == []
    assert [c["Range"] for c in calls] == [f"bytes={SIZE}-{SIZE + 9}", f"bytes={SIZE + 10 * MIB}-{SIZE + 11 * MIB - 1}"]


def test_broken_body_resumes_from_the_last_chunk(s3_server: S3Server, big_level: tuple[str, Backup],
                                                 fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body cut halfway is asked for again from the last whole chunk, not from the range's start."""
    bucket, backup = big_level
    storage = storage_on(s3_server, bucket, endpoint=fault_proxy.endpoint)
    spy = GetSpy(monkeypatch, storage.client)
    fault_proxy.add(Fault("GetObject", "cut", path="/data"))
    offset, length = 10 * MIB + 7, 11 * MIB
    assert b"".join(storage.read_data(backup, offset, length)) == DATA[offset:offset + length]
    assert fault_proxy.outcomes("GetObject") == ["cut", "206"]
    # The cut came after one whole chunk and a half (5.5 of 11 MiB): the retry starts at the second.
    resumed = offset + CHUNK
    assert spy.ranges == [f"bytes={offset}-{offset + length - 1}", f"bytes={resumed}-{offset + length - 1}"]
    assert spy.calls[1]["IfMatch"]
    assert spy.read[0] <= length + CHUNK


def test_transient_error_is_retried(s3_server: S3Server, big_level: tuple[str, Backup],
                                    fault_proxy: FaultProxy) -> None:
    bucket, backup = big_level
    storage = storage_on(s3_server, bucket, endpoint=fault_proxy.endpoint)
    fault_proxy.add(Fault("GetObject", 503, times=2, path="/data"))
    assert b"".join(storage.read_data(backup, 100, MIB)) == DATA[100:100 + MIB]
    assert fault_proxy.outcomes("GetObject") == ["503", "503", "206"]


def test_server_ignoring_range_is_an_error_not_a_whole_read(s3_server: S3Server, big_level: tuple[str, Backup],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer with the whole object would cost the whole object: refused past byte 0, cut short at 0."""
    bucket, backup = big_level
    storage = storage_on(s3_server, bucket)
    spy = GetSpy(monkeypatch, storage.client, drop_range=True)
    with pytest.raises(StorageError, match="whole object"):
        list(storage.read_data(backup, MIB, 10))
    assert spy.read[0] == 0
    assert b"".join(storage.read_data(backup, 0, MIB + 5)) == DATA[:MIB + 5]
    assert spy.read[0] == MIB + 5


def test_missing_level_is_not_found(s3_server: S3Server) -> None:
    storage = storage_on(s3_server, unique_bucket("rr"))
    with pytest.raises(StorageFileNotFoundError):
        list(storage.read_data(Backup(ENGINE, NAME, 1, 1, 0, storage=storage), 0, 1))
