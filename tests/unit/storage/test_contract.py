"""Storage contract tests for every Storage: subclass StorageContract, define make_storage."""

from __future__ import annotations

import json
import logging
import queue
import threading
from pathlib import Path
from typing import Any

import pytest

from freezer_rsyncv2.handoff import QueueStopped, RichQueue
from freezer_rsyncv2.errors import BackupNotFoundError, FormatError, StorageError
from freezer_rsyncv2.storage import base, layout
from freezer_rsyncv2.storage.base import Backup, Storage
from freezer_rsyncv2.storage.local import LocalStorage

SEGMENT = 64
NAME = "host_docs"


class FakeEngine:
    """The storage only ever reads ``engine.name``."""

    def __init__(self, name: str = "rsyncv2") -> None:
        self.name = name


ENGINE = FakeEngine()


def queue_of(segments: list[bytes]) -> RichQueue:
    """A finished queue already holding ``segments`` (no producer thread needed)."""
    rich = RichQueue(size=len(segments) + 1)
    rich.put_messages(segments)
    return rich


def write_level(storage: Storage, tmp: Path, l0: int, ts: int, level: int,
                segments: list[bytes] | None = None, name: str = NAME,
                complete: bool = True, meta: dict[str, Any] | None = None) -> Backup:
    """Store one level the way the engine does: data, then (if complete) metadata."""
    backup = Backup(ENGINE, name, l0, ts, level, storage=storage)
    storage.write_backup(queue_of(segments or [f"{name}-{level}-{ts}".encode()]), backup)
    if complete:
        engine_meta = tmp / f"em-{name}-{l0}-{level}-{ts}"
        engine_meta.write_bytes(b"engine-meta")
        freezer_meta = tmp / f"fm-{name}-{l0}-{level}-{ts}"
        freezer_meta.write_text(json.dumps(meta or {"level": level, "ts": ts}))
        storage.put_metadata(str(engine_meta), str(freezer_meta), backup)
    return backup


def levels(increments: dict[int, Backup]) -> dict[int, int]:
    return {level: b.timestamp for level, b in increments.items()}


def read_all(storage: Storage, backup: Backup) -> bytes:
    return b"".join(storage.backup_blocks(backup))


class StorageContract:
    """Every test here must pass for every Storage implementation.

    ``make_storage(root, max_segment_size)`` must return a storage on a
    fresh, empty container derived from ``root``; calling it twice with the
    same root must give two handles on the same container.
    """

    #: Whether the container can hold names with a newline (moto's S3 cannot).
    newline_in_names = True

    def make_storage(self, root: Path, max_segment_size: int) -> Storage:
        raise NotImplementedError

    def odd_name(self, name: str) -> str:
        """``name``, or, where the container cannot hold a newline, the
        same name with a carriage return: still a control character."""
        return name if self.newline_in_names else name.replace("\n", "\r")

    @pytest.fixture
    def storage(self, tmp_path: Path) -> Storage:
        return self.make_storage(tmp_path / "container", SEGMENT)

    @pytest.fixture
    def tmp(self, tmp_path: Path) -> Path:
        work = tmp_path / "work"
        work.mkdir()
        return work

    # -- files -------------------------------------------------------------------

    def test_put_get_file_round_trip(self, storage: Storage, tmp: Path) -> None:
        src, dst = tmp / "src", tmp / "dst"
        src.write_bytes(b"\x00payload\xff" * 1000)
        target = base.path_join(storage.storage_path, "misc", "f")
        storage.put_file(str(src), target)
        storage.get_file(target, str(dst))
        assert dst.read_bytes() == src.read_bytes()
        src.write_bytes(b"replaced")
        storage.put_file(str(src), target)
        storage.get_file(target, str(dst))
        assert dst.read_bytes() == b"replaced"

    def test_get_file_missing_raises_storage_error_naming_path(self, storage: Storage,
                                                               tmp: Path) -> None:
        missing = base.path_join(storage.storage_path, "nope", "metadata")
        with pytest.raises(StorageError, match="nope"):
            storage.get_file(missing, str(tmp / "out"))

    def test_listdir_missing_is_empty(self, storage: Storage) -> None:
        assert storage.listdir(base.path_join(storage.storage_path, "no", "such")) == []

    def test_rmtree_missing_is_noop(self, storage: Storage) -> None:
        storage.rmtree(base.path_join(storage.storage_path, "no", "such"))

    # -- data ----------------------------------------------------------------------

    @pytest.mark.parametrize("sizes", [
        [], [0], [1], [SEGMENT - 1], [SEGMENT], [SEGMENT + 1],
        [3 * SEGMENT + 7, 1, 0, SEGMENT, 2 * SEGMENT], [5] * 40,
    ])
    def test_write_backup_backup_blocks_round_trip(self, storage: Storage,
                                                   sizes: list[int]) -> None:
        segments = [bytes((i * 7 + j) % 256 for j in range(size)) for i, size in enumerate(sizes)]
        backup = Backup(ENGINE, NAME, 10, 10, 0, storage=storage)
        storage.write_backup(queue_of(segments), backup)
        chunks = list(storage.backup_blocks(backup))
        assert all(0 < len(chunk) <= SEGMENT for chunk in chunks)
        assert b"".join(chunks) == b"".join(segments)

    def test_write_backup_with_threaded_producer(self, storage: Storage) -> None:
        segments = [bytes([i % 256]) * (i % 97) for i in range(300)]
        rich = RichQueue(size=2)
        producer = threading.Thread(target=rich.put_messages, args=(segments,), daemon=True)
        producer.start()
        backup = Backup(ENGINE, NAME, 10, 10, 0, storage=storage)
        storage.write_backup(rich, backup)
        producer.join(5)
        assert not producer.is_alive()
        assert read_all(storage, backup) == b"".join(segments)

    def test_backup_blocks_missing_data_raises(self, storage: Storage) -> None:
        backup = Backup(ENGINE, NAME, 10, 10, 0, storage=storage)
        with pytest.raises(StorageError):
            list(storage.backup_blocks(backup))

    def test_failed_queue_leaves_no_data_under_final_name(self, storage: Storage) -> None:
        rich = RichQueue(size=2)
        backup = Backup(ENGINE, NAME, 10, 10, 0, storage=storage)

        def produce() -> None:
            rich.put(b"a" * 100)
            rich.put(b"b" * 100)
            rich.force_stop()

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        with pytest.raises(QueueStopped):
            storage.write_backup(rich, backup)
        producer.join(5)
        assert "data" not in storage.listdir(backup.data_prefix_path)
        with pytest.raises(StorageError):
            list(storage.backup_blocks(backup))

    def test_failed_producer_leaves_no_data(self, storage: Storage) -> None:
        def messages():
            yield b"x" * 10
            raise RuntimeError("source vanished")

        rich = RichQueue(size=1)
        errors: list[BaseException] = []

        def produce() -> None:
            try:
                rich.put_messages(messages())
            except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
                errors.append(exc)

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        backup = Backup(ENGINE, NAME, 10, 10, 0, storage=storage)
        with pytest.raises(QueueStopped):
            storage.write_backup(rich, backup)
        producer.join(5)
        assert isinstance(errors[0], RuntimeError)
        assert "data" not in storage.listdir(backup.data_prefix_path)

    def test_failing_consumer_stops_queue_and_leaves_no_data(self, storage: Storage) -> None:
        class Exploding:
            stopped = False

            def get_messages(self):
                yield b"partial"
                raise RuntimeError("boom")

            def force_stop(self) -> None:
                self.stopped = True

        rich = Exploding()
        backup = Backup(ENGINE, NAME, 10, 10, 0, storage=storage)
        with pytest.raises(RuntimeError, match="boom"):
            storage.write_backup(rich, backup)
        assert rich.stopped
        assert "data" not in storage.listdir(backup.data_prefix_path)

    # -- metadata and visibility -----------------------------------------------------

    def test_put_metadata_publishes_level_and_metadata_reads_back(self, storage: Storage,
                                                                  tmp: Path) -> None:
        backup = write_level(storage, tmp, 100, 100, 0, meta={"engine": "rsyncv2", "n": 1})
        assert backup.metadata() == {"engine": "rsyncv2", "n": 1}
        assert levels(storage.get_latest_level_zero_increments(ENGINE, NAME)) == {0: 100}
        out = tmp / "em"
        storage.get_file(backup.engine_metadata_path, str(out))
        assert out.read_bytes() == b"engine-meta"

    def test_put_metadata_writes_metadata_file_last(self, storage: Storage, tmp: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        calls: list[str] = []
        real = storage.put_file

        def spy(from_path: str, to_path: str) -> None:
            calls.append(to_path)
            real(from_path, to_path)

        monkeypatch.setattr(storage, "put_file", spy)
        backup = write_level(storage, tmp, 100, 100, 0)
        assert calls == [backup.engine_metadata_path, backup.metadata_path]

    def test_level_with_data_but_no_metadata_is_invisible(self, storage: Storage,
                                                          tmp: Path) -> None:
        write_level(storage, tmp, 100, 100, 0)
        write_level(storage, tmp, 100, 150, 1)
        write_level(storage, tmp, 100, 200, 2, complete=False)
        # A level whose metadata directory exists but whose file does not.
        half = Backup(ENGINE, NAME, 100, 250, 3, storage=storage)
        storage.create_dirs(half.metadata_path.rsplit("/", 1)[0])
        assert levels(storage.get_latest_level_zero_increments(ENGINE, NAME)) == {0: 100, 1: 150}

    def test_chain_with_only_data_is_not_a_level_zero(self, storage: Storage, tmp: Path) -> None:
        write_level(storage, tmp, 100, 100, 0)
        write_level(storage, tmp, 300, 300, 0, complete=False)
        assert [b.timestamp for b in storage.get_level_zero(ENGINE, NAME)] == [100]
        assert levels(storage.get_latest_level_zero_increments(ENGINE, NAME)) == {0: 100}

    def test_only_incomplete_chain_means_not_found(self, storage: Storage, tmp: Path) -> None:
        write_level(storage, tmp, 300, 300, 0, complete=False)
        assert storage.get_level_zero(ENGINE, NAME) == []
        with pytest.raises(BackupNotFoundError):
            storage.get_latest_level_zero_increments(ENGINE, NAME)

    def test_junk_names_in_metadata_tree_are_ignored(self, storage: Storage, tmp: Path) -> None:
        write_level(storage, tmp, 100, 100, 0)
        root = storage.metadata_path(ENGINE, NAME)
        for junk in ("notes", "0100", "+5"):
            storage.put_file(str(tmp / "fm-host_docs-100-0-100"), base.path_join(root, junk, "x"))
        chain = base.path_join(root, 100)
        for junk in ("1_x", "01_5", "a_1", "2"):
            storage.put_file(str(tmp / "fm-host_docs-100-0-100"),
                             base.path_join(chain, junk, "metadata"))
        assert levels(storage.get_latest_level_zero_increments(ENGINE, NAME)) == {0: 100}

    # -- chain selection ----------------------------------------------------------------

    @pytest.fixture
    def two_chains(self, storage: Storage, tmp: Path) -> Storage:
        for l0, ts, level in ((100, 100, 0), (100, 150, 1), (100, 250, 2),
                              (200, 200, 0), (200, 300, 1)):
            write_level(storage, tmp, l0, ts, level)
        return storage

    @pytest.mark.parametrize("recent, expected", [
        (None, {0: 200, 1: 300}),
        (0, {0: 200, 1: 300}),
        (300, {0: 200, 1: 300}),
        (299, {0: 200}),
        (200, {0: 200}),
        (199, {0: 100, 1: 150}),
        (260, {0: 200}),
        (100, {0: 100}),
    ])
    def test_latest_level_zero_increments_recent_to_date(self, two_chains: Storage,
                                                         recent: int | None,
                                                         expected: dict[int, int]) -> None:
        got = two_chains.get_latest_level_zero_increments(ENGINE, NAME, recent_to_date=recent)
        assert levels(got) == expected
        assert all(b.level == level for level, b in got.items())

    def test_nothing_before_date_raises_index_error(self, two_chains: Storage) -> None:
        with pytest.raises(BackupNotFoundError, match=NAME) as info:
            two_chains.get_latest_level_zero_increments(ENGINE, NAME, recent_to_date=99)
        assert isinstance(info.value, IndexError)
        with pytest.raises(IndexError):
            two_chains.get_latest_level_zero_increments(ENGINE, "other")

    def test_get_level_zero_filters_by_date(self, two_chains: Storage) -> None:
        assert [b.timestamp for b in two_chains.get_level_zero(ENGINE, NAME)] == [100, 200]
        assert [b.timestamp for b in two_chains.get_level_zero(ENGINE, NAME, 150)] == [100]

    def test_backup_names_are_isolated(self, storage: Storage, tmp: Path) -> None:
        write_level(storage, tmp, 100, 100, 0, name="a")
        write_level(storage, tmp, 200, 200, 0, name="ab")
        write_level(storage, tmp, 200, 250, 1, name="ab")
        assert levels(storage.get_latest_level_zero_increments(ENGINE, "a")) == {0: 100}
        assert levels(storage.get_latest_level_zero_increments(ENGINE, "ab")) == {0: 200, 1: 250}
        with pytest.raises(BackupNotFoundError):
            storage.get_latest_level_zero_increments(FakeEngine("tar"), "a")

    def test_second_handle_sees_same_container(self, tmp_path: Path, tmp: Path) -> None:
        first = self.make_storage(tmp_path / "shared", SEGMENT)
        write_level(first, tmp, 100, 100, 0)
        second = self.make_storage(tmp_path / "shared", SEGMENT)
        assert levels(second.get_latest_level_zero_increments(ENGINE, NAME)) == {0: 100}

    # -- previous_backup ----------------------------------------------------------------

    @pytest.fixture
    def chain(self, storage: Storage, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Storage:
        """Levels 0, 1, 2 of one chain; the clock sits just after level 2."""
        for ts, level in ((1000, 0), (2000, 1), (3000, 2)):
            write_level(storage, tmp, 1000, ts, level)
        monkeypatch.setattr(layout, "now", lambda: 3001)
        return storage

    def previous(self, storage: Storage, incremental: bool = True, max_level: int | None = None,
                 always_level: int | None = None,
                 restart_always_level: float | None = None) -> Backup | None:
        return storage.previous_backup(ENGINE, NAME, incremental, max_level, always_level,
                                       restart_always_level)

    def test_previous_not_incremental(self, chain: Storage) -> None:
        assert self.previous(chain, incremental=False) is None

    def test_previous_none_exists(self, storage: Storage) -> None:
        assert self.previous(storage) is None

    def test_previous_highest_level(self, chain: Storage) -> None:
        prev = self.previous(chain)
        assert (prev.level, prev.timestamp, prev.level_zero_timestamp) == (2, 3000, 1000)
        assert prev.storage is chain

    @pytest.mark.parametrize("max_level, expected", [(1, None), (2, None), (3, 2), (0, 2)])
    def test_previous_max_level(self, chain: Storage, max_level: int,
                                expected: int | None) -> None:
        prev = self.previous(chain, max_level=max_level)
        assert (prev.level if prev else None) == expected

    @pytest.mark.parametrize("always_level, expected", [(1, None), (2, 1), (3, 2), (0, 2)])
    def test_previous_always_level(self, chain: Storage, always_level: int,
                                   expected: int | None) -> None:
        prev = self.previous(chain, always_level=always_level)
        assert (prev.level if prev else None) == expected

    def test_previous_always_level_equal_with_missing_lower_level(self, storage: Storage,
                                                                  tmp: Path) -> None:
        write_level(storage, tmp, 1000, 1000, 0)
        write_level(storage, tmp, 1000, 2000, 1, complete=False)
        write_level(storage, tmp, 1000, 3000, 2)
        assert self.previous(storage, always_level=2) is None

    def test_previous_restart_always_level_expiry(self, chain: Storage,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(layout, "now", lambda: 3000 + 86400)
        assert self.previous(chain, restart_always_level=1).level == 2
        monkeypatch.setattr(layout, "now", lambda: 3000 + 86400 + 1)
        assert self.previous(chain, restart_always_level=1) is None
        assert self.previous(chain, restart_always_level=2).level == 2
        assert self.previous(chain, restart_always_level=0).level == 2

    def test_previous_uses_newest_chain(self, chain: Storage, tmp: Path) -> None:
        write_level(chain, tmp, 2500, 2500, 0)
        prev = self.previous(chain)
        assert (prev.level, prev.level_zero_timestamp) == (0, 2500)

    # -- removal ---------------------------------------------------------------------------

    def test_remove_older_than(self, storage: Storage, tmp: Path) -> None:
        for l0, ts, level in ((100, 100, 0), (100, 400, 1), (200, 200, 0), (300, 300, 0)):
            write_level(storage, tmp, l0, ts, level)
        write_level(storage, tmp, 150, 150, 0, complete=False)
        write_level(storage, tmp, 100, 100, 0, name="other")
        storage.remove_older_than(ENGINE, 200, NAME)
        assert [b.timestamp for b in storage.get_level_zero(ENGINE, NAME)] == [300]
        data_root = base.path_join(storage.storage_path, "data", ENGINE.name, NAME)
        assert storage.listdir(data_root) == ["300"]
        assert levels(storage.get_latest_level_zero_increments(ENGINE, "other")) == {0: 100}

    def test_remove_older_than_zero_removes_nothing(self, storage: Storage, tmp: Path) -> None:
        write_level(storage, tmp, 100, 100, 0)
        storage.remove_older_than(ENGINE, 0, NAME)
        assert [b.timestamp for b in storage.get_level_zero(ENGINE, NAME)] == [100]

    def test_metadata_of_missing_level_raises(self, storage: Storage) -> None:
        with pytest.raises(StorageError):
            Backup(ENGINE, NAME, 10, 10, 0, storage=storage).metadata()

    def test_backup_remove_deletes_chain(self, storage: Storage, tmp: Path) -> None:
        write_level(storage, tmp, 100, 100, 0)
        level1 = write_level(storage, tmp, 100, 150, 1)
        level1.remove()
        assert storage.get_level_zero(ENGINE, NAME) == []
        with pytest.raises(StorageError):
            list(storage.backup_blocks(level1))

    # -- extras for our CLI ------------------------------------------------------------------

    def test_backup_names(self, storage: Storage, tmp: Path) -> None:
        assert storage.backup_names("rsyncv2") == []
        write_level(storage, tmp, 100, 100, 0, name="b")
        write_level(storage, tmp, 100, 100, 0, name="a")
        write_level(storage, tmp, 100, 100, 0, name="failed", complete=False)
        assert storage.backup_names("rsyncv2") == ["a", "b"]
        assert storage.backup_names("tar") == []

    def test_list_chains_oldest_first(self, two_chains: Storage) -> None:
        chains = two_chains.list_chains(ENGINE, NAME)
        assert [levels(c) for c in chains] == [{0: 100, 1: 150, 2: 250}, {0: 200, 1: 300}]

    def test_level_size(self, storage: Storage, tmp: Path) -> None:
        backup = write_level(storage, tmp, 100, 100, 0, segments=[b"x" * 1000, b"y" * 24])
        assert storage.level_size(backup) == 1024 + len(b"engine-meta")

    # -- more of the contract: listing, ranges, big levels, concurrency ----------------------

    def test_listdir_lists_files_and_subdirectories_once(self, storage: Storage,
                                                         tmp: Path) -> None:
        src = tmp / "f"
        src.write_bytes(b"x")
        root = base.path_join(storage.storage_path, "misc")
        for rel in ("a", "b/c", "b/d/e", "bz", "c/f"):
            storage.put_file(str(src), base.path_join(root, rel))
        assert storage.listdir(root) == ["a", "b", "bz", "c"]
        assert storage.listdir(base.path_join(root, "b")) == ["c", "d"]
        assert storage.listdir(base.path_join(root, "a", "x")) == []

    def test_listdir_many_entries(self, storage: Storage, tmp: Path) -> None:
        src = tmp / "f"
        src.write_bytes(b"x")
        root = base.path_join(storage.storage_path, "many")
        names = [f"n{i:03d}" for i in range(25)]
        for i, name in enumerate(names):
            target = (base.path_join(root, name) if i % 2
                      else base.path_join(root, name, "child"))
            storage.put_file(str(src), target)
        assert storage.listdir(root) == names

    def test_rmtree_keeps_siblings_sharing_a_name_prefix(self, storage: Storage,
                                                         tmp: Path) -> None:
        src, out = tmp / "f", tmp / "out"
        src.write_bytes(b"kept")
        root = base.path_join(storage.storage_path, "rm")
        for rel in ("a/x", "a/y/z", "ab/x", "a.b/x"):
            storage.put_file(str(src), base.path_join(root, rel))
        storage.rmtree(base.path_join(root, "a"))
        assert storage.listdir(root) == ["a.b", "ab"]
        storage.get_file(base.path_join(root, "ab", "x"), str(out))
        assert out.read_bytes() == b"kept"

    @pytest.mark.parametrize("read_segment", [1, 10, SEGMENT + 3, 100_000])
    def test_blocks_follow_the_reading_handles_segment_size(self, tmp_path: Path,
                                                            read_segment: int) -> None:
        writer = self.make_storage(tmp_path / "ranges", SEGMENT)
        data = bytes(range(256)) * 7 + b"tail"
        backup = Backup(ENGINE, NAME, 10, 10, 0, storage=writer)
        writer.write_backup(queue_of([data[:100], data[100:1000], data[1000:]]), backup)
        reader = self.make_storage(tmp_path / "ranges", read_segment)
        chunks = list(reader.backup_blocks(backup.copy(reader)))
        assert all(0 < len(chunk) <= read_segment for chunk in chunks)
        assert b"".join(chunks) == data

    def test_blocks_are_at_most_the_read_block(self, tmp_path: Path,
                                               monkeypatch) -> None:
        """Restore memory is bounded whatever the segment size."""
        monkeypatch.setattr(base, "IO_BLOCK", 1000)
        storage = self.make_storage(tmp_path / "blocks", 1 << 20)
        data = bytes(range(256)) * 20
        backup = Backup(ENGINE, NAME, 10, 10, 0, storage=storage)
        storage.write_backup(queue_of([data]), backup)
        chunks = list(storage.backup_blocks(backup))
        assert [len(c) for c in chunks] == [1000] * 5 + [120]
        assert b"".join(chunks) == data

    def test_large_level_round_trip(self, tmp_path: Path) -> None:
        """A level of several MiB (past any multipart threshold) in uneven segments."""
        storage = self.make_storage(tmp_path / "large", 1 << 20)
        block = bytes(range(251)) * 1000
        segments = [block[: (i * 37_000) % 250_000 + 1] for i in range(60)]
        rich = RichQueue(size=2)
        producer = threading.Thread(target=rich.put_messages, args=(segments,), daemon=True)
        producer.start()
        backup = Backup(ENGINE, NAME, 10, 10, 0, storage=storage)
        storage.write_backup(rich, backup)
        producer.join(30)
        reader = self.make_storage(tmp_path / "large", (1 << 20) + 3)
        chunks = list(reader.backup_blocks(backup.copy(reader)))
        assert all(0 < len(chunk) <= (1 << 20) + 3 for chunk in chunks)
        assert b"".join(chunks) == b"".join(segments)
        assert storage.level_size(backup) == sum(map(len, segments))

    def test_put_file_missing_source_raises_and_stores_nothing(self, storage: Storage,
                                                               tmp: Path) -> None:
        target = base.path_join(storage.storage_path, "misc", "f")
        with pytest.raises(StorageError):
            storage.put_file(str(tmp / "no-such-file"), target)
        assert storage.listdir(base.path_join(storage.storage_path, "misc")) == []

    def test_failed_get_file_keeps_existing_local_file(self, storage: Storage,
                                                       tmp: Path) -> None:
        out = tmp / "out"
        out.write_bytes(b"before")
        with pytest.raises(StorageError):
            storage.get_file(base.path_join(storage.storage_path, "nope"), str(out))
        assert out.read_bytes() == b"before"
        assert sorted(p.name for p in tmp.iterdir()) == ["out"]

    def test_level_size_of_missing_level_is_zero(self, storage: Storage) -> None:
        assert storage.level_size(Backup(ENGINE, NAME, 10, 10, 0, storage=storage)) == 0

    def test_failed_level_then_rewrite_of_same_level(self, storage: Storage, tmp: Path) -> None:
        """A failed run publishes nothing; running the same level again works."""
        write_level(storage, tmp, 100, 100, 0)
        backup = Backup(ENGINE, NAME, 100, 200, 1, storage=storage)

        def broken():
            yield b"half of level 1"
            raise RuntimeError("source vanished")

        rich = RichQueue(size=1)

        def produce() -> None:
            try:
                rich.put_messages(broken())
            except RuntimeError:
                pass    # put_messages force-stopped the queue: the consumer sees that

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        with pytest.raises(QueueStopped):
            storage.write_backup(rich, backup)
        producer.join(5)
        assert levels(storage.get_latest_level_zero_increments(ENGINE, NAME)) == {0: 100}
        assert self.previous(storage).level == 0
        write_level(storage, tmp, 100, 200, 1, segments=[b"level one", b" again"])
        assert levels(storage.get_latest_level_zero_increments(ENGINE, NAME)) == {0: 100, 1: 200}
        assert read_all(storage, backup) == b"level one again"

    def test_concurrent_backups_of_two_names(self, storage: Storage, tmp: Path) -> None:
        """Two threads write two backup names at once through one storage handle."""
        payloads = {name: [bytes([i % 256, ord(name[0])]) * (500 + 37 * i) for i in range(40)]
                    for name in ("alpha", "beta")}
        failures: list[BaseException] = []
        start = threading.Barrier(2)

        def run(name: str) -> None:
            try:
                start.wait(5)
                for level, ts in ((0, 100), (1, 200)):
                    rich = RichQueue(size=2)
                    producer = threading.Thread(target=rich.put_messages,
                                                args=(payloads[name][level::2],), daemon=True)
                    producer.start()
                    backup = Backup(ENGINE, name, 100, ts, level, storage=storage)
                    storage.write_backup(rich, backup)
                    producer.join(10)
                    meta = tmp / f"meta-{name}-{level}"
                    meta.write_text(json.dumps({"name": name, "level": level}))
                    storage.put_metadata(str(meta), str(meta), backup)
            except BaseException as exc:  # noqa: BLE001 - asserted below
                failures.append(exc)

        threads = [threading.Thread(target=run, args=(name,)) for name in payloads]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not failures
        for name, segments in payloads.items():
            chain = storage.get_latest_level_zero_increments(ENGINE, name)
            assert levels(chain) == {0: 100, 1: 200}
            for level, backup in chain.items():
                assert read_all(storage, backup) == b"".join(segments[level::2])
                assert backup.metadata() == {"name": name, "level": level}
        assert storage.backup_names(ENGINE.name) == ["alpha", "beta"]

    # -- a hostile container: names, publication, sizes --------------------------------------

    def put_bytes(self, storage: Storage, tmp: Path, path: str, data: bytes) -> None:
        src = tmp / f"put-{abs(hash(path))}"
        src.write_bytes(data)
        storage.put_file(str(src), path)

    @pytest.mark.parametrize("chain_name", [
        "١٢", "+5", " 5", "5 ", "5\n", "05", "99999999999999999999", str(base.MAX_TIMESTAMP + 1),
        "x" * 200])
    def test_odd_chain_names_are_ignored_with_one_warning(self, storage: Storage, tmp: Path,
                                                          caplog: pytest.LogCaptureFixture,
                                                          chain_name: str) -> None:
        chain_name = self.odd_name(chain_name)
        write_level(storage, tmp, 100, 100, 0)
        root = storage.metadata_path(ENGINE, NAME)
        self.put_bytes(storage, tmp, base.path_join(root, chain_name, "0_5", "metadata"), b"{}")
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                assert [b.timestamp for b in storage.get_level_zero(ENGINE, NAME)] == [100]
                assert [levels(c) for c in storage.list_chains(ENGINE, NAME)] == [{0: 100}]
            storage.remove_older_than(ENGINE, 50, NAME)
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warned == [f"Ignoring {base.path_join(root, chain_name)!r} in the storage: "
                          f"not a chain directory (a timestamp 0..{base.MAX_TIMESTAMP} in ASCII digits)"]

    @pytest.mark.parametrize("level_name", [
        "100000000000_5", f"{base.MAX_LEVEL + 1}_150", f"1_{base.MAX_TIMESTAMP + 1}",
        "1_99999999999999999999", "١٢_150", "²_150", "1_١٥٠", "+1_150", " 1_150", "1_150 ",
        "1_150\n", "01_150", "1_0150", "1_150_1", "0_99"])
    def test_odd_level_names_are_ignored_with_one_warning(self, storage: Storage, tmp: Path,
                                                          caplog: pytest.LogCaptureFixture,
                                                          level_name: str) -> None:
        level_name = self.odd_name(level_name)
        write_level(storage, tmp, 100, 100, 0)
        write_level(storage, tmp, 100, 150, 1)
        chain = base.path_join(storage.metadata_path(ENGINE, NAME), 100)
        self.put_bytes(storage, tmp, base.path_join(chain, level_name, "metadata"),
                       b'{"engine_name": "rsyncv2"}')
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                assert levels(storage.get_latest_level_zero_increments(ENGINE, NAME)) == {0: 100,
                                                                                          1: 150}
            assert self.previous(storage).timestamp == 150
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1 and repr(base.path_join(chain, level_name)) in warned[0]

    def test_hidden_names_are_ignored_silently(self, storage: Storage, tmp: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
        write_level(storage, tmp, 100, 100, 0)
        root = storage.metadata_path(ENGINE, NAME)
        self.put_bytes(storage, tmp, base.path_join(root, ".100.tmp-x", "f"), b"")
        self.put_bytes(storage, tmp, base.path_join(root, "100", ".0_100.tmp-y", "f"), b"")
        with caplog.at_level(logging.WARNING):
            assert levels(storage.get_latest_level_zero_increments(ENGINE, NAME)) == {0: 100}
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    def test_a_metadata_directory_does_not_publish_a_level(self, storage: Storage,
                                                           tmp: Path) -> None:
        """Only a file (an object) named ``metadata`` publishes; ``metadata/x`` does not."""
        write_level(storage, tmp, 100, 100, 0)
        write_level(storage, tmp, 100, 150, 1)
        level2 = write_level(storage, tmp, 100, 200, 2, complete=False)
        self.put_bytes(storage, tmp, base.path_join(level2.metadata_path, "x"), b"{}")
        zero = write_level(storage, tmp, 300, 300, 0, complete=False)
        self.put_bytes(storage, tmp, base.path_join(zero.metadata_path, "x"), b"{}")
        assert not storage.is_published(level2.metadata_path)
        assert storage.is_published(Backup(ENGINE, NAME, 100, 150, 1, storage=storage).metadata_path)
        assert levels(storage.get_latest_level_zero_increments(ENGINE, NAME)) == {0: 100, 1: 150}
        assert [levels(c) for c in storage.list_chains(ENGINE, NAME)] == [{0: 100, 1: 150}]
        assert self.previous(storage).level == 1

    def test_unpublished_newer_duplicate_of_a_level_is_absent(self, storage: Storage,
                                                              tmp: Path) -> None:
        write_level(storage, tmp, 100, 100, 0)
        write_level(storage, tmp, 100, 150, 1, segments=[b"published"])
        write_level(storage, tmp, 100, 900, 1, segments=[b"unpublished"], complete=False)
        chain = storage.get_latest_level_zero_increments(ENGINE, NAME)
        assert levels(chain) == {0: 100, 1: 150}
        assert read_all(storage, chain[1]) == b"published"

    def test_chain_at_max_level_restarts(self, storage: Storage, tmp: Path) -> None:
        write_level(storage, tmp, 100, 100, 0)
        write_level(storage, tmp, 100, 150, base.MAX_LEVEL - 1)
        assert self.previous(storage).level == base.MAX_LEVEL - 1
        write_level(storage, tmp, 100, 200, base.MAX_LEVEL)
        assert self.previous(storage) is None

    def test_metadata_past_its_bound_is_refused(self, storage: Storage, tmp: Path) -> None:
        backup = write_level(storage, tmp, 100, 100, 0, complete=False)
        self.put_bytes(storage, tmp, backup.metadata_path,
                       b"{" + b" " * layout.MAX_METADATA_SIZE + b"}")
        with pytest.raises(StorageError, match=f"more than the {layout.MAX_METADATA_SIZE}") as info:
            backup.metadata()
        assert type(info.value) is StorageError and "\n" not in str(info.value)
        assert backup.metadata_path in str(info.value)

    def test_read_object_is_bounded(self, storage: Storage, tmp: Path) -> None:
        path = base.path_join(storage.storage_path, "misc", "obj")
        self.put_bytes(storage, tmp, path, b"x" * 100)
        assert storage.read_object(path, 100) == b"x" * 100
        with pytest.raises(StorageError, match="holds 100 bytes, more than the 99"):
            storage.read_object(path, 99)
        with pytest.raises(StorageError, match="nothing-here"):
            storage.read_object(base.path_join(storage.storage_path, "nothing-here"), 10)

    def test_get_file_past_the_cap_is_refused(self, storage: Storage, tmp: Path) -> None:
        path = base.path_join(storage.storage_path, "misc", "big")
        self.put_bytes(storage, tmp, path, b"y" * 1000)
        storage.max_file_size = 999
        out = tmp / "out"
        out.write_bytes(b"before")
        with pytest.raises(StorageError, match="1000 bytes, more than the 999") as info:
            storage.get_file(path, str(out))
        assert type(info.value) is StorageError
        assert out.read_bytes() == b"before"
        assert sorted(p.name for p in tmp.iterdir() if not p.name.startswith("put-")) == ["out"]
        storage.max_file_size = 1000
        storage.get_file(path, str(out))
        assert out.read_bytes() == b"y" * 1000

    @pytest.mark.parametrize("stored, declared, outcome", [
        (b"0123456789", 10, "read"),
        (b"0123456789", 20, "read"),        # shorter than declared: the decoder reports it
        (b"0123456789", 9, "refused"),
        (b"0123456789", None, "read"),      # no summary: only the object's own size bounds it
    ])
    def test_data_is_bounded_by_its_declared_size(self, storage: Storage, tmp: Path,
                                                  stored: bytes, declared: int | None,
                                                  outcome: str) -> None:
        meta: dict[str, Any] = {"engine_name": "rsyncv2"}
        if declared is not None:
            meta["summary"] = {"stored_bytes": declared, "manifest_bytes": 11}
        backup = write_level(storage, tmp, 100, 100, 0, segments=[stored], meta=meta)
        assert storage.declared_data_size(backup) == declared
        if outcome == "read":
            assert read_all(storage, backup) == stored
            return
        with pytest.raises(StorageError, match=f"holds 10 bytes, more than the {declared} its level's "
                                               f"metadata declares") as info:
            read_all(storage, backup)
        assert type(info.value) is StorageError

    @pytest.mark.parametrize("value", [-1, "10", 1.5, True, None])
    def test_a_declared_size_that_is_no_size_is_a_format_error(self, storage: Storage, tmp: Path,
                                                               value: object) -> None:
        backup = write_level(storage, tmp, 100, 100, 0,
                             meta={"summary": {"stored_bytes": value}})
        with pytest.raises(FormatError, match="stored_bytes") as info:
            read_all(storage, backup)
        assert type(info.value) is FormatError

    def test_non_printable_backup_names_are_not_listed(self, storage: Storage, tmp: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
        odd = ["evil\x1b[2Jname", "tab\tname"] + (["two\nlines"] if self.newline_in_names else [])
        for name in ["good", *odd]:
            write_level(storage, tmp, 100, 100, 0, name=name)
        with caplog.at_level(logging.WARNING):
            assert storage.backup_names(ENGINE.name) == ["good"]
            assert storage.backup_names(ENGINE.name) == ["good"]
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == len(odd)


class TestLocalStorageContract(StorageContract):
    def make_storage(self, root: Path, max_segment_size: int) -> Storage:
        return LocalStorage(str(root), max_segment_size=max_segment_size)


def test_queue_module_empty_is_stdlib() -> None:
    """RichQueue.get signals 'drained' with the stdlib queue.Empty (not a shadowed module)."""
    rich = queue_of([])
    with pytest.raises(queue.Empty):
        rich.get()
