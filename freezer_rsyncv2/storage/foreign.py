"""A storage that is not one of ours (Freezer's), seen through the engine's ``EngineStorage``.

``for_engine`` is called once, when an engine is built: our storages are
returned as they are; any other is wrapped in ``ForeignStorage``, which
applies ``freezer_compat``'s fixes to Freezer's storage objects and answers
the engine's questions (how the storage takes the level's bytes, whether
it can tell what it stored) from what is known of Freezer's classes.
Everything else (Freezer's own callers use the engine's ``storage``
attribute too) is passed to the wrapped storage unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from oslo_log import log

from freezer_rsyncv2.storage.base import Storage, check_range
from freezer_rsyncv2.storage.layout import Backup, EngineLike, newest_level_timestamps

LOG = log.getLogger(__name__)


def members(storage: Any) -> list[Any]:
    """The storages a backup is written to: Freezer's MultipleStorage writes to each of its
    ``storages``, any other storage to itself."""
    inner = storage.inner if isinstance(storage, ForeignStorage) else storage
    found = getattr(inner, "storages", None)
    return list(found) if isinstance(found, (list, tuple)) else [inner]


def slice_blocks(blocks: Iterable[bytes], offset: int, length: int) -> Iterator[bytes]:
    """Bytes [offset, offset + length) of the stream cut into ``blocks``, in slices of its blocks.

    The blocks before ``offset`` are read and dropped; none is read after the
    one holding the range's last byte (the iterator is then closed, so a
    generator's cleanup runs now).  Fewer bytes come if the stream ends first.
    """
    end = offset + length
    position = 0
    source = iter(blocks)
    try:
        for block in source:
            size = len(block)
            first, last = max(offset - position, 0), min(end - position, size)
            if first < last:
                yield block if (first, last) == (0, size) else bytes(block[first:last])
            position += size
            if position >= end:
                return
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


def for_engine(storage: Any) -> Any:
    """``storage`` as the engine speaks to it (``storage.protocol.EngineStorage``); None stays
    None (an engine that only computes deltas: ``get_sign_delta``)."""
    if storage is None or isinstance(storage, (Storage, ForeignStorage)):
        return storage
    return ForeignStorage(storage)


class ForeignStorage:
    """``EngineStorage`` over a storage with Freezer's interface only."""

    io_block_size = None        # Freezer's storages take max_segment_size segments

    def __init__(self, inner: Any) -> None:
        from freezer_rsyncv2 import freezer_compat      # Freezer's classes, if loaded
        self.inner = inner
        freezer_compat.adapt_storage(inner)
        self.message_form = freezer_compat.engine_form(inner)
        self._sized = [m for m in members(inner) if freezer_compat.can_tell_size(m)]
        self._told_full_read = False

    def __getattr__(self, name: str) -> Any:
        # Only called for what this class does not define: Freezer's own calls.
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"ForeignStorage({self.inner!r})"

    def previous_backup(self, engine: EngineLike, hostname_backup_name: str, incremental: bool,
                        max_level: int | None, always_level: int | None,
                        restart_always_level: float | None) -> Any:
        return self.inner.previous_backup(
            engine=engine, hostname_backup_name=hostname_backup_name, incremental=incremental,
            max_level=max_level, always_level=always_level,
            restart_always_level=restart_always_level)

    def get_level_zero(self, engine: EngineLike, hostname_backup_name: str,
                       recent_to_date: int | None = None) -> list[Any]:
        return list(self.inner.get_level_zero(engine=engine, hostname_backup_name=hostname_backup_name,
                                              recent_to_date=recent_to_date))

    def get_latest_level_zero_increments(self, engine: EngineLike, hostname_backup_name: str,
                                         recent_to_date: int | None = None) -> dict[int, Any]:
        return dict(self.inner.get_latest_level_zero_increments(
            engine=engine, hostname_backup_name=hostname_backup_name, recent_to_date=recent_to_date))

    def write_backup(self, rich_queue: Any, backup: Backup) -> None:
        self.inner.write_backup(rich_queue, backup)

    def put_metadata(self, engine_metadata_path: str, freezer_metadata_path: str,
                     backup: Backup) -> None:
        self.inner.put_metadata(engine_metadata_path, freezer_metadata_path, backup)

    def read_data(self, backup: Backup, offset: int, length: int) -> Iterator[bytes]:
        """``EngineStorage.read_data`` from ``backup_blocks`` of the storage ``backup`` names.

        Freezer's storages have no ranged read: the level's data is read from
        its start, the bytes before ``offset`` dropped, and the read stopped
        after the range.  One of ours (should a handle name one) reads the
        range alone.
        """
        check_range(offset, length)
        if length == 0:
            return iter(())
        source = getattr(backup, "storage", None) or self.inner
        if isinstance(source, (Storage, ForeignStorage)) and source is not self:
            return source.read_data(backup, offset, length)
        if not self._told_full_read:
            self._told_full_read = True
            LOG.debug("rsyncv2 engine: %r has no ranged read; a part of a level's data is read "
                      "from the level's start", source)
        return slice_blocks(source.backup_blocks(backup), offset, length)

    def stored_sizes(self, backup: Backup) -> Iterator[tuple[str, int | None]]:
        for member in self._sized:
            path = backup.copy(member).data_path
            yield path, member.stored_size(path)

    def newest_levels(self, sample: Any, recent_to_date: int | None) -> dict[int, int]:
        storage = sample.storage
        path = getattr(sample, "increments_metadata_path", None)
        if path is None or not callable(getattr(storage, "listdir", None)):
            return {}
        return newest_level_timestamps(storage, path, recent_to_date)
