"""The S3 storage's part of the sweep (``storage/sweep.py``): incomplete multipart uploads.

S3 has no temporary objects (an object appears only when its PUT or its
multipart upload completes), but an upload that was neither completed nor
aborted (the process was killed) keeps its parts, billed, and shows in no
object listing.  Under a backup name's prefixes every upload that started
before the cutoff and received no part since is aborted: a running backup
adds a part every few seconds, so its upload is never taken for stale.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

from oslo_log import log

from freezer_rsyncv2.errors import StorageError
from freezer_rsyncv2.storage.sweep import SweepReport, level_key

LOG = log.getLogger(__name__)


def _seconds(when: Any) -> float:
    if isinstance(when, datetime.datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        return float(when.timestamp())
    return float("inf")     # unknown: never stale


class S3Sweep:
    """Sweep hooks of ``S3Storage`` (which supplies ``client``, ``bucket``,
    ``key``, ``call`` and ``_list``)."""

    client: Any
    bucket: str
    key: Any
    call: Any
    _list: Any

    def _uploads(self, prefix: str) -> Iterator[dict[str, Any]]:
        """Incomplete multipart uploads whose key starts with ``prefix``, page by page."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            page = self.call("ListMultipartUploads", prefix,
                             lambda: self.client.list_multipart_uploads(**args))
            yield from page.get("Uploads", [])
            if not page.get("IsTruncated"):
                return
            args["KeyMarker"] = page.get("NextKeyMarker", "")
            args["UploadIdMarker"] = page.get("NextUploadIdMarker", "")

    def _parts(self, key: str, upload_id: str) -> tuple[float | None, int]:
        """(time of the upload's newest part or None, bytes of its parts)."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id}
        newest: float | None = None
        size = 0
        while True:
            page = self.call("ListParts", key, lambda: self.client.list_parts(**args))
            for part in page.get("Parts", []):
                when = _seconds(part.get("LastModified"))
                newest = when if newest is None else max(newest, when)
                size += int(part.get("Size", 0))
            if not page.get("IsTruncated"):
                return newest, size
            args["PartNumberMarker"] = page.get("NextPartNumberMarker", 0)

    def sweep_temporaries(self, roots: tuple[str, ...], cutoff: float,
                          report: SweepReport) -> set[tuple[str, str]]:
        """Abort the stale incomplete multipart uploads under ``roots``."""
        busy: set[tuple[str, str]] = set()
        for root in roots:
            prefix = f"{self.key(root)}/"
            for upload in self._uploads(prefix):
                key, upload_id = upload["Key"], upload["UploadId"]
                level = level_key(roots, f"{self.bucket}/{key}") or ("", "")
                try:
                    if _seconds(upload.get("Initiated")) > cutoff:
                        report.kept += 1
                        busy.add(level)
                        continue
                    newest, size = self._parts(key, upload_id)
                    if newest is not None and newest > cutoff:
                        report.kept += 1
                        busy.add(level)
                        continue
                    self.call("AbortMultipartUpload", key, lambda: (
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=key, UploadId=upload_id)))
                except StorageError as exc:
                    if "NoSuchUpload" in str(exc):
                        continue        # completed or aborted meanwhile
                    report.failed.append(f"{self.bucket}/{key}: {exc}")
                    LOG.warning("Could not abort the incomplete upload of %s/%s: %s",
                                self.bucket, key, exc)
                    busy.add(level)
                    continue
                LOG.info("Aborted the incomplete upload of %s/%s (%d bytes in parts)",
                         self.bucket, key, size)
                report.uploads += 1
                report.upload_bytes += size
        return busy

    def object_paths(self, root: str) -> set[str]:
        """The keys below ``root/``, relative to it."""
        prefix = f"{self.key(root)}/"
        return {obj["Key"][len(prefix):] for obj in self._list(self.key(root), delimiter=False)}

    def subtree_info(self, path: str) -> tuple[float | None, int, int]:
        """Latest LastModified of the objects under ``path/``, their bytes and number."""
        newest: float | None = None
        size = count = 0
        for obj in self._list(self.key(path), delimiter=False):
            when = _seconds(obj.get("LastModified"))
            newest = when if newest is None else max(newest, when)
            size += int(obj.get("Size", 0))
            count += 1
        return newest, size, count
