"""Where a stream belongs: backup name, chain, level and time, named in its BEGIN record.

A fleet shares one pass file, so an encrypted stream of another host's
backup, of an older chain or of another level decrypts and authenticates
as well as the right one.  Each stream therefore names its place in its
BEGIN record (inside the authenticated plaintext), and a reader that knows
where it read the stream from refuses one that names another place: a
stream moved, copied or replayed from elsewhere in the storage is an
``IntegrityError``, never foreign files in a restore or a broken next
level.  What this cannot detect is written in ``docs/encryption.rst``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from freezer_rsyncv2 import errors

#: BEGIN keys of a place ("level" predates the others: version 1)
LEVEL, NAME, CHAIN, TIME = "level", "name", "chain", "time"
_MAX_NAME = 1024
_MAX_INT = (1 << 63) - 1


@dataclasses.dataclass(frozen=True)
class Place:
    """One level of one chain of one backup name, as the storage knows it."""

    name: str       # hostname_backup_name
    chain: int      # level_zero_timestamp
    level: int
    time: int       # the level's own timestamp

    @classmethod
    def of(cls, backup: Any) -> Place | None:
        """The place of a storage's ``Backup`` (ours or Freezer's); None
        for an object that does not say all of it."""
        try:
            place = cls(backup.hostname_backup_name,
                        int(backup.level_zero_timestamp), int(backup.level),
                        int(backup.timestamp))
        except (AttributeError, TypeError, ValueError):
            return None
        return place if isinstance(place.name, str) else None

    def fields(self) -> dict[str, Any]:
        """The BEGIN fields that name this place."""
        return {LEVEL: self.level, NAME: self.name, CHAIN: self.chain, TIME: self.time}


def check(begin: dict[str, Any], expected: Place | None, what: str, required: bool) -> None:
    """Refuse a stream whose BEGIN names another place than ``expected``.

    ``required``: the stream's format names its place (version 3 on);
    older streams are checked for the level alone, the one field they
    carry.  Without an expected place nothing is checked.
    """
    if expected is None:
        return
    named = {key: begin.get(key) for key in (NAME, CHAIN, TIME)}
    if not required and all(value is None for value in named.values()):
        named = {}
    named[LEVEL] = begin.get(LEVEL)
    want = expected.fields()
    for key, value in named.items():
        if key == NAME:
            ok = isinstance(value, str) and len(value) <= _MAX_NAME
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_INT
        if not ok:
            raise errors.IntegrityError(f"{what}: its BEGIN record does not name its {key} ({value!r})")
        if value != want[key]:
            raise errors.IntegrityError(
                f"{what} belongs elsewhere: it names {_show(named)}, the storage holds it as {_show(want)} "
                "(a stream moved or replayed from another place)")


def _show(fields: dict[str, Any]) -> str:
    return (f"backup {fields.get(NAME)!r}, chain {fields.get(CHAIN)}, level {fields.get(LEVEL)}, "
            f"time {fields.get(TIME)}")
