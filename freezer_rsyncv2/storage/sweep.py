"""The sweep: what interrupted runs of one backup name left in a storage.

A run stopped by a signal removes what it wrote (``Storage.abandon``); a
run that could not (SIGKILL, a power cut, a lost connection) leaves:

* temporary objects: the local storage's hidden ``.<name>.tmp-<uuid>``
  files (a whole level's data, half-written);
* incomplete S3 multipart uploads: billed, and invisible in a listing;
* unfinished levels: a level's ``data`` (and ``engine_metadata``) stored,
  its ``metadata`` never written (killed between the two), so never
  listed nor restored.

``Storage.sweep`` removes those of one backup name that are older than a
safety age (default one day), never one a running backup may still own:
a temporary file or an object is too young if it changed after the cutoff,
an upload if it started or received a part after it, and the local
storage also skips a temporary file that a writer holds locked (``flock``).
Published levels are never touched.  The engine sweeps before every
backup of the name; ``freezer-rsyncv2 cleanup`` sweeps on demand.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from oslo_log import log

from freezer_rsyncv2 import scratch
from freezer_rsyncv2.errors import ConfigError
from freezer_rsyncv2.storage.layout import (
    METADATA_NAME, level_published, parse_chain_dir, parse_level_dir, path_join, validate_name)

if TYPE_CHECKING:
    from freezer_rsyncv2.storage.base import Storage

LOG = log.getLogger(__name__)

#: Seconds a leftover must be older than to be swept, unless told otherwise.
DEFAULT_AGE = 86400.0
#: The environment variable that changes the default (seconds).
AGE_VARIABLE = "FREEZER_RSYNCV2_SWEEP_AGE"


@dataclasses.dataclass
class SweepReport:
    """What a sweep removed, and what it left because it may be in use."""

    temp_objects: int = 0       # temporary files removed
    temp_bytes: int = 0
    uploads: int = 0            # incomplete multipart uploads aborted
    upload_bytes: int = 0       # bytes of their parts
    levels: int = 0             # unfinished levels removed
    level_bytes: int = 0
    scratch_dirs: int = 0       # local scratch directories of killed processes (``scratch.sweep``)
    scratch_bytes: int = 0
    kept: int = 0               # leftovers too young, or in use (locked)
    failed: list[str] = dataclasses.field(default_factory=list)

    @property
    def removed(self) -> int:
        return self.temp_objects + self.uploads + self.levels + self.scratch_dirs

    @property
    def removed_bytes(self) -> int:
        return self.temp_bytes + self.upload_bytes + self.level_bytes + self.scratch_bytes

    def sweep_scratch(self, age: float) -> SweepReport:
        """Add the sweep of this host's scratch directories (``scratch.sweep``)."""
        removed, size, kept = scratch.sweep(age)
        self.scratch_dirs += removed
        self.scratch_bytes += size
        self.kept += kept
        return self

    def __bool__(self) -> bool:
        return bool(self.removed or self.kept or self.failed)


def ours(storage: Any) -> Storage | None:
    """``storage`` if it is one of this library's storages, else None.

    The one place that tells our storages (which have the extras:
    ``sweep``, ``abandon``) from Freezer's (which do not): the engine must
    not call a method a Freezer storage lacks.
    """
    from freezer_rsyncv2.storage.base import Storage
    return storage if isinstance(storage, Storage) else None


def parse_age(value: Any, where: str) -> float:
    """A sweep age in seconds (a number >= 0); ConfigError naming ``where`` otherwise."""
    try:
        age = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a number of seconds, got {value!r}") from None
    if not age >= 0 or age == float("inf"):     # also refuses NaN
        raise ConfigError(f"{where} must be a number of seconds >= 0, got {value!r}")
    return age


def resolve_age(given: Any = None, configured: Any = None,
                environ: Mapping[str, str] | None = None) -> float:
    """The sweep age: ``given`` (command line, engine argument), else
    $FREEZER_RSYNCV2_SWEEP_AGE, else ``configured`` (config file), else a day."""
    if given is not None:
        return parse_age(given, "--sweep-age")
    env = os.environ if environ is None else environ
    text = env.get(AGE_VARIABLE, "").strip()
    if text:
        return parse_age(text, AGE_VARIABLE)
    if configured is not None:
        return parse_age(configured, "sweep_age")
    return DEFAULT_AGE


def roots(storage: Storage, engine: Any, hostname_backup_name: str) -> tuple[str, str]:
    """The data and metadata trees of one backup name."""
    name = validate_name(hostname_backup_name)
    ename = validate_name(engine.name, "engine name")
    return (path_join(storage.storage_path, "data", ename, name),
            path_join(storage.storage_path, "metadata", ename, name))


def level_key(roots: tuple[str, ...], path: str) -> tuple[str, str] | None:
    """(chain, level directory) of a path below one of a name's ``roots``, else None."""
    for root in roots:
        if path.startswith(root + "/"):
            parts = path[len(root) + 1:].split("/")
            if len(parts) >= 2:
                return parts[0], parts[1]
    return None


def sweep(storage: Storage, engine: Any, hostname_backup_name: str, cutoff: float,
          report: SweepReport) -> None:
    """Sweep one backup name's leftovers older than ``cutoff`` (a time)."""
    data_root, meta_root = roots(storage, engine, hostname_backup_name)
    busy = storage.sweep_temporaries((data_root, meta_root), cutoff, report)
    _sweep_unfinished(storage, data_root, meta_root, cutoff, report, busy)


def _sweep_unfinished(storage: Storage, data_root: str, meta_root: str, cutoff: float,
                      report: SweepReport, busy: set[tuple[str, str]]) -> None:
    """Remove levels whose data is stored but whose metadata is not, and empty directories.

    A level of a chain whose level 0 has no metadata is not listed either
    (``remove`` deletes that object first): it goes too, metadata included.

    A directory's age is the timestamp in its name (a level's, or its
    chain's level 0): a running backup's directories carry its start time.
    An object's age is its last change.
    """
    # One listing of the metadata tree instead of a request per level.
    stored = storage.object_paths(meta_root)

    def published(chain: str, level_dir: str) -> bool:
        if stored is not None:
            return f"{chain}/{level_dir}/{METADATA_NAME}" in stored
        return level_published(storage, path_join(meta_root, chain, level_dir, METADATA_NAME))

    for chain, level_dir in _old_level_dirs(storage, data_root, cutoff):
        if level_dir is None:
            storage.remove_empty_dir(path_join(data_root, chain))
            continue
        prefix = path_join(data_root, chain, level_dir)
        orphan = not published(chain, f"0_{chain}")
        if (chain, level_dir) in busy or (published(chain, level_dir) and not orphan):
            continue
        newest, size, count = storage.subtree_info(prefix)
        if newest is not None and newest > cutoff:
            report.kept += 1
            continue
        if count:
            LOG.info("Removing the unfinished level %s (%d bytes, no metadata)", prefix, size)
            report.levels += 1
            report.level_bytes += size
        storage.rmtree(prefix)
        if orphan:
            storage.rmtree(path_join(meta_root, chain, level_dir))
        storage.remove_empty_dir(path_join(meta_root, chain, level_dir))
    for chain, level_dir in _old_level_dirs(storage, meta_root, cutoff):
        chain_meta = path_join(meta_root, chain)
        storage.remove_empty_dir(chain_meta if level_dir is None else path_join(chain_meta, level_dir))


def _old_level_dirs(storage: Storage, root: str, cutoff: float) -> Iterator[tuple[str, str | None]]:
    """(chain, level directory) below ``root`` for each level started at or before ``cutoff``,
    then (chain, None) once a chain's levels are done if the chain itself started by then."""
    for chain in storage.listdir(root):
        chain_ts = parse_chain_dir(chain)
        if chain_ts is None:
            continue
        for level_dir in storage.listdir(path_join(root, chain)):
            parsed = parse_level_dir(level_dir)
            if parsed is not None and parsed[1] <= cutoff:
                yield chain, level_dir
        if chain_ts <= cutoff:
            yield chain, None
