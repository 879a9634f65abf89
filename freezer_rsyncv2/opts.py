"""oslo.config options of freezer_rsyncv2, with list_opts() for oslo-config-generator.

Options are registered on the ConfigOpts object the caller passes in, never
on a global one at import time.  Names follow freezer-agent's, so a
freezer-agent configuration reads the same here.
"""

from __future__ import annotations

from oslo_config import cfg

from freezer_rsyncv2.rsync import MAX_FIXED_BLOCK, MIN_FIXED_BLOCK
from freezer_rsyncv2.storage.layout import DEFAULT_MAX_SEGMENT_SIZE
from freezer_rsyncv2.stream import compression

GROUP = "rsyncv2"

ENGINE_OPTS = [
    cfg.StrOpt("compression", default="zstd",
               choices=list(compression.NAMES),
               help="Compression of data and manifests. The id is stored "
                    "with each backup; restore reads it from there."),
    cfg.StrOpt("encrypt-pass-file",
               help="File whose first line is the passphrase that "
                    "encrypts the backup."),
    cfg.ListOpt("exclude", default=[],
                help="Glob patterns of paths to leave out (matched against "
                     "the name and the relative path)."),
    cfg.BoolOpt("dereference-symlink", default=False,
                help="Follow symlinks and back up what they point to, "
                     "instead of the links themselves."),
    cfg.IntOpt("max-segment-size", default=DEFAULT_MAX_SEGMENT_SIZE, min=4096,
               help="Largest segment handed to the storage, in bytes."),
    cfg.IntOpt("rsync-block-size", min=MIN_FIXED_BLOCK, max=MAX_FIXED_BLOCK,
               help="Fixed rsync block size in bytes; by default each file "
                    "gets about the square root of its size."),
]

LEVEL_OPTS = [
    cfg.IntOpt("max-level", min=0,
               help="Start a new level 0 after this many levels."),
    cfg.IntOpt("always-level", min=0,
               help="Always back up at this level (a differential "
                    "against the level below)."),
    cfg.FloatOpt("restart-always-level", min=0,
                 help="Start a new level 0 after this many days."),
]


SWEEP_OPTS = [
    cfg.FloatOpt("sweep-age", min=0,
                 help="Seconds after which the leftovers of an interrupted "
                      "run (temporary objects, incomplete S3 uploads, "
                      "levels without metadata) are removed by the next "
                      "backup of the same name or by the cleanup command. "
                      "$FREEZER_RSYNCV2_SWEEP_AGE and --sweep-age override "
                      "it; by default 86400 (a day)."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register every option on ``conf`` in the [rsyncv2] group."""
    conf.register_opts(ENGINE_OPTS + LEVEL_OPTS + SWEEP_OPTS, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Entry point for oslo-config-generator."""
    return [(GROUP, ENGINE_OPTS + LEVEL_OPTS + SWEEP_OPTS)]


def load(config_files: list[str]) -> cfg.ConfigOpts:
    """A ConfigOpts with our options, read from the given config files."""
    conf = cfg.ConfigOpts()
    register_opts(conf)
    conf(args=[], project="freezer-rsyncv2", default_config_files=config_files,
         default_config_dirs=[])
    return conf
