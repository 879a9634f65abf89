"""The base class's hand-offs: storage blocks into restore_level, segments into write_backup."""

from __future__ import annotations

import inspect
import threading
import time
from typing import Any

import pytest

from freezer_rsyncv2 import errors
from freezer_rsyncv2.engine import base
from freezer_rsyncv2.handoff import QueuePipe
from freezer_rsyncv2.engine.rsyncv2 import Rsyncv2Engine

JOIN = 5.0


class Storage:
    """backup_blocks() yields numbered blocks, optionally failing after some."""

    def __init__(self, count: int, fail_after: int | None = None) -> None:
        self.count = count
        self.fail_after = fail_after
        self.produced = 0
        self.closed = threading.Event()
        self.blocks: list[bytes] = []

    def backup_blocks(self, backup: Any):
        try:
            for i in range(self.count):
                if self.fail_after is not None and i == self.fail_after:
                    raise errors.StorageError("disk gone at block %d" % i)
                block = b"%06d" % i
                self.blocks.append(block)
                self.produced += 1
                yield block
        finally:
            self.closed.set()

    def write_backup(self, rich_queue: Any, backup: Any) -> None:
        for message in rich_queue.get_messages():
            self.written.append(message)
            self.ahead.append(self.produced - len(self.written))
            time.sleep(0.005)


class Engine(base.BackupEngine):
    """restore_level reads like Rsyncv2Engine's: recv_bytes() until EOFError."""

    def __init__(self, storage: Any, fail_at: int | None = None) -> None:
        super().__init__(storage)
        self.fail_at = fail_at
        self.received: list[bytes] = []
        self.ahead: list[int] = []
        self.pipe: Any = None

    name = "fake"

    def metadata(self, backup_resource: str) -> dict:
        return {}

    def backup_data(self, backup_path: str, manifest_path: str):
        for i in range(self.storage.count):
            self.storage.produced += 1
            yield b"%06d" % i

    def restore_level(self, restore_path: str, read_pipe: Any, backup: Any,
                      except_queue: Any = None) -> None:
        self.pipe = read_pipe
        while True:
            try:
                block = read_pipe.recv_bytes()
            except EOFError:
                break
            self.received.append(block)
            if self.fail_at is not None and len(self.received) == self.fail_at:
                raise errors.CorruptRecordError("bad block")
            time.sleep(0.005)   # slower than the storage: it has to wait
            # what the storage thread read beyond what was received
            self.ahead.append(self.storage.produced - len(self.received))
        if len(self.received) < self.storage.count:
            raise errors.TruncatedError("stream ends early")


class Backup:
    level = 0

    def __init__(self, storage: Any = None) -> None:
        self.storage = storage


def restore_one(engine: Engine) -> None:
    """restore_one on a thread, so that a hang fails the test instead of blocking it."""
    box: dict[str, BaseException] = {}

    def run() -> None:
        try:
            engine.restore_one("/nonexistent", Backup(engine.storage))
        except BaseException as err:   # noqa: BLE001 - inspected below
            box["error"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(JOIN)
    assert not t.is_alive(), "restore hung"
    if "error" in box:
        raise box["error"]


def test_restore_level_gets_the_blocks_themselves_then_eof() -> None:
    storage = Storage(30)
    engine = Engine(storage)
    restore_one(engine)
    assert isinstance(engine.pipe, QueuePipe)
    assert engine.received == storage.blocks
    assert all(a is b for a, b in zip(engine.received, storage.blocks))  # no copies
    assert storage.closed.is_set()


def test_restore_holds_at_most_one_block_beyond_the_readers() -> None:
    storage = Storage(30)
    engine = Engine(storage)
    restore_one(engine)
    # the block being restored and the one read next: never more
    assert max(engine.ahead) == 1


def test_storage_error_mid_stream_is_the_reported_error() -> None:
    storage = Storage(30, fail_after=7)
    engine = Engine(storage)
    with pytest.raises(errors.StorageError, match="disk gone at block 7") as info:
        restore_one(engine)
    # the reader saw the stream end early; that is the context, not the cause
    assert isinstance(info.value.__cause__, errors.TruncatedError)
    assert len(engine.received) == 7


def test_storage_error_before_the_first_block() -> None:
    storage = Storage(30, fail_after=0)
    with pytest.raises(errors.StorageError, match="block 0"):
        restore_one(Engine(storage))


def test_reader_error_stops_the_storage_thread() -> None:
    storage = Storage(10_000)
    engine = Engine(storage, fail_at=3)
    with pytest.raises(errors.CorruptRecordError):
        restore_one(engine)
    assert storage.closed.wait(JOIN)     # the generator was closed, not drained
    assert storage.produced <= 5
    names = [t.name for t in threading.enumerate()]
    assert "rsyncv2-restore-read" not in names


def test_restore_level_that_stops_reading_early_does_not_hang() -> None:
    storage = Storage(10_000)

    class Quitter(Engine):
        def restore_level(self, restore_path, read_pipe, backup, except_queue=None):
            read_pipe.recv_bytes()

    restore_one(Quitter(storage))
    assert storage.closed.wait(JOIN)


def test_backup_hand_off_holds_two_segments() -> None:
    """Default queue_size 0: the storage takes each segment before the next is built."""
    storage = Storage(40)
    storage.written, storage.ahead = [], []
    engine = Engine(storage)
    engine._run_backup("src", "meta", Backup(), queue_size=0)
    assert storage.written == [b"%06d" % i for i in range(40)]
    assert max(storage.ahead) <= 1


def test_backup_default_queue_size_is_a_hand_off() -> None:
    for cls in (base.BackupEngine, Rsyncv2Engine):
        assert inspect.signature(cls.backup).parameters["queue_size"].default == 0
