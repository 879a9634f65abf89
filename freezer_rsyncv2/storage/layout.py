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
import time
import threading
import weakref
from typing import TYPE_CHECKING, Any, Protocol

from oslo_log import log

from freezer_rsyncv2 import scratch
from freezer_rsyncv2.errors import ConfigError, FormatError, StorageError

if TYPE_CHECKING:
    from freezer_rsyncv2.storage.base import Storage

LOG = log.getLogger(__name__)

#: Name of the per-level file whose presence makes a level visible.
METADATA_NAME = "metadata"
DATA_NAME = "data"
ENGINE_METADATA_NAME = "engine_metadata"

#: Highest level number a chain may hold.  Restore and verify walk levels
#: 0..top, so a level directory named ``100000000000_<ts>`` must not be able
#: to make them count to 10**11; past this bound the next backup starts a new
#: chain (``Storage.previous_backup``).  10000 is 27 years of daily levels.
MAX_LEVEL = 10_000
#: Highest timestamp of a chain or level: 9999-12-31T23:59:59Z, the last
#: second ``datetime`` can show, so every listed timestamp can be printed.
MAX_TIMESTAMP = 253_402_300_799
#: Freezer's default ``max_segment_size``: the size of the segments Freezer's
#: storages take (Swift stores each as an object); the one definition of it.
DEFAULT_MAX_SEGMENT_SIZE = 32 * 1024 * 1024
#: Largest ``metadata`` object (the level's JSON) we read: ours are < 1 KiB.
MAX_METADATA_SIZE = 1 << 20

# Canonical ASCII decimal integers only: "0012", "+1", " 1" or "١٢" would
# not round-trip through str(int(x)) and would make us build paths that do
# not exist.  [0-9] (not \d) and fullmatch (not $, which allows a final
# newline) keep it exact; the digit counts keep int() cheap.
_INT = r"(?:0|[1-9][0-9]{0,11})"
_CHAIN_RE = re.compile(_INT)
_LEVEL_RE = re.compile(rf"({_INT})_({_INT})")


def now() -> int:
    """The clock levels are stamped and aged with, in int seconds (the one clock: tests replace it)."""
    return int(time.time())


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


def _as_int(value: object, what: str, maximum: int = MAX_TIMESTAMP) -> int:
    """Coerce a timestamp/level to an int in 0..maximum; floats would change the path.

    The bound is the one listings parse names with: a level written past it
    would be invisible once written.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be an int, got {value!r}")
    if isinstance(value, int):
        result = value
    elif isinstance(value, str) and _CHAIN_RE.fullmatch(value):
        result = int(value)
    else:
        raise ConfigError(f"{what} must be a non-negative int, got {value!r}")
    if result < 0:
        raise ConfigError(f"{what} must be non-negative, got {value!r}")
    if result > maximum:
        raise ConfigError(f"{what} must be at most {maximum}, got {value!r}")
    return result


def parse_chain_dir(name: str) -> int | None:
    """The level-0 timestamp a chain directory ``name`` stands for, else None.

    Only canonical ASCII decimals in 0..MAX_TIMESTAMP parse.
    """
    if not isinstance(name, str) or not _CHAIN_RE.fullmatch(name):
        return None
    value = int(name)
    return value if value <= MAX_TIMESTAMP else None


def parse_level_dir(name: str) -> tuple[int, int] | None:
    """Return (level, timestamp) for a ``<level>_<ts>`` directory name, else None.

    Canonical ASCII decimals only, the level in 0..MAX_LEVEL and the
    timestamp in 0..MAX_TIMESTAMP.
    """
    match = _LEVEL_RE.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        return None
    level, timestamp = int(match.group(1)), int(match.group(2))
    if level > MAX_LEVEL or timestamp > MAX_TIMESTAMP:
        return None
    return level, timestamp


# Storage handle -> paths already warned about, so that a listing repeated
# within one run (``list`` lists every chain twice) warns once per name.
_WARNED: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
_WARNED_LOCK = threading.Lock()


def warn_ignored(storage: Any, path: str, why: str) -> None:
    """Log once per storage handle that ``path`` is ignored, and why.

    Names come from the storage, so they are shown with ``repr``: a name
    holding a newline or escape sequences cannot forge log lines.
    """
    with _WARNED_LOCK:
        try:
            seen = _WARNED.setdefault(storage, set())
        except TypeError:       # not weak-referenceable: warn every time
            seen = set()
        if path in seen:
            return
        seen.add(path)
    LOG.warning("Ignoring %r in the storage: %s", path, why)


def level_published(storage: Any, metadata_path: str) -> bool:
    """Whether the level whose ``metadata`` object is ``metadata_path`` is published.

    Our storages answer through ``is_published`` (a regular file, or an
    object, exactly under that name); any other storage (Freezer's) through
    its listing of the level's metadata directory.
    """
    check = getattr(storage, "is_published", None)
    if check is not None:
        return bool(check(metadata_path))
    head, _, name = metadata_path.rpartition("/")
    return name in storage.listdir(head)


def newest_level_timestamps(storage: Any, metadata_dir: str, recent_to_date: int | None) -> dict[int, int]:
    """Level number -> newest timestamp among the published levels listed in ``metadata_dir``
    (a chain's metadata directory), none after ``recent_to_date``."""
    newest: dict[int, int] = {}
    for name in storage.listdir(metadata_dir):
        parsed = parse_level_dir(str(name))
        if parsed is None:
            continue        # not a level (the storage's listing warned)
        level, ts = parsed
        if recent_to_date and ts > recent_to_date:
            continue
        if not level_published(storage, path_join(metadata_dir, name, METADATA_NAME)):
            continue        # no metadata: not a level (docs/storage.rst)
        newest[level] = max(ts, newest.get(level, ts))
    return newest


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
        self.level = _as_int(level, "level", MAX_LEVEL)
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
        """Delete the whole chain: its level 0's ``metadata`` object first (from then on the
        chain is listed nowhere), then the rest of its metadata, then its data."""
        storage = self._require_storage()
        storage.rmtree(path_join(self.increments_metadata_path, f"0_{self.level_zero_timestamp}",
                                 METADATA_NAME))
        storage.rmtree(self.increments_metadata_path)
        storage.rmtree(self.increments_data_path)

    def get_increments(self) -> dict[int, Backup]:
        """Published levels of this chain, by level.

        A level counts only if its metadata object is published (a regular
        file or object, ``level_published``): the metadata is written last,
        so a run that failed after writing data (or after creating the level
        directory) leaves nothing visible.  Names that do not parse
        (``parse_level_dir``) and level-0 entries other than
        ``0_<level_zero_timestamp>`` are ignored with a warning; hidden names
        (temporary files) silently.  If two published entries share a level,
        the newest timestamp wins (deterministic, unlike Freezer).
        """
        storage = self._require_storage()
        found = []
        for name in storage.listdir(self.increments_metadata_path):
            parsed = parse_level_dir(name)
            if parsed is None:
                if not name.startswith("."):
                    warn_ignored(storage, path_join(self.increments_metadata_path, name),
                                 f"not a level directory (<level>_<timestamp>, level 0..{MAX_LEVEL}, "
                                 f"timestamp 0..{MAX_TIMESTAMP}, ASCII digits)")
                continue
            if parsed[0] == 0 and parsed[1] != self.level_zero_timestamp:
                warn_ignored(storage, path_join(self.increments_metadata_path, name),
                             f"a level 0 inside the chain of level 0 {self.level_zero_timestamp}")
                continue
            if level_published(storage, path_join(self.increments_metadata_path, name, METADATA_NAME)):
                found.append(parsed)
        return {level: Backup(engine=self.engine, hostname_backup_name=self.hostname_backup_name,
                              level_zero_timestamp=self.level_zero_timestamp,
                              timestamp=ts, level=level, storage=storage)
                for level, ts in sorted(found)}

    def metadata(self) -> dict[str, Any]:
        """The JSON written by the engine at ``metadata_path``, at most MAX_METADATA_SIZE bytes.

        Read with the storage's ``read_object`` where it has one (ours: the
        bound is checked before anything is read), else fetched with
        ``get_file`` and refused past the bound.
        """
        storage = self._require_storage()
        reader = getattr(storage, "read_object", None)
        if reader is not None:
            raw = reader(self.metadata_path, MAX_METADATA_SIZE)
        else:
            with scratch.directory("meta") as tmp:
                local = os.path.join(tmp, METADATA_NAME)
                storage.get_file(self.metadata_path, local)
                with open(local, "rb") as handle:
                    raw = handle.read(MAX_METADATA_SIZE + 1)
            if len(raw) > MAX_METADATA_SIZE:
                raise StorageError(f"{self.metadata_path} holds more than {MAX_METADATA_SIZE} bytes: "
                                   f"not a level's metadata")
        try:
            result = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise FormatError(f"metadata is not JSON: {self.metadata_path}: {exc}") from exc
        if not isinstance(result, dict):
            raise FormatError(f"metadata is not a JSON object: {self.metadata_path}")
        return result

    def __repr__(self) -> str:
        return (f"Backup(engine={self.engine.name!r}, "
                f"hostname_backup_name={self.hostname_backup_name!r}, "
                f"level_zero_timestamp={self.level_zero_timestamp}, "
                f"level={self.level}, timestamp={self.timestamp})")


class NamedEngine:
    """Stand-in engine when only an engine name is known (``backup_names``)."""

    def __init__(self, name: str) -> None:
        self.name = name
