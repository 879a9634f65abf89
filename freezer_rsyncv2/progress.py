"""Progress observer (no-op default) and the summary a backup or restore ends with."""

from __future__ import annotations

import dataclasses
import time


@dataclasses.dataclass(frozen=True)
class EntryWarning:
    """An entry skipped or stored as it was while it changed: what and why."""

    path: bytes         # relative to the backed-up root, as stored
    message: str
    shown: str          # the path as a person reads it (escaped where needed)

    def __str__(self) -> str:
        return f"{self.shown}: {self.message}"


@dataclasses.dataclass
class Summary:
    """Honest totals of one run; ``partial`` when entries were skipped or changed."""

    level: int | None = None
    files_new: int = 0
    files_changed: int = 0
    files_meta: int = 0
    files_unchanged: int = 0
    entries_deleted: int = 0
    entries: int = 0
    bytes_read: int = 0
    literal_bytes: int = 0
    copied_bytes: int = 0
    stored_bytes: int = 0
    manifest_bytes: int = 0
    warnings: list[EntryWarning] = dataclasses.field(default_factory=list)
    started: float = dataclasses.field(default_factory=time.monotonic)
    elapsed: float = 0.0

    @property
    def partial(self) -> bool:
        return bool(self.warnings)

    def finish(self) -> None:
        self.elapsed = time.monotonic() - self.started

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("started")
        out["warnings"] = len(self.warnings)
        out["partial"] = self.partial
        return out


class Progress:
    """Observer of long work; the core calls it, a front end renders it."""

    def phase(self, name: str, total_bytes: int | None = None) -> None:
        """A new phase starts (e.g. "backup level 1", "restore level 0")."""

    def advance(self, nbytes: int) -> None:
        """nbytes more of the current phase are done."""

    def entry(self, path: bytes, status: str) -> None:
        """An entry was handled: new, changed, meta, unchanged, deleted, restored."""

    def warning(self, path: bytes, message: str) -> None:
        """An entry was skipped or may be inconsistent."""


NULL = Progress()
