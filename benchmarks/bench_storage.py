"""Where the benchmark stores backups: a named target the parent and the child processes share.

A target is described to child processes by a JSON-able ``spec``; the child
turns it into a storage object for the engine (``build``).  Only ``local``
and ``s3`` exist.  The S3 target starts an S3-API server (moto) on
127.0.0.1 and adds ``ship``: the cost of sending a reference tool's output
(an rdiff delta, a tar file) to the same place, so the comparison stays
"the same job".
"""

from __future__ import annotations

import os
import shutil
import time
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


class S3Target:
    """Backups in an S3-API server (moto) this benchmark starts on 127.0.0.1."""

    kind = "s3"

    def __init__(self, root: str) -> None:
        # The test suite's server helper: run the benchmark from the checkout.
        from tests.s3server import S3Server
        self.server = S3Server.start()
        self.run = 0
        self.container = ""
        self.reset()

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "container": self.container,
                "endpoint": self.server.endpoint,
                "access_key": self.server.access_key,
                "secret_key": self.server.secret_key}

    def reset(self) -> None:
        """A fresh prefix: the next backups start a new chain."""
        self.run += 1
        self.container = "bench/run%d" % self.run
        self.server.storage(self.container)     # creates the bucket

    def ship(self, path: str) -> float:
        """Seconds to upload a reference tool's output to the same server."""
        start = time.perf_counter()
        storage = build(self.spec(), 8 << 20)
        storage.put_file(path, "%s/ref/%s" % (self.container, os.path.basename(path)))
        return time.perf_counter() - start

    def cleanup(self) -> None:
        self.server.stop()


TARGETS = {"local": LocalTarget, "s3": S3Target}


def build(spec: dict[str, Any], max_segment_size: int) -> Any:
    """The engine's storage for a spec (runs in the child process)."""
    if spec["kind"] == "local":
        from freezer_rsyncv2.storage.local import LocalStorage
        return LocalStorage(spec["path"], max_segment_size=max_segment_size)
    if spec["kind"] == "s3":
        from freezer_rsyncv2.storage import factory
        return factory.build_storage(
            "s3", spec["container"], endpoint=spec["endpoint"],
            access_key=spec["access_key"], secret_key=spec["secret_key"],
            max_segment_size=max_segment_size)
    raise ValueError("unknown storage kind %r" % spec["kind"])
