"""SwiftStorage.read_data on a 64 MiB level (an SLO of 16 segments): one ranged GET of the range."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from freezer_rsyncv2.errors import StorageError
from freezer_rsyncv2.storage.layout import Backup
from freezer_rsyncv2.storage.swift import SwiftStorage
from freezer_rsyncv2.storage.swift_upload import segment_prefix
from tests.swiftserver import SwiftServer, unique_container
from tests.unit.storage.test_contract import ENGINE, NAME, write_level

MIB = 1 << 20
CHUNK = 4 * MIB                 # max_segment_size: read_data's chunk and the SLO's segment size
SIZE = 64 * MIB
DATA = random.Random(64).randbytes(SIZE)


class CountingBody:
    """A response body that counts the bytes read from it; ``break_after`` bytes, it breaks once."""

    def __init__(self, body: Any, tally: list[int], break_after: int | None = None) -> None:
        self.body = body
        self.tally = tally
        self.break_after = break_after
        self.delivered = 0

    def read(self, size: int | None = None) -> bytes:
        if self.break_after is not None and size is not None:
            size = min(size, self.break_after - self.delivered)
            if size == 0:
                raise ConnectionError("connection reset by the test")
        data: bytes = self.body.read(size)
        self.delivered += len(data)
        self.tally[0] += len(data)
        return data

    def close(self) -> None:
        self.body.close()


class GetSpy:
    """Records every object GET of this thread's connection: Range, answered length, bytes read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, storage: SwiftStorage,
                 break_first_after: int | None = None) -> None:
        self.ranges: list[str | None] = []
        self.lengths: list[int] = []
        self.read = [0]
        conn = storage.conn()
        real = conn.get_object

        def get_object(container: str, obj: str, *args: Any, **kwargs: Any) -> Any:
            self.ranges.append((kwargs.get("headers") or {}).get("Range"))
            head, body = real(container, obj, *args, **kwargs)
            self.lengths.append(int(head["content-length"]))
            cut = break_first_after if len(self.ranges) == 1 else None
            return head, CountingBody(body, self.read, cut)

        monkeypatch.setattr(conn, "get_object", get_object)


def segmented_level(swift_server: SwiftServer, work: Path) -> tuple[SwiftStorage, Backup, str]:
    container = unique_container("rr")
    storage = swift_server.storage(f"{container}/site", max_segment_size=CHUNK)
    backup = write_level(storage, work, 100, 100, 0, segments=[DATA[i:i + CHUNK] for i in range(0, SIZE, CHUNK)])
    head = swift_server.client().head_object(container, storage.name(backup.data_path))
    assert head["x-static-large-object"] == "True" and int(head["content-length"]) == SIZE
    return storage, backup, container


@pytest.fixture(scope="module")
def big_level(swift_server: SwiftServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[SwiftStorage, Backup]:
    storage, backup, _container = segmented_level(swift_server, tmp_path_factory.mktemp("rr-swift"))
    return storage, backup


@pytest.mark.parametrize("offset, length", [
    (0, 3 * MIB), (20 * MIB + 12345, 9 * MIB), (4 * MIB - 1, 2), (SIZE - MIB, MIB), (SIZE - 100, 5 * MIB),
])
def test_range_of_a_64_mib_slo_transfers_the_range_only(big_level: tuple[SwiftStorage, Backup],
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        offset: int, length: int) -> None:
    storage, backup = big_level
    spy = GetSpy(monkeypatch, storage)
    chunks = list(storage.read_data(backup, offset, length))
    expected = DATA[offset:offset + length]
    assert b"".join(chunks) == expected
    assert all(0 < len(chunk) <= CHUNK for chunk in chunks)
    assert spy.ranges == [f"bytes={offset}-{offset + length - 1}"]
    assert sum(spy.lengths) <= length + CHUNK
    assert spy.read[0] == len(expected)


def test_range_past_the_end_yields_nothing(big_level: tuple[SwiftStorage, Backup],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    storage, backup = big_level
    spy = GetSpy(monkeypatch, storage)
    assert list(storage.read_data(backup, SIZE, 10)) == []
    assert list(storage.read_data(backup, SIZE + 10 * MIB, MIB)) == []
    assert spy.ranges == [f"bytes={SIZE}-{SIZE + 9}", f"bytes={SIZE + 10 * MIB}-{SIZE + 11 * MIB - 1}"]
    assert spy.read[0] == 0


def test_broken_body_resumes_from_the_last_chunk(big_level: tuple[SwiftStorage, Backup],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    storage, backup = big_level
    offset, length = 10 * MIB + 7, 11 * MIB
    spy = GetSpy(monkeypatch, storage, break_first_after=CHUNK + CHUNK // 2)
    assert b"".join(storage.read_data(backup, offset, length)) == DATA[offset:offset + length]
    # One whole chunk came before the break: the second GET asks for the rest from there.
    assert spy.ranges == [f"bytes={offset}-{offset + length - 1}", f"bytes={offset + CHUNK}-{offset + length - 1}"]
    assert spy.read[0] <= length + CHUNK


def test_swift_reads_only_the_segments_of_the_range(swift_server: SwiftServer, tmp_path: Path) -> None:
    """With the SLO's first and last segments gone, the whole level is unreadable, yet a range of
    the middle segments still reads: Swift fetched none of the segments outside the range."""
    storage, backup, container = segmented_level(swift_server, tmp_path)
    client = swift_server.client()
    segments = segment_prefix(storage.name(backup.data_path))
    names = [name for name in swift_server.object_names(container, f"{segments}/")]
    assert len(names) == SIZE // CHUNK
    client.delete_object(container, names[0])
    client.delete_object(container, names[-1])
    offset, length = 20 * MIB + 12345, 9 * MIB          # segments 5 to 7
    assert b"".join(storage.read_data(backup, offset, length)) == DATA[offset:offset + length]
    with pytest.raises(StorageError):
        b"".join(storage.backup_blocks(backup))
    with pytest.raises(StorageError):
        b"".join(storage.read_data(backup, 0, 10))


def test_range_of_a_freezer_dlo_level(swift_server: SwiftServer, tmp_path: Path) -> None:
    """Freezer's own levels are Dynamic Large Objects: Swift honours the range on those too."""
    container = unique_container("rr")
    storage = swift_server.storage(f"{container}/site", max_segment_size=CHUNK)
    backup = Backup(ENGINE, NAME, 100, 100, 0, storage=storage)
    client = swift_server.client()
    client.put_container(container)
    data_name = storage.name(backup.data_path)
    segments = segment_prefix(data_name)
    size = 3 * MIB + 5
    for number, pos in enumerate(range(0, size, MIB)):
        client.put_object(container, f"{segments}/{number:08d}", DATA[pos:min(pos + MIB, size)])
    client.put_object(container, data_name, b"", headers={"X-Object-Manifest": f"{container}/{segments}/"})
    stored = DATA[:size]
    for offset, length in [(MIB - 3, MIB + 100), (MIB - 3, 2 * MIB + 100), (size - 4, MIB), (0, size)]:
        assert b"".join(storage.read_data(backup, offset, length)) == stored[offset:offset + length]
    assert list(storage.read_data(backup, size, 1)) == []
