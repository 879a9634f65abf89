"""What the engine asks of a storage: the one interface it speaks (``EngineStorage``).

Our storages (``storage.base.Storage`` and its subclasses) implement it
directly.  Any other storage, Freezer's above all, is wrapped once, when an
engine is built, in ``storage.foreign.ForeignStorage``, which answers the
same questions for it; the engine never probes a storage for what it has.

Besides these calls the engine uses two methods of Freezer's storage
contract on the storage a ``Backup`` handle names (``backup.storage``, one
member of Freezer's MultipleStorage): ``get_file(from_path, to_path)`` for
a level's manifest and ``backup_blocks(backup)`` for its data.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from freezer_rsyncv2.storage.layout import Backup, EngineLike


@runtime_checkable
class EngineStorage(Protocol):
    """The storage calls of ``engine.base.BackupEngine``, and what it reads of a storage."""

    #: How ``write_backup`` takes the level's bytes: one of
    #: ``stream.encoder.MESSAGE_FORMS``.
    message_form: str

    @property
    def io_block_size(self) -> int | None:
        """Largest segment the engine should hand over (memory bound), None for no preference."""

    def previous_backup(self, engine: EngineLike, hostname_backup_name: str, incremental: bool,
                        max_level: int | None, always_level: int | None,
                        restart_always_level: float | None) -> Backup | None:
        """The level a new backup extends, None for a new level 0."""

    def get_level_zero(self, engine: EngineLike, hostname_backup_name: str,
                       recent_to_date: int | None = None) -> list[Backup]:
        """The level 0 of every chain of the name (IndexError if none)."""

    def get_latest_level_zero_increments(self, engine: EngineLike, hostname_backup_name: str,
                                         recent_to_date: int | None = None) -> dict[int, Backup]:
        """The levels of the newest chain, by level number."""

    def write_backup(self, rich_queue: Any, backup: Backup) -> None:
        """Store the messages of ``rich_queue`` as the level's data."""

    def put_metadata(self, engine_metadata_path: str, freezer_metadata_path: str,
                     backup: Backup) -> None:
        """Store the level's manifest, then the metadata that makes the level visible."""

    def read_data(self, backup: Backup, offset: int, length: int) -> Iterator[bytes]:
        """Yield bytes [offset, offset + length) of the level's data object (a partial restore).

        Chunks hold at most ``max_segment_size`` bytes (or a smaller natural
        chunk); fewer bytes come in all if the object ends before
        ``offset + length``.  Our storages read no more than about the range
        plus one chunk from the backend (pread, ranged GET); Freezer's have
        no ranged read, so ``ForeignStorage`` reads the data from its start
        and drops what precedes ``offset``.  ValueError for a negative
        ``offset`` or ``length``; a ``length`` of 0 yields nothing.  A
        missing data object raises what ``backup_blocks`` raises for it.
        """

    def stored_sizes(self, backup: Backup) -> Iterator[tuple[str, int | None]]:
        """(path, bytes stored or None for none) of the level's data in each storage that can
        tell; a storage that cannot tell yields nothing."""

    def newest_levels(self, sample: Backup, recent_to_date: int | None) -> dict[int, int]:
        """Level number -> newest published timestamp of ``sample``'s chain (with
        --always-level a chain holds several entries for one level); {} if not known."""
