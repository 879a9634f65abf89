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


#: Warnings a summary keeps (each is logged when it happens): a tree of a
#: million unreadable files must not hold a million of them.
KEPT_WARNINGS = 1000


@dataclasses.dataclass
class Summary:
    """Honest totals of one run; ``partial`` when entries were skipped or changed.

    ``warnings`` holds the first ``KEPT_WARNINGS`` of them (``add_warning``);
    ``warning_count`` counts them all.
    """

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
    warning_count: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)
    elapsed: float = 0.0

    @property
    def partial(self) -> bool:
        return self.warning_count > 0

    def add_warning(self, warning: EntryWarning) -> None:
        """Count ``warning``; keep it if fewer than ``KEPT_WARNINGS`` are kept."""
        self.warning_count += 1
        if len(self.warnings) < KEPT_WARNINGS:
            self.warnings.append(warning)

    def finish(self) -> None:
        self.elapsed = time.monotonic() - self.started

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("started")
        out.pop("warning_count")
        out["warnings"] = self.warning_count
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
