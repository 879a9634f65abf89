"""What freezer-agent gets for ``--engine rsyncv2``: our Rsyncv2Engine, announced in the log."""

# The import hook (freezer_hook) executes this file under the name
# freezer.engine.rsyncv2.rsyncv2; it can also be imported under its own
# name.  Only absolute imports here: the package differs between the two.

from __future__ import annotations

import os
from typing import Any

from oslo_log import log

import freezer_rsyncv2
from freezer_rsyncv2 import freezer_compat

# freezer-agent imports this module once it has built the storage: with
# S3, the botocore clients Freezer built for it (about 12 MB of botocore
# data each) are garbage in reference cycles by now.  Collected and
# trimmed before our engine's modules are imported, their memory is
# reused by those imports instead of staying resident beside them
# (docs/freezer-agent.rst, "Memory").
freezer_compat.release_memory()

from freezer_rsyncv2.engine import rsyncv2 as _engine  # noqa: E402

__all__ = ["Rsyncv2Engine", "IMPLEMENTATION", "VERSION"]

#: What is in use, for logs and diagnostics.
IMPLEMENTATION = "freezer_rsyncv2"
VERSION = freezer_rsyncv2.__version__

LOG = log.getLogger(__name__)


def left_at_default(name: str, conf: Any = None) -> bool:
    """True if freezer-agent's option ``name`` was not given (command line or config file).

    freezer-agent passes every option's value, defaults included; oslo.config
    remembers where a value came from.  Any doubt (option unknown, old
    oslo.config) answers False: the value is then taken as given.
    """
    try:
        if conf is None:
            from oslo_config import cfg
            conf = cfg.CONF
        where = conf.get_location(name)
        default = type(where.location).opt_default
        return where.location is default
    except Exception:
        return False


class Rsyncv2Engine(_engine.Rsyncv2Engine):
    """Our engine as freezer-agent builds it.

    freezer-agent always passes ``rsync_block_size`` (4096 unless told
    otherwise); when the user did not set it, the block size is chosen per
    file by rsync's rule instead of being fixed at 4 KiB.  Freezer's S3
    storage gets working metadata uploads and a checked data upload
    (``freezer_compat``).  A backup or restore starts by trimming the
    heap the agent no longer uses, and a restore reads Freezer's storages
    in small blocks (docs/freezer-agent.rst, "Memory").
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("rsync_block_size") and left_at_default("rsync_block_size"):
            LOG.debug("rsyncv2 engine: --rsync-block-size not given, block "
                      "size chosen per file")
            kwargs["rsync_block_size"] = None
        super().__init__(*args, **kwargs)     # wraps a Freezer storage (storage.foreign)

    def backup(self, *args: Any, **kwargs: Any) -> int:
        freezer_compat.release_memory(collect=False)
        return super().backup(*args, **kwargs)

    def restore(self, *args: Any, **kwargs: Any) -> int:
        freezer_compat.release_memory(collect=False)
        with freezer_compat.small_reads(self.storage):
            return super().restore(*args, **kwargs)


LOG.info("rsyncv2 engine: using %s %s from %s (set FREEZER_RSYNCV2_DISABLE=1 "
         "for Freezer's own rsyncv2 engine)", IMPLEMENTATION, VERSION,
         os.path.dirname(os.path.abspath(freezer_rsyncv2.__file__)))
