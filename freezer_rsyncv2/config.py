"""EngineConfig: Freezer's loose constructor keywords turned into one checked object."""

from __future__ import annotations

import dataclasses
from typing import Any

from freezer_rsyncv2 import errors
from freezer_rsyncv2.rsync import MAX_FIXED_BLOCK, MIN_FIXED_BLOCK
from freezer_rsyncv2.storage.layout import DEFAULT_MAX_SEGMENT_SIZE
from freezer_rsyncv2.stream import compression

DEFAULT_SEGMENT = DEFAULT_MAX_SEGMENT_SIZE
MIN_SEGMENT = 4096

# Freezer's --dereference-symlink values, as its tar engine reads them:
# "soft" follows symlinks, "hard" stores hardlinked paths as separate
# files, "all" does both.  Value: (follow symlinks, store hardlinks as copies).
_DEREFERENCE = {None: (False, False), "": (False, False),
                "none": (False, False), "soft": (True, False),
                "hard": (False, True), "all": (True, True),
                True: (True, False), False: (False, False)}


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """What the engine needs to know, validated once at the edge."""

    compression: str = "gzip"
    encrypt_key: str | None = None
    dereference: bool = False
    hardlinks_as_copies: bool = False
    exclude: tuple[str, ...] = ()
    max_segment_size: int = DEFAULT_SEGMENT
    block_size: int | None = None
    dry_run: bool = False

    @classmethod
    def from_kwargs(cls, compression: str | None = "gzip",
                    encrypt_key: str | None = None,
                    symlinks: Any = None,
                    exclude: Any = None,
                    max_segment_size: int | None = None,
                    rsync_block_size: int | None = None,
                    dry_run: bool = False,
                    **_ignored: Any) -> "EngineConfig":
        """Build from freezer-agent's keywords; unknown ones are ignored."""
        codec = compression_name(compression)
        if isinstance(symlinks, str):
            symlinks = symlinks.lower()
        if symlinks not in _DEREFERENCE:
            raise errors.ConfigError(
                f"symlinks must be one of none, soft, hard, all, not {symlinks!r}")
        if isinstance(exclude, str):
            patterns = tuple(p for p in exclude.split(",") if p)
        else:
            patterns = tuple(exclude or ())
        segment = int(max_segment_size or DEFAULT_SEGMENT)
        if segment < MIN_SEGMENT:
            raise errors.ConfigError(
                "max_segment_size must be at least %d bytes, not %d"
                % (MIN_SEGMENT, segment))
        block = int(rsync_block_size) if rsync_block_size else None
        if block is not None and not MIN_FIXED_BLOCK <= block <= MAX_FIXED_BLOCK:
            raise errors.ConfigError(
                f"rsync_block_size must be between {MIN_FIXED_BLOCK} and {MAX_FIXED_BLOCK}, not {block}")
        follow, copies = _DEREFERENCE[symlinks]
        return cls(compression=codec, encrypt_key=encrypt_key or None,
                   dereference=follow, hardlinks_as_copies=copies,
                   exclude=patterns,
                   max_segment_size=segment, block_size=block,
                   dry_run=bool(dry_run))


def compression_name(name: str | None) -> str:
    """Check a compression name; returns its canonical spelling."""
    return compression.by_name(name).name
