"""Upload one S3 object from a stream of chunks in bounded memory: one PUT or a multipart upload."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

from oslo_log import log

from freezer_rsyncv2.errors import ConfigError, StorageError
from freezer_rsyncv2.storage import transfer

LOG = log.getLogger(__name__)

T = TypeVar("T")

#: S3's limits: every part but the last must be at least 5 MiB, at most 5 GiB,
#: and an upload has at most 10,000 parts.
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
MAX_PARTS = 10_000

#: The part size doubles after every this many parts, so that an upload of
#: unknown length can reach S3's 5 TiB object limit before its 10,000th part.
PARTS_PER_SIZE_STEP = 1000

#: ``call(operation, fn)`` runs ``fn`` with retries and storage error translation.
Caller = Callable[[str, Callable[[], Any]], Any]


def check_part_size(part_size: int) -> int:
    """Return ``part_size`` if S3 accepts it as a (non-last) part size, else raise ConfigError."""
    if isinstance(part_size, bool) or not isinstance(part_size, int) \
            or not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise ConfigError(f"S3 part size must be an int between {MIN_PART_SIZE} and "
                          f"{MAX_PART_SIZE} bytes, got {part_size!r}")
    return part_size


class ObjectWriter:
    """Write one object chunk by chunk; it appears under its key only on ``close()``.

    Chunks accumulate until they reach the part size. An object that never
    does is stored with one PUT on ``close()``; otherwise a multipart upload
    starts with the first full part, parts are uploaded by up to
    ``concurrency`` background threads while the next part accumulates, and
    ``close()`` completes the upload. Memory is bounded by about
    ``(concurrency + 1) * (part size + largest chunk)``. After any failure
    the caller must call ``abort()``, which discards the parts: S3 shows an
    incomplete multipart upload under no key. With ``content_md5`` every
    body is sent with its Content-MD5, which the server checks.
    """

    def __init__(self, client: Any, bucket: str, key: str, call: Caller,
                 part_size: int, concurrency: int = 2, content_md5: bool = False) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key
        self.part_size = check_part_size(part_size)
        self._call = call
        self._content_md5 = content_md5
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._upload_id: str | None = None
        self._next_part = 1
        self._etags: dict[int, str] = {}
        self._pool = transfer.UploadPool(concurrency, "rsyncv2-s3-part")
        self._closed = False

    @property
    def upload_id(self) -> str | None:
        """Id of the multipart upload once one was started."""
        return self._upload_id

    def threshold(self) -> int:
        """Size at which the pending chunks are sent as the next part."""
        step = min((self._next_part - 1) // PARTS_PER_SIZE_STEP, 16)
        return min(MAX_PART_SIZE, self.part_size << step)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``; send a part when enough is pending (may block on a free slot)."""
        if self._closed:
            raise StorageError(f"write to closed upload of {self.key}")
        if not data:
            return
        if not isinstance(data, bytes):
            data = bytes(data)
        self._pending.append(data)
        self._pending_len += len(data)
        if self._pending_len >= self.threshold():
            self._send_part()

    def close(self) -> None:
        """Store what remains and publish the object under its key."""
        if self._closed:
            return
        self._closed = True
        if self._upload_id is None:
            body = self._take_pending()
            self._call("PutObject", lambda: self.client.put_object(
                Bucket=self.bucket, Key=self.key, Body=body, **self._digest(body)))
            return
        if self._pending_len:
            self._send_part()
        self._etags.update(self._pool.wait())     # raises the first failure of a part
        self._complete()

    def abort(self) -> None:
        """Discard everything sent so far; never raises (failures are logged)."""
        self._closed = True
        self._pending, self._pending_len = [], 0
        self._pool.cancel()
        upload_id = self._upload_id
        if upload_id is None:
            return
        try:
            self._call("AbortMultipartUpload", lambda: self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=upload_id))
        except Exception as exc:  # noqa: BLE001 - the original error matters more
            LOG.warning("Could not abort multipart upload %s of %s/%s (remove it with a "
                        "lifecycle rule or by removing the backup): %s",
                        upload_id, self.bucket, self.key, exc)

    # -- internals ------------------------------------------------------------------

    def _take_pending(self) -> bytes:
        pending = self._pending
        self._pending, self._pending_len = [], 0
        # join() of a single bytes object returns it without copying.
        return b"".join(pending)

    def _send_part(self) -> None:
        body = self._take_pending()
        if len(body) > MAX_PART_SIZE:
            raise StorageError(f"a part of {len(body)} bytes exceeds S3's maximum part size "
                               f"for {self.bucket}/{self.key}: use smaller segments")
        if self._next_part > MAX_PARTS:
            raise StorageError(f"{self.bucket}/{self.key} needs more than {MAX_PARTS} parts")
        if self._upload_id is None:
            response = self._call("CreateMultipartUpload",
                                  lambda: self.client.create_multipart_upload(
                                      Bucket=self.bucket, Key=self.key))
            self._upload_id = str(response["UploadId"])
        number = self._next_part
        self._next_part += 1
        self._pool.submit(self._upload_part, number, body)    # blocks while all slots are busy

    def _upload_part(self, number: int, body: bytes) -> tuple[int, str]:
        upload_id = self._upload_id
        digest = self._digest(body)
        response = self._call("UploadPart", lambda: self.client.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=upload_id, PartNumber=number, Body=body,
            **digest))
        return number, str(response["ETag"])

    def _digest(self, body: bytes) -> dict[str, str]:
        if not self._content_md5:
            return {}
        md5 = hashlib.md5(body, usedforsecurity=False).digest()
        return {"ContentMD5": base64.b64encode(md5).decode("ascii")}

    def _complete(self) -> None:
        parts = [{"PartNumber": n, "ETag": self._etags[n]} for n in sorted(self._etags)]
        upload_id = self._upload_id
        tried: list[bool] = []

        def complete() -> Any:
            try:
                return self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=upload_id,
                    MultipartUpload={"Parts": parts})
            except Exception as exc:
                # A retry after a lost response finds the upload already
                # completed: S3 answers NoSuchUpload and the object exists.
                if tried and _code(exc) == "NoSuchUpload" and self._exists():
                    LOG.info("Upload of %s/%s had completed before the retry",
                             self.bucket, self.key)
                    return None
                raise
            finally:
                tried.append(True)

        self._call("CompleteMultipartUpload", complete)
        LOG.debug("Stored %s/%s in %d parts", self.bucket, self.key, len(parts))

    def _exists(self) -> bool:
        try:
            self._call("HeadObject", lambda: self.client.head_object(
                Bucket=self.bucket, Key=self.key))
        except StorageError:    # missing, or cannot tell: either way not proven
            return False
        return True


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""
