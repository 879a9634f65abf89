"""A Storage on OpenStack Swift via python-swiftclient, in the object layout of Freezer's Swift storage."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from oslo_log import log

from freezer_rsyncv2.errors import BucketNotFoundError, ConfigError, Rsyncv2Error, StorageError
from freezer_rsyncv2.storage import retry as retries
from freezer_rsyncv2.storage import transfer
from freezer_rsyncv2.storage.base import Storage, StorageFileNotFoundError
from freezer_rsyncv2.storage.layout import DEFAULT_MAX_SEGMENT_SIZE, Backup
from freezer_rsyncv2.storage.swift_client import Connections, SwiftSettings, translate
from freezer_rsyncv2.storage.swift_read import SwiftReads
from freezer_rsyncv2.storage.swift_upload import DEFAULT_MANIFEST_LIMIT, MIN_SEGMENT_SIZE, SloWriter

LOG = log.getLogger(__name__)

T = TypeVar("T")


def split_container(container: str) -> tuple[str, str]:
    """``"name/some/prefix"`` -> ``("name", "some/prefix")``; ConfigError if malformed."""
    if not isinstance(container, str):
        raise ConfigError(f"Swift container must be a string NAME[/PREFIX], got {container!r}")
    text = container.strip("/")
    name, _, prefix = text.partition("/")
    if not name or "\0" in text or "\n" in text or len(name) > 256:
        raise ConfigError(f"Swift container must be NAME[/PREFIX], got {container!r}")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ConfigError(f"Swift container prefix must not have empty, '.' or '..' components, "
                          f"got {container!r}")
    return name, prefix


def _seconds(last_modified: Any) -> float:
    """A listing's ``last_modified`` (ISO 8601, UTC) as a POSIX time; unknown: never stale."""
    try:
        when = datetime.datetime.fromisoformat(str(last_modified).rstrip("Z"))
    except ValueError:
        return float("inf")
    return when.replace(tzinfo=datetime.timezone.utc).timestamp()


class SwiftStorage(SwiftReads, Storage):
    """Freezer's layout as objects of one Swift container, under an optional prefix.

    ``storage_path`` is ``container[/prefix]`` exactly as Freezer's Swift
    storage takes ``--container``; a level's data is the object
    ``<prefix>/data/<engine>/<name>/<l0>/<level>_<ts>/data``, its segments
    ``.../<level>_<ts>/segments/00000000``... (``swift_upload``).  An object
    appears only when complete (its single PUT or its manifest), and a
    level's ``metadata``, written last, publishes it.  Freezer's own levels
    (a Dynamic Large Object manifest over the same segment names) read the
    same way: Swift joins the segments of either kind on GET, and of a
    ranged GET reads only the segments the range covers.  Reads, whole or
    ranged, resume where a body breaks off (``swift_read``).
    """

    _type = "swift"

    def __init__(self, container: str, settings: SwiftSettings,
                 max_segment_size: int = DEFAULT_MAX_SEGMENT_SIZE, skip_prepare: bool = False, *,
                 segment_size: int | None = None, upload_concurrency: int = 2,
                 retry: retries.RetryPolicy | None = None, timeout: float = 60.0,
                 manifest_limit: int | None = None, create_container: bool = True) -> None:
        self.container, self.prefix = split_container(container)
        self.settings = settings
        self.retry = retry or retries.RetryPolicy()
        self.connections = Connections(settings, self.retry, timeout)
        self.segment_size = segment_size or max(max_segment_size, MIN_SEGMENT_SIZE)
        self.upload_concurrency = upload_concurrency
        self.manifest_limit = manifest_limit
        self.create_container = create_container
        storage_path = "/".join(p for p in (self.container, self.prefix) if p)
        super().__init__(storage_path=storage_path, max_segment_size=max_segment_size,
                         skip_prepare=skip_prepare)

    # -- paths, calls and errors --------------------------------------------------

    def name(self, path: str) -> str:
        """Object name of storage path ``<container>/<name>`` ('' for the container itself)."""
        container, _, name = path.partition("/")
        if container != self.container:
            raise StorageError(f"path {path!r} is not in Swift container {self.container!r}")
        return name

    def call(self, operation: str, name: str | None, fn: Callable[[], T]) -> T:
        """Run one request (swiftclient retries transient failures); translate its final error."""
        target = f"{self.container}/{name}" if name else self.container
        try:
            return fn()
        except Rsyncv2Error:
            raise
        except Exception as exc:
            raise translate(exc, operation, target, self.settings, self.container) from exc

    def conn(self) -> Any:
        """This thread's swiftclient connection."""
        return self.connections.get()

    def writer(self, name: str) -> SloWriter:
        """A SloWriter for object ``name`` with this storage's segment size and limits."""
        return SloWriter(self.conn, lambda op, n, fn: self.call(op, n, fn), self.container, name,
                         segment_size=self.segment_size, concurrency=self.upload_concurrency,
                         manifest_limit=self._manifest_limit())

    def _manifest_limit(self) -> int:
        """Segments per manifest: given, else Swift's /info ``slo.max_manifest_segments``."""
        if self.manifest_limit is None:
            try:
                info = self.call("GET /info", None, lambda: self.conn().get_capabilities())
                slo = info.get("slo", {})
                self.manifest_limit = int(slo.get("max_manifest_segments", DEFAULT_MANIFEST_LIMIT))
            except (StorageError, TypeError, ValueError) as exc:
                LOG.debug("Swift /info unreadable (%s); %d segments per manifest", exc,
                          DEFAULT_MANIFEST_LIMIT)
                self.manifest_limit = DEFAULT_MANIFEST_LIMIT
        return self.manifest_limit

    # -- primitives -------------------------------------------------------------------

    def prepare(self) -> None:
        """Log in, check the container exists; create it if missing and ``create_container``."""
        self.connections.login()
        try:
            self.call("HEAD", None, lambda: self.conn().head_container(self.container))
            return
        except BucketNotFoundError:
            if not self.create_container:
                raise
        self.call("PUT", None, lambda: self.conn().put_container(self.container))
        LOG.info("Created Swift container %s", self.container)

    def usage(self) -> tuple[int, int]:
        total = count = 0
        for obj in self._list(self.name(self.storage_path), delimiter=False):
            total += int(obj.get("bytes", 0))
            count += 1
        return total, count

    def get_file(self, from_path: str, to_path: str) -> None:
        """Download to a temporary sibling of ``to_path``, renamed into place when complete."""
        transfer.download(self.iter_object(self.name(from_path), self.max_segment_size, self.max_file_size,
                                           "a stored file may hold"), to_path)

    def read_object(self, path: str, limit: int) -> bytes:
        """Object ``path`` in memory; StorageError, before its body is read, past ``limit`` bytes."""
        return b"".join(self.iter_object(self.name(path), max(limit, 1), limit))

    def put_file(self, from_path: str, to_path: str) -> None:
        """Upload a local file (as an SLO if larger than a segment); it appears once complete."""
        writer = self.writer(self.name(to_path))
        transfer.upload_file(writer, from_path, self.segment_size)
        self._drop_stale_segments(writer)

    def write_backup(self, rich_queue: Any, backup: Backup) -> None:
        """Upload the queue's segments as they come (an SLO once past one segment).

        On any failure the segments stored so far are deleted, the queue is
        force-stopped so the producer does not block, and the error is
        re-raised: no object appears under the data name.
        """
        backup = backup.copy(self)
        writer = self.writer(self.name(backup.data_path))
        with self._writing(rich_queue, backup):     # abandon() can stop it
            transfer.upload_queue(writer, rich_queue)
        self._drop_stale_segments(writer)

    def backup_blocks(self, backup: Backup) -> Iterator[bytes]:
        """The level's data, refused before it is read if larger than its metadata declares."""
        backup = backup.copy(self)
        name = self.name(backup.data_path)
        declared = self.declared_data_size(backup)
        yield from self.iter_object(name, self.io_block_size, declared, "its level's metadata declares")

    def _read_range(self, backup: Backup, offset: int, length: int) -> Iterator[bytes]:
        """``read_data``: ranged GETs of the level's data object (a plain object or an SLO manifest)."""
        return self.iter_range(self.name(backup.data_path), self.io_block_size, offset, offset + length)

    def listdir(self, path: str) -> list[str]:
        """Sorted names directly under ``path`` (objects and pseudo-directories)."""
        name = self.name(path)
        prefix = f"{name}/" if name else ""
        names = set()
        for entry in self._list(name, delimiter=True):
            child = (entry.get("subdir") or entry.get("name", ""))[len(prefix):].rstrip("/")
            if child:
                names.add(child)
        return sorted(names)

    def create_dirs(self, path: str) -> None:
        """Nothing to do: Swift has no directories."""

    def rmtree(self, path: str) -> None:
        """Delete every object under ``path/`` (manifests and their segments alike)."""
        for obj in list(self._list(self.name(path), delimiter=False)):
            self._delete(obj["name"])

    def is_published(self, metadata_path: str) -> bool:
        """A level is published by an object under exactly its ``metadata`` name (a HEAD)."""
        return self.stored_size(metadata_path) is not None

    def stored_size(self, path: str) -> int | None:
        name = self.name(path)
        try:
            head = self.call("HEAD", name, lambda: self.conn().head_object(self.container, name))
        except StorageFileNotFoundError:
            return None
        return int(head.get("content-length", 0))

    # -- the sweep's hooks (storage/sweep.py) ------------------------------------------------
    # An interrupted upload leaves segments under its level and no manifest:
    # the level is unfinished and the sweep removes it whole.

    def object_paths(self, root: str) -> set[str]:
        prefix = f"{self.name(root)}/"
        return {obj["name"][len(prefix):] for obj in self._list(self.name(root), delimiter=False)}

    def subtree_info(self, path: str) -> tuple[float | None, int, int]:
        newest: float | None = None
        size = count = 0
        for obj in self._list(self.name(path), delimiter=False):
            when = _seconds(obj.get("last_modified"))
            newest = when if newest is None else max(newest, when)
            size += int(obj.get("bytes", 0))
            count += 1
        return newest, size, count

    # -- internals ------------------------------------------------------------------------

    def _list(self, name: str, delimiter: bool) -> Iterator[dict[str, Any]]:
        """Listing entries under ``name/`` (all of the container for ''); none if it is missing."""
        prefix = f"{name}/" if name else None
        try:
            _head, entries = self.call("GET", None, lambda: self.conn().get_container(
                self.container, prefix=prefix, delimiter="/" if delimiter else None, full_listing=True))
        except BucketNotFoundError:
            return iter(())
        return iter(entries)

    def _delete(self, name: str) -> None:
        try:
            self.call("DELETE", name, lambda: self.conn().delete_object(self.container, name))
        except StorageFileNotFoundError:
            pass        # gone meanwhile: what we wanted

    def _drop_stale_segments(self, writer: SloWriter) -> None:
        """After replacing an object, delete segments of its previous version the new one does not use."""
        written = writer.segments_written
        if not written:
            return
        keep = set(written)
        for obj in list(self._list(writer.prefix, delimiter=False)):
            if obj["name"] not in keep:
                self._delete(obj["name"])
