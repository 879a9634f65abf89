"""Where the benchmark stores backups: a named target the parent and the child processes share.

A target is described to child processes by a JSON-able ``spec``; the child
turns it into a storage object for the engine (``build``).  Only ``local``
exists today.  An object-store target adds a spec naming its endpoint and
container, a ``build`` branch, and ``ship``: the cost of sending a reference
tool's output (an rdiff delta, a tar file) to the same place, so the
comparison stays "the same job".
"""

from __future__ import annotations

import os
import shutil
from typing import Any


class LocalTarget:
    """Backups in a directory on the same disk as the data (LocalStorage)."""

    kind = "local"

    def __init__(self, root: str) -> None:
        self.root = root

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.root}

    def reset(self) -> None:
        """Start from an empty container."""
        shutil.rmtree(self.root, ignore_errors=True)
        os.makedirs(self.root)

    def ship(self, path: str) -> float:
        """Seconds to put a reference tool's output where backups go: it is there already."""
        return 0.0

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


TARGETS = {"local": LocalTarget}


def build(spec: dict[str, Any], max_segment_size: int) -> Any:
    """The engine's storage for a spec (runs in the child process)."""
    if spec["kind"] == "local":
        from freezer_rsyncv2.storage.local import LocalStorage
        return LocalStorage(spec["path"], max_segment_size=max_segment_size)
    raise ValueError("unknown storage kind %r" % spec["kind"])
