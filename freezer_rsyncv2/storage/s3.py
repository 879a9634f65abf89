"""A Storage on S3 or an S3-compatible object store (Ceph RGW, MinIO, Swift s3api) via botocore."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from botocore import exceptions as boto_errors
from oslo_log import log

from freezer_rsyncv2.errors import BucketNotFoundError, Rsyncv2Error, StorageError
from freezer_rsyncv2.storage import retry as retries
from freezer_rsyncv2.storage import s3_client, transfer
from freezer_rsyncv2.storage.base import Storage, StorageFileNotFoundError
from freezer_rsyncv2.storage.layout import DEFAULT_MAX_SEGMENT_SIZE, Backup
from freezer_rsyncv2.storage.s3_sweep import S3Sweep
from freezer_rsyncv2.storage.s3_upload import ObjectWriter, check_part_size

LOG = log.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PART_SIZE = 8 * 1024 * 1024
DEFAULT_REGION = s3_client.DEFAULT_REGION


class S3Storage(S3Sweep, Storage):
    """Freezer's layout as object keys in one bucket, under an optional prefix.

    ``storage_path`` is the container ``bucket[/prefix]`` (as in Freezer's
    S3 storage): every storage path is ``<bucket>/<key>``, so a level's data
    is the object ``<prefix>/data/<engine>/<name>/<l0>/<level>_<ts>/data``.
    Directories are implicit. An object appears only when fully written (a
    single PUT or a completed multipart upload), so a level's ``metadata``
    object, written last, implies its data is complete. Transient errors are
    retried with backoff per ``retry``; permanent ones raise
    StorageAccessError/BucketNotFoundError naming the bucket and endpoint.
    """

    _type = "s3"

    def __init__(self, container: str, endpoint_url: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None,
                 region: str | None = None,
                 max_segment_size: int = DEFAULT_MAX_SEGMENT_SIZE,
                 skip_prepare: bool = False, *, session_token: str | None = None,
                 create_bucket: bool = True, part_size: int = DEFAULT_PART_SIZE,
                 upload_concurrency: int = 2, retry: retries.RetryPolicy | None = None,
                 connect_timeout: float = 10.0, read_timeout: float = 60.0,
                 list_page_size: int = 1000, verify_tls: bool | str = True) -> None:
        self.bucket, self.prefix = s3_client.split_container(container)
        self.endpoint_url = endpoint_url or None
        self.region = region or DEFAULT_REGION
        self.create_bucket = create_bucket
        self.part_size = check_part_size(part_size)
        self.upload_concurrency = upload_concurrency
        self.retry = retry or retries.RetryPolicy()
        if not isinstance(list_page_size, int) or not 1 <= list_page_size <= 1000:
            raise ValueError(f"list_page_size must be within 1..1000, got {list_page_size!r}")
        self.list_page_size = list_page_size
        self.client = s3_client.make_client(
            endpoint_url=self.endpoint_url, region=self.region, access_key=access_key,
            secret_key=secret_key, session_token=session_token,
            connect_timeout=connect_timeout, read_timeout=read_timeout,
            pool_size=max(10, 4 * upload_concurrency), verify_tls=verify_tls)
        self.content_md5 = s3_client.sends_content_md5(self.client)
        storage_path = "/".join(p for p in (self.bucket, self.prefix) if p)
        super().__init__(storage_path=storage_path, max_segment_size=max_segment_size,
                         skip_prepare=skip_prepare)

    @property
    def where(self) -> str:
        """Endpoint and bucket, for messages."""
        endpoint = self.endpoint_url or f"AWS S3 ({self.region})"
        return f"endpoint {endpoint}, bucket {self.bucket}"

    # -- paths, calls and errors --------------------------------------------------

    def key(self, path: str) -> str:
        """Object key of storage path ``<bucket>/<key>`` ('' for the bucket itself)."""
        bucket, _, key = path.partition("/")
        if bucket != self.bucket:
            raise StorageError(f"path {path!r} is not in bucket {self.bucket!r} ({self.where})")
        return key

    def call(self, operation: str, key: str | None, fn: Callable[[], T],
             on_retry: Callable[[BaseException], None] | None = None) -> T:
        """Run one request with retries; translate its final error into ours."""
        target = f"{self.bucket}/{key}" if key else self.bucket
        try:
            return self.retry.call(fn, what=f"S3 {operation} {target}", on_retry=on_retry)
        except Rsyncv2Error:
            raise
        except Exception as exc:
            raise self.translate(exc, operation, key) from exc

    def translate(self, exc: BaseException, operation: str, key: str | None) -> BaseException:
        """Our error for a botocore error of ``operation`` on ``key``; other errors unchanged."""
        target = f"{self.bucket}/{key}" if key else f"bucket {self.bucket}"
        return s3_client.translate(exc, operation, target, self.bucket, self.where,
                                   self.retry.attempts)

    def writer(self, key: str) -> ObjectWriter:
        """An ObjectWriter for ``key`` using this storage's client, retries and part size."""
        return ObjectWriter(self.client, self.bucket, key,
                            lambda op, fn: self.call(op, key, fn),
                            part_size=self.part_size, concurrency=self.upload_concurrency,
                            content_md5=self.content_md5)

    def iter_object(self, key: str, chunk_size: int, limit: int | None = None,
                    limit_reason: str = "expected there") -> Iterator[bytes]:
        """Stream object ``key`` as chunks of at most ``chunk_size`` bytes, resuming on errors.

        One GET streams the body; if the connection breaks, the read resumes
        with a ranged GET from the last byte received, pinned to the same
        object version by its ETag. Retries are counted from the last
        progress, so a long download survives many independent hiccups.
        An object of more than ``limit`` bytes is refused (StorageError,
        ``limit_reason`` saying whose limit) before its body is read: its
        size is the first response's Content-Length.
        """
        offset = 0
        size = -1
        etag: str | None = None
        body: Any = None

        def open_body() -> None:
            nonlocal body, etag, size
            args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
            if offset:
                args["Range"] = f"bytes={offset}-"
                if etag:
                    args["IfMatch"] = etag
            response = self.client.get_object(**args)
            body = response["Body"]
            if size < 0:
                size = int(response["ContentLength"])
                etag = response.get("ETag")
                if limit is not None and size > limit:
                    raise StorageError(f"{self.bucket}/{key} holds {size} bytes, more than the "
                                       f"{limit} {limit_reason} ({self.where})")

        def read_chunk() -> bytes:
            if body is None:
                open_body()
            # StreamingBody raises IncompleteReadError itself when the server
            # sent less than it announced; an empty read says so too.
            return transfer.read_exactly(body, min(chunk_size, size - offset), lambda: boto_errors.IncompleteReadError(
                actual_bytes=offset, expected_bytes=size))

        def reopen(_exc: BaseException) -> None:
            nonlocal body
            transfer.close_quietly(body)
            body = None

        try:
            while True:
                chunk = self.call("GetObject", key, read_chunk, on_retry=reopen)
                if not chunk:
                    return
                offset += len(chunk)
                yield chunk
        finally:
            transfer.close_quietly(body)

    def iter_range(self, key: str, chunk_size: int, start: int, stop: int) -> Iterator[bytes]:
        """Stream bytes [start, stop) of object ``key`` (fewer if it ends first), ``chunk_size`` at a time.

        Each GET asks for what is left of the range and nothing more; a body
        that breaks off resumes from the last byte received, pinned to the
        object's version by its ETag, with retries counted from the last
        progress (as ``iter_object``).  A range that starts at or past the
        object's end yields nothing (S3 answers 416).  An answer that is not
        the range asked for (a server ignoring Range) is a StorageError, not
        a read of the whole object.
        """
        offset, end = start, stop
        etag: str | None = None
        body: Any = None

        def open_body() -> None:
            nonlocal body, end, etag
            args: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Range": f"bytes={offset}-{end - 1}"}
            if etag:
                args["IfMatch"] = etag
            try:
                response = self.client.get_object(**args)
            except boto_errors.ClientError as exc:
                if retries.http_status(exc) != 416 and retries.error_code(exc) != "InvalidRange":
                    raise
                end = offset        # the object ends at or before offset
                return
            body = response["Body"]
            etag = etag or response.get("ETag")
            answered = transfer.range_end(offset, end, response.get("ContentRange"), response.get("ContentLength"))
            if answered is None:
                got = response.get("ContentRange") or "the whole object"
                raise StorageError(f"S3 GetObject {self.bucket}/{key} answered the range "
                                   f"bytes={offset}-{end - 1} with {got} ({self.where})")
            end = answered

        def read_chunk() -> bytes:
            if body is None:
                open_body()
            wanted = max(0, min(chunk_size, end - offset))
            return transfer.read_exactly(body, wanted, lambda: boto_errors.IncompleteReadError(
                actual_bytes=offset, expected_bytes=end))

        def reopen(_exc: BaseException) -> None:
            nonlocal body
            transfer.close_quietly(body)
            body = None

        try:
            while offset < end:
                chunk = self.call("GetObject", key, read_chunk, on_retry=reopen)
                if not chunk:
                    return
                offset += len(chunk)
                yield chunk
        finally:
            transfer.close_quietly(body)

    # -- primitives -------------------------------------------------------------------

    def prepare(self) -> None:
        """Check the bucket is reachable; create it if missing and ``create_bucket``."""
        try:
            self.call("HeadBucket", None, lambda: self.client.head_bucket(Bucket=self.bucket))
            return
        except BucketNotFoundError:
            if not self.create_bucket:
                raise
        args: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != DEFAULT_REGION:
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.region}

        def create() -> None:
            try:
                self.client.create_bucket(**args)
            except boto_errors.ClientError as exc:
                if retries.error_code(exc) != "BucketAlreadyOwnedByYou":
                    raise

        self.call("CreateBucket", None, create)
        LOG.info("Created S3 bucket %s (%s)", self.bucket, self.where)

    def usage(self) -> tuple[int, int]:
        total = count = 0
        for obj in self._list(self.key(self.storage_path), delimiter=False):
            total += int(obj.get("Size", 0))
            count += 1
        return total, count

    def get_file(self, from_path: str, to_path: str) -> None:
        """Download to a temporary sibling of ``to_path``, renamed into place when complete."""
        transfer.download(self.iter_object(self.key(from_path), self.max_segment_size, self.max_file_size,
                                           "a stored file may hold"), to_path)

    def read_object(self, path: str, limit: int) -> bytes:
        """Object ``path`` in memory; StorageError, before its body is read, past ``limit`` bytes."""
        return b"".join(self.iter_object(self.key(path), max(limit, 1), limit))

    def put_file(self, from_path: str, to_path: str) -> None:
        """Upload a local file (in parts if large); the object appears only once complete."""
        transfer.upload_file(self.writer(self.key(to_path)), from_path, self.part_size)

    def write_backup(self, rich_queue: Any, backup: Backup) -> None:
        """Upload the queue's segments as they come (multipart once past one part).

        On any failure the multipart upload is aborted, the queue is
        force-stopped so the producer does not block, and the error is
        re-raised: no object appears under the data key.
        """
        backup = backup.copy(self)
        writer = self.writer(self.key(backup.data_path))
        with self._writing(rich_queue, backup):     # abandon() can stop it
            transfer.upload_queue(writer, rich_queue)

    def backup_blocks(self, backup: Backup) -> Iterator[bytes]:
        """The level's data, refused before it is read if larger than its metadata declares.

        Shorter data is streamed as it is: the decoder reports the
        truncation, naming the level.
        """
        backup = backup.copy(self)
        key = self.key(backup.data_path)
        declared = self.declared_data_size(backup)
        yield from self.iter_object(key, self.io_block_size, declared,
                                    "its level's metadata declares")

    def _read_range(self, backup: Backup, offset: int, length: int) -> Iterator[bytes]:
        """``read_data``: ranged GETs of the level's data object (one object, multipart or not)."""
        return self.iter_range(self.key(backup.data_path), self.io_block_size, offset, offset + length)

    def listdir(self, path: str) -> list[str]:
        """Sorted names directly under ``path`` (objects and common prefixes)."""
        key = self.key(path)
        prefix = f"{key}/" if key else ""
        names = set()
        for entry in self._list(key, delimiter=True):
            name = entry["Key"][len(prefix):].rstrip("/")
            if name:
                names.add(name)
        return sorted(names)

    def create_dirs(self, path: str) -> None:
        """Nothing to do: object stores have no directories."""

    def rmtree(self, path: str) -> None:
        """Delete every object under ``path/`` and abort unfinished uploads there.

        One DeleteObject per key: the batch DeleteObjects needs a checksum
        header that not every S3-compatible store accepts, and a chain has
        only a few objects per level.
        """
        key = self.key(path)
        keys = [obj["Key"] for obj in self._list(key, delimiter=False)]
        for name in keys:
            self.call("DeleteObject", name, lambda: self.client.delete_object(
                Bucket=self.bucket, Key=name))
        self._abort_uploads(f"{key}/" if key else "")

    def is_published(self, metadata_path: str) -> bool:
        """A level is published by an object under exactly its ``metadata`` key.

        A HEAD request: keys that merely start with ``.../metadata/`` (a
        "directory" in a listing) do not publish it.
        """
        return self.stored_size(metadata_path) is not None

    def stored_size(self, path: str) -> int | None:
        key = self.key(path)
        try:
            head = self.call("HeadObject", key,
                             lambda: self.client.head_object(Bucket=self.bucket, Key=key))
        except StorageFileNotFoundError:
            return None
        return int(head.get("ContentLength", 0))

    # -- internals ------------------------------------------------------------------------

    def _list(self, key: str, delimiter: bool) -> Iterator[dict[str, Any]]:
        """Objects under ``key/`` page by page; with ``delimiter``, also ``{"Key": prefix}``."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": f"{key}/" if key else "",
                                "MaxKeys": self.list_page_size}
        if delimiter:
            args["Delimiter"] = "/"
        while True:
            page = self.call("ListObjectsV2", key, lambda: self.client.list_objects_v2(**args))
            for common in page.get("CommonPrefixes", []):
                yield {"Key": common["Prefix"]}
            yield from page.get("Contents", [])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            args["ContinuationToken"] = token

    def _abort_uploads(self, prefix: str) -> None:
        """Abort multipart uploads left under ``prefix`` by crashed runs (best effort)."""
        try:
            response = self.call("ListMultipartUploads", prefix, lambda: (
                self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)))
            for upload in response.get("Uploads", []):
                key, upload_id = upload["Key"], upload["UploadId"]
                self.call("AbortMultipartUpload", key, lambda: self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id))
        except StorageError as exc:
            LOG.warning("Could not abort unfinished uploads under %s/%s: %s",
                        self.bucket, prefix, exc)
