"""Streaming uploads to Swift: segments sent as they fill, joined by a Static Large Object manifest.

An object of at most one segment is one PUT.  A larger one is cut into
segment objects of ``segment_size`` bytes, each uploaded (with its MD5, so
Swift checks it) as soon as it is full, at most ``concurrency`` at a time:
memory holds ``concurrency + 1`` segments.  The manifest, PUT last, makes
the object appear; until then only segments exist, which ``abort`` deletes.
Past ``manifest_limit`` segments (Swift's ``max_manifest_segments``) every
``manifest_limit`` of them are joined by a sub-manifest and the object's
manifest lists those (SLOs nest).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any

from oslo_log import log

from freezer_rsyncv2.errors import ConfigError, StorageError
from freezer_rsyncv2.storage.transfer import UploadPool

LOG = log.getLogger(__name__)

#: Segments Swift accepts in one SLO manifest unless its /info says otherwise.
DEFAULT_MANIFEST_LIMIT = 1000
#: Swift rate-limits reading SLO segments smaller than this (``rate_limit_under_size``).
MIN_SEGMENT_SIZE = 1 << 20
#: Swift's default largest object, hence largest segment.
MAX_SEGMENT_SIZE = 5 << 30

#: ``call(operation, object name, fn)``: run one request, errors translated.
Call = Callable[[str, str, Callable[[], Any]], Any]


def segment_prefix(name: str) -> str:
    """Where the segments of object ``name`` go.

    A level's ``data`` keeps them where Freezer's Swift storage does
    (``<level>/segments/00000000``...); any other object beside it under a
    hidden name (``.<name>.segments/``), which listings skip.
    """
    head, _, tail = name.rpartition("/")
    leaf = "segments" if tail == "data" else f".{tail}.segments"
    return f"{head}/{leaf}" if head else leaf


class SloWriter:
    """Uploads one object from consecutive ``write`` calls; ``close`` publishes it."""

    def __init__(self, conn: Callable[[], Any], call: Call, container: str, name: str, *,
                 segment_size: int, concurrency: int = 2,
                 manifest_limit: int = DEFAULT_MANIFEST_LIMIT) -> None:
        if not 1 <= segment_size <= MAX_SEGMENT_SIZE:
            raise ConfigError(f"Swift segment size must be within 1..{MAX_SEGMENT_SIZE}, got {segment_size!r}")
        if manifest_limit < 2:
            raise ValueError(f"manifest_limit must be >= 2, got {manifest_limit!r}")
        self._conn = conn
        self._call = call
        self.container = container
        self.name = name
        self.prefix = segment_prefix(name)
        self.segment_size = segment_size
        self.manifest_limit = manifest_limit
        self._pool = UploadPool(concurrency, "rsyncv2-swift-segment")
        self._pending = bytearray()
        self._next = 0                                  # number of the next segment
        self._done: dict[int, dict[str, Any]] = {}     # finished segments, by number
        self._groups: list[dict[str, Any]] = []         # sub-manifests written
        self._written: list[str] = []                   # every object this writer stored
        self._written_lock = threading.Lock()
        self._closed = False

    @property
    def segments_written(self) -> list[str]:
        """Names of the segment (and sub-manifest) objects stored so far."""
        with self._written_lock:
            return list(self._written)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``; send each segment once full (may block on a free upload slot)."""
        if self._closed:
            raise StorageError(f"write to a closed upload of {self.container}/{self.name}")
        view = memoryview(data).cast("B")
        while len(view):
            room = self.segment_size - len(self._pending)
            self._pending += view[:room]
            view = view[room:]
            if len(self._pending) >= self.segment_size:
                self._send(bytes(self._pending))
                self._pending = bytearray()

    def close(self) -> None:
        """Publish the object: one PUT, or the last segment then the manifest."""
        if self._closed:
            return
        self._closed = True
        if self._next == 0:
            body = bytes(self._pending)
            self._pending = bytearray()
            md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
            self._call("PUT", self.name, lambda: self._conn().put_object(
                self.container, self.name, body, content_length=len(body), etag=md5,
                content_type="application/octet-stream"))
            return
        if self._pending:
            self._send(bytes(self._pending))
            self._pending = bytearray()
        self._pool.wait()
        self._group_finished(final=True)
        if len(self._groups) > self.manifest_limit:
            raise StorageError(f"{self.container}/{self.name} needs more than {self.manifest_limit} "
                               f"sub-manifests: use a larger segment size")
        top = self._groups[0]["entries"] if "entries" in self._groups[0] else self._groups
        self._put_manifest(self.name, top)
        LOG.debug("Stored %s/%s in %d segments", self.container, self.name, self._next)

    def abort(self) -> None:
        """Stop, and delete every segment stored so far; never raises (failures are logged)."""
        self._closed = True
        self._pending = bytearray()
        self._pool.cancel()
        for name in self.segments_written:
            try:
                self._delete(name)
            except StorageError as exc:
                if "no such object" in str(exc):
                    continue
                LOG.warning("Could not delete segment %s/%s of an aborted upload (the next sweep "
                            "removes it): %s", self.container, name, exc)

    # -- internals ------------------------------------------------------------------

    def _delete(self, name: str) -> None:
        self._call("DELETE", name, lambda: self._conn().delete_object(self.container, name))

    def _send(self, body: bytes) -> None:
        number = self._next
        self._next += 1
        self._pool.submit(self._upload, number, body)      # blocks while every slot is busy
        self._group_finished(final=False)

    def _upload(self, number: int, body: bytes) -> None:
        name = f"{self.prefix}/{number:08d}"
        md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
        with self._written_lock:
            self._written.append(name)
        self._call("PUT", name, lambda: self._conn().put_object(
            self.container, name, body, content_length=len(body), etag=md5,
            content_type="application/octet-stream"))
        self._done[number] = {"path": f"/{self.container}/{name}", "etag": md5, "size_bytes": len(body)}

    def _group_finished(self, final: bool) -> None:
        """Join each complete run of ``manifest_limit`` segments by a sub-manifest.

        At the end (``final``) the rest forms the last group; a single group
        is not written: its entries become the object's own manifest.
        """
        while True:
            first = len(self._groups) * self.manifest_limit
            last = min(first + self.manifest_limit, self._next)
            if first >= self._next or (not final and last - first < self.manifest_limit):
                return
            if any(n not in self._done for n in range(first, last)):
                return
            entries = [self._done.pop(n) for n in range(first, last)]
            if final and not self._groups and last == self._next:
                self._groups.append({"entries": entries})
                return
            name = f"{self.prefix}/index-{len(self._groups):08d}"
            with self._written_lock:
                self._written.append(name)
            self._put_manifest(name, entries)
            self._groups.append({"path": f"/{self.container}/{name}", "etag": None, "size_bytes": None})

    def _put_manifest(self, name: str, entries: list[dict[str, Any]]) -> None:
        body = json.dumps(entries).encode()
        self._call("PUT manifest", name, lambda: self._conn().put_object(
            self.container, name, body, content_length=len(body),
            content_type="application/octet-stream", query_string="multipart-manifest=put"))
