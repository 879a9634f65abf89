"""Fixes for Freezer's own storages, applied to the storage object freezer-agent hands our engine.

freezer 19.0.0's S3 storage (``freezer.storage.s3.S3Storage``) has two
faults that touch every backup:

* ``put_file`` passes ``ContentLength=len(f)`` for an open file, which
  raises TypeError, so ``put_metadata`` never writes a level's metadata and
  every ``--storage s3`` backup fails after its data is uploaded;
* ``upload_stream`` (behind ``write_backup``) logs a failed part or
  completion, aborts the multipart upload and returns as if all went well,
  so the level's data can be missing while the agent reports success.

``adapt_storage`` gives that storage object (not the class: other users of
Freezer in the process are left alone) a working ``put_file`` and a
``stored_size``, through which the engine's base class checks, before it
writes any metadata, that the data object holds every byte the engine
produced (``engine.base.BackupEngine._check_stored``).  Freezer itself is
never imported here: a storage is recognised by its class only when
Freezer's module is already loaded, so without Freezer nothing happens.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

from oslo_log import log

from freezer_rsyncv2 import errors
from freezer_rsyncv2.engine import base
from freezer_rsyncv2.storage import retry as retries
from freezer_rsyncv2.storage import s3_client
from freezer_rsyncv2.storage.base import StorageFileNotFoundError
from freezer_rsyncv2.storage.s3_upload import MIN_PART_SIZE

LOG = log.getLogger(__name__)

#: Where Freezer's S3 storage class lives, and its name.
FREEZER_S3_MODULE = "freezer.storage.s3"
FREEZER_S3_CLASS = "S3Storage"


def freezer_s3_class() -> type | None:
    """Freezer's S3Storage class if its module is loaded, else None (never imports it)."""
    module = sys.modules.get(FREEZER_S3_MODULE)
    cls = getattr(module, FREEZER_S3_CLASS, None)
    return cls if isinstance(cls, type) else None


def is_freezer_s3(storage: Any) -> bool:
    """True if ``storage`` is Freezer's S3Storage (or a subclass keeping its ``put_file``)."""
    cls = freezer_s3_class()
    return (cls is not None and isinstance(storage, cls)
            and getattr(type(storage), "put_file", None) is getattr(cls, "put_file", None))


def adapt_storage(storage: Any) -> Any:
    """Fix Freezer's S3 storage objects in ``storage`` in place; returns ``storage``.

    The replacement is applied whenever the object uses Freezer's own
    ``S3Storage.put_file``, whatever Freezer's version: that method has one
    job (a single PUT of a small local file under its storage path) and
    ours does just that, so on a Freezer whose put_file works nothing
    observable changes.  A version check would have to guess which release
    fixes it, and a behaviour probe would need an upload to the user's
    bucket.  A subclass overriding ``put_file``, or an object given its own,
    is left alone.
    """
    for member in base.written_storages(storage):
        if not is_freezer_s3(member) or "put_file" in vars(member):
            continue
        member.put_file = types.MethodType(s3_put_file, member)
        member.stored_size = types.MethodType(s3_stored_size, member)
        LOG.debug("rsyncv2 engine: Freezer's S3 storage on %s: metadata "
                  "uploaded with its size, data checked after upload",
                  getattr(member, "storage_path", "?"))
        segment = getattr(member, "max_segment_size", None)
        if isinstance(segment, int) and 0 < segment < MIN_PART_SIZE:
            LOG.warning(
                "rsyncv2 engine: --max-segment-size %d is below 5 MiB: "
                "Freezer's S3 storage uploads each segment as one part of a "
                "multipart upload, and S3 refuses parts under 5 MiB but the "
                "last, so the backup will fail unless this store accepts "
                "smaller parts; use at least %d", segment, MIN_PART_SIZE)
    return storage


def _bucket_key(path: str) -> tuple[str, str]:
    """``bucket/key`` as Freezer's S3 storage splits its paths."""
    bucket, _sep, key = path.partition("/")
    if not bucket or not key:
        raise errors.StorageError("S3 storage path %r is not BUCKET/KEY" % path)
    return bucket, key


def _where(storage: Any, bucket: str) -> str:
    return "endpoint %s, bucket %s" % (getattr(storage, "endpoint", "") or "AWS S3",
                                       bucket)


def _storage_error(storage: Any, exc: BaseException, operation: str,
                   bucket: str, key: str) -> errors.StorageError:
    """Our error for a failed request (botocore already retried it)."""
    where = _where(storage, bucket)
    err = s3_client.translate(exc, operation, "%s/%s" % (bucket, key), bucket,
                              where, attempts=1)
    if isinstance(err, errors.StorageError):
        return err
    return errors.StorageError("S3 %s %s/%s failed: %s (%s)" % (
        operation, bucket, key, retries.describe(exc), where))


def s3_put_file(storage: Any, from_path: str, to_path: str) -> None:
    """Upload local file ``from_path`` as object ``to_path`` (``bucket/key``), streamed.

    Bound to one Freezer S3Storage object by ``adapt_storage``; the size
    comes from the open file, the client from the storage's own settings.
    """
    bucket, key = _bucket_key(to_path)
    try:
        body = open(from_path, "rb")
    except OSError as exc:
        raise errors.StorageError("cannot read local file %s: %s"
                                  % (from_path, exc.strerror or exc)) from exc
    with body:
        size = os.fstat(body.fileno()).st_size
        try:
            storage.get_s3_connection().put_object(
                Bucket=bucket, Key=key, Body=body, ContentLength=size)
        except Exception as exc:
            raise _storage_error(storage, exc, "PutObject", bucket, key) from exc


def s3_stored_size(storage: Any, path: str) -> int | None:
    """Bytes of object ``path`` (``bucket/key``) on a Freezer S3 storage; None if missing."""
    bucket, key = _bucket_key(path)
    try:
        head = storage.get_s3_connection().head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        err = _storage_error(storage, exc, "HeadObject", bucket, key)
        if isinstance(err, StorageFileNotFoundError):
            return None
        raise err from exc
    return int(head["ContentLength"])
