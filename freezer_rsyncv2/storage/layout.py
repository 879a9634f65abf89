"""The Freezer-compatible path layout: the ``Backup`` handle of one level and the path helpers.

One level of a chain lives in two trees, named exactly as Freezer names them:
``<storage>/metadata/<engine>/<name>/<level-0 ts>/<level>_<ts>/metadata``
and ``<storage>/data/<engine>/<name>/<level-0 ts>/<level>_<ts>/`` (``data``,
``engine_metadata``, ``segments``).  ``base.py`` (the ``Storage`` ABC)
builds on these and re-exports them.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import TYPE_CHECKING, Any, Protocol

from freezer_rsyncv2.errors import ConfigError, FormatError, StorageError

if TYPE_CHECKING:
    from freezer_rsyncv2.storage.base import Storage

#: Name of the per-level file whose presence makes a level visible.
METADATA_NAME = "metadata"
DATA_NAME = "data"
ENGINE_METADATA_NAME = "engine_metadata"

# Canonical decimal integers only: "0012" or "+1" would not round-trip
# through str(int(x)) and would make us build paths that do not exist.
_INT = r"(?:0|[1-9][0-9]*)"
_CHAIN_RE = re.compile(rf"^{_INT}$")
_LEVEL_RE = re.compile(rf"^({_INT})_({_INT})$")


class EngineLike(Protocol):
    """Anything with a ``name``: Freezer's BackupEngine or our own engines."""

    @property
    def name(self) -> str: ...


def path_join(*parts: object) -> str:
    """Join storage path parts with '/' exactly as Freezer's utils do.

    Exactly, because inside freezer-agent Freezer's Backup objects and ours
    must name the same objects: a container given as "name/" keeps its
    "//" in both.  Storages normalize their own storage_path instead.
    """
    if not parts:
        raise ValueError("path_join needs at least one part")
    return "/".join(str(p) for p in parts)


def validate_name(value: object, what: str = "hostname_backup_name") -> str:
    """Return ``value`` if it is safe as a single path component, else raise ConfigError.

    A '/' would nest the backup inside another one's tree and '..' would
    escape the container, so either could make two names see each other.
    """
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty string, got {value!r}")
    if "/" in value or "\0" in value or value in (".", ".."):
        raise ConfigError(f"{what} {value!r} must not contain '/' or NUL nor be '.' or '..'")
    return value


def _as_int(value: object, what: str) -> int:
    """Coerce a timestamp/level to a non-negative int; floats would change the path."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be an int, got {value!r}")
    if isinstance(value, int):
        result = value
    elif isinstance(value, str) and _CHAIN_RE.match(value):
        result = int(value)
    else:
        raise ConfigError(f"{what} must be a non-negative int, got {value!r}")
    if result < 0:
        raise ConfigError(f"{what} must be non-negative, got {value!r}")
    return result


def parse_level_dir(name: str) -> tuple[int, int] | None:
    """Return (level, timestamp) for a ``<level>_<ts>`` directory name, else None."""
    match = _LEVEL_RE.match(name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


class Backup:
    """One level of one chain of one backup name, as Freezer's ``storage.base.Backup``.

    Level 0 is a full backup; level N > 0 holds the changes since level N-1
    of the same chain (identified by ``level_zero_timestamp``). The path
    attributes exist only when a storage is attached, as in Freezer.
    """

    increments_data_path: str
    increments_metadata_path: str
    data_prefix_path: str
    engine_metadata_path: str
    metadata_path: str
    data_path: str
    segments_path: str

    def __init__(self, engine: EngineLike, hostname_backup_name: str,
                 level_zero_timestamp: int, timestamp: int, level: int,
                 storage: Storage | None = None) -> None:
        self.hostname_backup_name = validate_name(hostname_backup_name)
        validate_name(engine.name, "engine name")
        self.timestamp = _as_int(timestamp, "timestamp")
        self.level = _as_int(level, "level")
        self.engine = engine
        self.storage = storage
        self.level_zero_timestamp = _as_int(level_zero_timestamp, "level_zero_timestamp")
        if storage is not None:
            level_dir = f"{self.level}_{self.timestamp}"
            self.increments_data_path = path_join(
                storage.storage_path, "data", engine.name,
                self.hostname_backup_name, self.level_zero_timestamp)
            self.increments_metadata_path = path_join(
                storage.storage_path, "metadata", engine.name,
                self.hostname_backup_name, self.level_zero_timestamp)
            self.data_prefix_path = path_join(self.increments_data_path, level_dir)
            self.engine_metadata_path = path_join(self.data_prefix_path, ENGINE_METADATA_NAME)
            self.metadata_path = path_join(self.increments_metadata_path, level_dir, METADATA_NAME)
            self.data_path = path_join(self.data_prefix_path, DATA_NAME)
            self.segments_path = path_join(self.data_prefix_path, "segments")

    def _require_storage(self) -> Storage:
        if self.storage is None:
            raise StorageError(f"{self!r} has no storage attached")
        return self.storage

    def copy(self, storage: Storage) -> Backup:
        """The same level bound to ``storage`` (paths recomputed for it)."""
        return Backup(engine=self.engine, hostname_backup_name=self.hostname_backup_name,
                      level_zero_timestamp=self.level_zero_timestamp,
                      timestamp=self.timestamp, level=self.level, storage=storage)

    def remove(self) -> None:
        """Delete the whole chain: metadata first, so it disappears before its data does."""
        storage = self._require_storage()
        storage.rmtree(self.increments_metadata_path)
        storage.rmtree(self.increments_data_path)

    def get_increments(self) -> dict[int, Backup]:
        """Complete levels of this chain, by level.

        A level counts only if its metadata FILE exists: the metadata is
        written last, so a run that failed after writing data (or after
        creating the level directory) leaves nothing visible. Names not of
        the form ``<int>_<int>`` are ignored. If two complete entries share a
        level, the newest timestamp wins (deterministic, unlike Freezer).
        """
        storage = self._require_storage()
        found = []
        for name in storage.listdir(self.increments_metadata_path):
            parsed = parse_level_dir(name)
            if parsed is None:
                continue
            if METADATA_NAME in storage.listdir(path_join(self.increments_metadata_path, name)):
                found.append(parsed)
        return {level: Backup(engine=self.engine, hostname_backup_name=self.hostname_backup_name,
                              level_zero_timestamp=self.level_zero_timestamp,
                              timestamp=ts, level=level, storage=storage)
                for level, ts in sorted(found)}

    def metadata(self) -> dict[str, Any]:
        """The JSON written by the engine at ``metadata_path``, fetched via ``get_file``."""
        storage = self._require_storage()
        with tempfile.TemporaryDirectory(prefix="rsyncv2-meta-") as tmp:
            local = os.path.join(tmp, METADATA_NAME)
            storage.get_file(self.metadata_path, local)
            with open(local, "rb") as handle:
                raw = handle.read()
        try:
            result = json.loads(raw)
        except ValueError as exc:
            raise FormatError(f"metadata is not JSON: {self.metadata_path}: {exc}") from exc
        if not isinstance(result, dict):
            raise FormatError(f"metadata is not a JSON object: {self.metadata_path}")
        return result

    def __repr__(self) -> str:
        return (f"Backup(engine={self.engine.name!r}, "
                f"hostname_backup_name={self.hostname_backup_name!r}, "
                f"level_zero_timestamp={self.level_zero_timestamp}, "
                f"level={self.level}, timestamp={self.timestamp})")


class _NamedEngine:
    """Stand-in engine when only an engine name is known (``backup_names``)."""

    def __init__(self, name: str) -> None:
        self.name = name
