"""Retention: which chains of a backup may go, and removing them so that none is ever half listed.

A chain goes only as a whole, only when its newest level is older than the
cut-off, and never when it is the newest chain of its backup name (the one
the next backup extends and a restore without a date reads).  Removal
deletes the level-0 ``metadata`` object first: from then on the chain is
not listed, restored or extended (``Storage.get_level_zero`` needs it), so
a run killed midway leaves garbage for the sweep, never a chain that is
listed but broken.  Then the rest of the chain's metadata, then its data.
"""

from __future__ import annotations

import dataclasses

from oslo_log import log

from freezer_rsyncv2.storage.base import Storage
from freezer_rsyncv2.storage.layout import Backup, EngineLike

LOG = log.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Removal:
    """One chain that goes: its backup name, level-0 timestamp, levels, newest level's time, bytes."""

    name: str
    chain: int
    levels: int
    newest: int
    stored_bytes: int


def plan(storage: Storage, engine: EngineLike, names: list[str], cutoff: int) -> list[Removal]:
    """The chains of ``names`` whose newest level is older than ``cutoff``, the newest chain
    of each name excepted; oldest first."""
    removals = []
    for name in names:
        chains = storage.list_chains(engine, name)
        for chain in chains[:-1]:       # oldest first: the last is the newest chain
            newest = max(int(b.timestamp) for b in chain.values())
            if newest >= cutoff:
                continue
            zero = chain[min(chain)]
            removals.append(Removal(name=name, chain=int(zero.level_zero_timestamp), levels=len(chain),
                                    newest=newest,
                                    stored_bytes=sum(storage.level_size(b) for b in chain.values())))
    return removals


def remove(storage: Storage, engine: EngineLike, removal: Removal) -> None:
    """Remove one planned chain (``Backup.remove``: its level-0 metadata first, so the chain is
    gone from every listing at once, then its metadata and data trees)."""
    zero = Backup(engine=engine, hostname_backup_name=removal.name, level_zero_timestamp=removal.chain,
                  timestamp=removal.chain, level=0, storage=storage)
    LOG.info("Removing chain %s of %s (%d levels)", removal.chain, removal.name, removal.levels)
    zero.remove()
