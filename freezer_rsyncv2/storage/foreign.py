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

from collections.abc import Iterator
from typing import Any

from freezer_rsyncv2.storage.base import Storage
from freezer_rsyncv2.storage.layout import Backup, EngineLike, newest_level_timestamps


def members(storage: Any) -> list[Any]:
    """The storages a backup is written to: Freezer's MultipleStorage writes to each of its
    ``storages``, any other storage to itself."""
    inner = storage.inner if isinstance(storage, ForeignStorage) else storage
    found = getattr(inner, "storages", None)
    return list(found) if isinstance(found, (list, tuple)) else [inner]


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
