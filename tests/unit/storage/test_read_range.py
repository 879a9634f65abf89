"""``read_data`` (a range of a level's data object) on every storage: exact bytes, bounds, errors.

The bytes asked for come back exactly, in chunks no larger than the
segment size, on local, S3 (moto) and Swift (a real cluster, on its own
API and on its S3 API); the backend is asked for the range only (the
64 MiB cases of S3 and Swift are in ``test_read_range_s3.py`` and
``test_read_range_swift.py``).  Freezer's storages, which have no ranged
read, are read from the start through ``ForeignStorage``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from freezer_rsyncv2.storage.base import Storage, StorageFileNotFoundError, check_range
from freezer_rsyncv2.storage.layout import Backup
from freezer_rsyncv2.storage.foreign import ForeignStorage, slice_blocks
from freezer_rsyncv2.storage.local import LocalStorage
from freezer_rsyncv2.storage.s3 import S3Storage
from freezer_rsyncv2.storage.s3_upload import MIN_PART_SIZE
from tests.s3server import FAST_RETRY as S3_FAST_RETRY
from tests.s3server import S3Server
from tests.swiftserver import SwiftServer
from tests.unit.storage.test_contract import ENGINE, NAME, write_level

SEGMENT = 64
#: A level's data: 2,564 bytes, no two 256-byte runs alike, stored in uneven segments.
DATA = random.Random(7).randbytes(2500) + b"the end of the level's data, 64 bytes long, no more, no less..."
SIZE = len(DATA)

#: (offset, length) of the ranges read: at the start, across segment
#: boundaries in the middle, at the end, past the end.
RANGES = [
    (0, 1), (0, 10), (0, SEGMENT), (0, SEGMENT + 1), (0, 3 * SEGMENT + 5),
    (SEGMENT - 3, 2 * SEGMENT + 7), (1000, 700), (1001, 1), (SEGMENT, SEGMENT),
    (SIZE - 10, 10), (SIZE - 1, 1), (SIZE - 10, 100), (0, SIZE), (0, SIZE + 1000),
    (SIZE, 5), (SIZE + 100, 5),
]


def segments_of(data: bytes) -> list[bytes]:
    """``data`` cut into uneven segments (0 to 97 bytes), as an engine might yield them."""
    cuts, pos, rng = [], 0, random.Random(3)
    while pos < len(data):
        step = rng.randrange(0, 98)
        cuts.append(data[pos:pos + step])
        pos += step
    return cuts


def read(storage: Any, backup: Any, offset: int, length: int) -> list[bytes]:
    return list(storage.read_data(backup, offset, length))


class ReadRangeContract:
    """Every test here must pass for every Storage; ``make_storage`` as in StorageContract."""

    def make_storage(self, root: Path, max_segment_size: int) -> Storage:
        raise NotImplementedError

    @pytest.fixture
    def storage(self, tmp_path: Path) -> Storage:
        return self.make_storage(tmp_path / "container", SEGMENT)

    @pytest.fixture
    def level(self, storage: Storage, tmp_path: Path) -> Backup:
        work = tmp_path / "work"
        work.mkdir()
        backup = write_level(storage, work, 100, 100, 0, segments=segments_of(DATA))
        assert b"".join(storage.backup_blocks(backup)) == DATA
        return backup

    @pytest.mark.parametrize("offset, length", RANGES)
    def test_range_gives_exact_bytes(self, storage: Storage, level: Backup, offset: int, length: int) -> None:
        chunks = read(storage, level, offset, length)
        assert b"".join(chunks) == DATA[offset:offset + length]
        assert all(0 < len(chunk) <= SEGMENT for chunk in chunks)

    def test_every_chunk_but_the_last_is_a_full_segment(self, storage: Storage, level: Backup) -> None:
        chunks = read(storage, level, 5, 10 * SEGMENT + 3)
        assert [len(chunk) for chunk in chunks] == [SEGMENT] * 10 + [3]

    def test_ranges_tile_the_data(self, storage: Storage, level: Backup) -> None:
        step = 3 * SEGMENT - 11
        assert b"".join(b"".join(read(storage, level, pos, step)) for pos in range(0, SIZE, step)) == DATA

    def test_length_zero_yields_nothing(self, storage: Storage, level: Backup) -> None:
        assert read(storage, level, 0, 0) == []
        assert read(storage, level, 100, 0) == []
        assert read(storage, level, SIZE + 5, 0) == []

    @pytest.mark.parametrize("offset, length", [(-1, 5), (0, -1), (-5, -5), (1.5, 5), (0, "5"), (True, 5)])
    def test_bad_range_is_a_value_error_raised_by_the_call(self, storage: Storage, level: Backup,
                                                           offset: Any, length: Any) -> None:
        with pytest.raises(ValueError, match="read_data"):
            storage.read_data(level, offset, length)

    def test_missing_level_raises_what_backup_blocks_raises(self, storage: Storage, level: Backup) -> None:
        missing = Backup(ENGINE, NAME, 100, 200, 1, storage=storage)
        with pytest.raises(StorageFileNotFoundError) as blocks_error:
            list(storage.backup_blocks(missing))
        with pytest.raises(StorageFileNotFoundError) as range_error:
            read(storage, missing, 0, 10)
        assert type(range_error.value) is type(blocks_error.value)
        assert range_error.value.path == blocks_error.value.path == missing.data_path
        assert read(storage, missing, 0, 0) == []

    def test_empty_data_object(self, storage: Storage, tmp_path: Path) -> None:
        work = tmp_path / "work-empty"
        work.mkdir()
        backup = write_level(storage, work, 300, 300, 0, segments=[b""])
        assert read(storage, backup, 0, 10) == []
        assert read(storage, backup, 5, 10) == []

    def test_handle_of_another_storage_reads_this_one(self, storage: Storage, level: Backup,
                                                      tmp_path: Path) -> None:
        """As ``backup_blocks``, the handle's paths are this storage's own."""
        other = self.make_storage(tmp_path / "container", SEGMENT)
        assert b"".join(read(other, level, 10, 500)) == DATA[10:510]

    def test_abandoned_read_can_be_closed(self, storage: Storage, level: Backup) -> None:
        chunks = storage.read_data(level, 0, SIZE)
        assert next(iter(chunks)) == DATA[:SEGMENT]
        getattr(chunks, "close")()
        assert b"".join(read(storage, level, 0, SIZE)) == DATA


class TestLocalReadRange(ReadRangeContract):

    def make_storage(self, root: Path, max_segment_size: int) -> Storage:
        return LocalStorage(str(root), max_segment_size=max_segment_size)


class TestS3ReadRange(ReadRangeContract):

    @pytest.fixture(autouse=True)
    def _server(self, s3_server: S3Server) -> None:
        self.server = s3_server

    def make_storage(self, root: Path, max_segment_size: int) -> Storage:
        digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
        return self.server.storage(f"read-range/{digest}/{root.name}", max_segment_size=max_segment_size,
                                   part_size=MIN_PART_SIZE)


class TestSwiftReadRange(ReadRangeContract):

    @pytest.fixture(autouse=True)
    def _server(self, swift_server: SwiftServer) -> None:
        self.server = swift_server

    def make_storage(self, root: Path, max_segment_size: int) -> Storage:
        digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
        return self.server.storage(f"rr-{digest}/{root.name}", max_segment_size=max_segment_size)


class TestS3OnSwiftReadRange(ReadRangeContract):
    """S3Storage on Swift's S3 API: Swift's own answers to ranged GETs (416 past the end...)."""

    @pytest.fixture(autouse=True)
    def _server(self, swift_server: SwiftServer) -> None:
        self.server = swift_server

    def make_storage(self, root: Path, max_segment_size: int) -> Storage:
        digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
        return S3Storage(f"s3api-read-range/{digest}/{root.name}", endpoint_url=self.server.endpoint,
                         access_key=self.server.access_key, secret_key=self.server.secret_key,
                         region=self.server.region, max_segment_size=max_segment_size,
                         part_size=MIN_PART_SIZE, retry=S3_FAST_RETRY)


# -- local: what is read from the file ---------------------------------------------------------

MIB = 1 << 20


def test_local_reads_only_the_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A range of an 8 MiB level costs preads of that range, chunk by chunk, and nothing else."""
    storage = LocalStorage(str(tmp_path / "container"), max_segment_size=MIB)
    data = random.Random(11).randbytes(8 * MIB)
    work = tmp_path / "work"
    work.mkdir()
    backup = write_level(storage, work, 100, 100, 0, segments=[data[i:i + MIB] for i in range(0, len(data), MIB)])
    preads: list[tuple[int, int, int]] = []     # (position, asked, got)
    reads: list[int] = []
    real_pread, real_read = os.pread, os.read

    def pread(fd: int, size: int, position: int) -> bytes:
        got = real_pread(fd, size, position)
        preads.append((position, size, len(got)))
        return got

    def read_(fd: int, size: int) -> bytes:
        got = real_read(fd, size)
        reads.append(len(got))
        return got

    monkeypatch.setattr(os, "pread", pread)
    monkeypatch.setattr(os, "read", read_)
    offset, length = 3 * MIB + 12345, MIB + MIB // 2
    assert b"".join(storage.read_data(backup, offset, length)) == data[offset:offset + length]
    assert reads == []
    assert [p[0] for p in preads] == [offset, offset + MIB]
    assert all(offset <= pos and pos + asked <= offset + length for pos, asked, _got in preads)
    assert sum(got for _pos, _asked, got in preads) == length
    preads.clear()
    assert b"".join(storage.read_data(backup, len(data) - 10, MIB)) == data[-10:]
    assert sum(got for _pos, _asked, got in preads) == 10


def test_local_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    """A FIFO under the data name is never opened for long: the error of ``backup_blocks``."""
    storage = LocalStorage(str(tmp_path / "container"), max_segment_size=SEGMENT)
    backup = Backup(ENGINE, NAME, 100, 100, 0, storage=storage)
    storage.create_dirs(backup.data_prefix_path)
    os.mkfifo(backup.data_path)
    with pytest.raises(Exception) as blocks_error:
        list(storage.backup_blocks(backup))
    with pytest.raises(Exception) as range_error:
        read(storage, backup, 0, 10)
    assert type(range_error.value) is type(blocks_error.value)
    assert "not a regular file" in str(range_error.value)


# -- Freezer's storages (ForeignStorage) --------------------------------------------------------

class FreezerLikeStorage:
    """The part of Freezer's storage interface a ranged read can use: ``backup_blocks``."""

    def __init__(self, data: bytes, block: int) -> None:
        self.data = data
        self.block = block
        self.max_segment_size = block
        self.blocks_read = 0
        self.closed = False

    def backup_blocks(self, backup: Any) -> Iterator[bytes]:
        try:
            for pos in range(0, len(self.data), self.block):
                self.blocks_read += 1
                yield self.data[pos:pos + self.block]
        finally:
            self.closed = True


def test_foreign_storage_reads_from_the_start_and_stops_after_the_range(
        caplog: pytest.LogCaptureFixture) -> None:
    inner = FreezerLikeStorage(DATA, SEGMENT)
    storage = ForeignStorage(inner)
    backup = types.SimpleNamespace(storage=inner)
    caplog.set_level(logging.DEBUG, logger="freezer_rsyncv2.storage.foreign")
    for offset, length in RANGES:
        inner.blocks_read, inner.closed = 0, False
        chunks = read(storage, backup, offset, length)
        assert b"".join(chunks) == DATA[offset:offset + length], (offset, length)
        assert all(0 < len(chunk) <= SEGMENT for chunk in chunks)
        last_block = min(offset + length, SIZE) - 1
        expected = -(-SIZE // SEGMENT) if offset >= SIZE else last_block // SEGMENT + 1
        assert inner.blocks_read == expected, (offset, length)
        assert inner.closed
    told = [r for r in caplog.records if "from the level's start" in r.getMessage()]
    assert len(told) == 1 and told[0].levelno == logging.DEBUG


def test_foreign_storage_checks_the_range_and_reads_nothing_for_length_zero() -> None:
    inner = FreezerLikeStorage(DATA, SEGMENT)
    storage = ForeignStorage(inner)
    backup = types.SimpleNamespace(storage=inner)
    with pytest.raises(ValueError):
        storage.read_data(backup, -1, 5)   # type: ignore[arg-type]
    with pytest.raises(ValueError):
        storage.read_data(backup, 0, -1)   # type: ignore[arg-type]
    assert read(storage, backup, 10, 0) == [] and inner.blocks_read == 0


def test_foreign_storage_missing_level_raises_what_backup_blocks_raises() -> None:
    class Missing(FreezerLikeStorage):
        def backup_blocks(self, backup: Any) -> Iterator[bytes]:
            raise FileNotFoundError("no such data")

    inner = Missing(b"", SEGMENT)
    with pytest.raises(FileNotFoundError):
        read(ForeignStorage(inner), types.SimpleNamespace(storage=inner), 0, 10)


def test_foreign_storage_without_storage_on_the_handle_reads_the_wrapped_one() -> None:
    inner = FreezerLikeStorage(DATA, SEGMENT)
    assert b"".join(read(ForeignStorage(inner), types.SimpleNamespace(), 70, 100)) == DATA[70:170]


def test_foreign_storage_hands_our_storage_the_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A handle naming one of our storages gets its ranged read, not a read from the start."""
    ours = LocalStorage(str(tmp_path / "container"), max_segment_size=SEGMENT)
    work = tmp_path / "work"
    work.mkdir()
    backup = write_level(ours, work, 100, 100, 0, segments=segments_of(DATA))
    monkeypatch.setattr(ours, "backup_blocks", lambda _b: pytest.fail("read from the start"))
    storage = ForeignStorage(FreezerLikeStorage(b"", SEGMENT))
    assert b"".join(read(storage, backup, 700, 300)) == DATA[700:1000]


@pytest.mark.parametrize("blocks", [[], [b""], [b"abc"], [b"ab", b"", b"cdef", b"g"], [bytes(range(10))] * 3])
def test_slice_blocks_matches_slicing_the_joined_stream(blocks: list[bytes]) -> None:
    whole = b"".join(blocks)
    for offset in range(len(whole) + 2):
        for length in range(len(whole) + 2 - offset):
            assert b"".join(slice_blocks(blocks, offset, length)) == whole[offset:offset + length]


def test_check_range() -> None:
    check_range(0, 0)
    check_range(10**15, 1)
    for offset, length in [(-1, 0), (0, -1), (None, 1), (1, 2.0)]:
        with pytest.raises(ValueError):
            check_range(offset, length)  # type: ignore[arg-type]
