"""The botocore S3 client of S3Storage and how botocore errors map to this library's errors."""

from __future__ import annotations

import os
import threading
from typing import Any

from botocore import exceptions as boto_errors

from freezer_rsyncv2.errors import (BucketNotFoundError, ConfigError, StorageAccessError,
                                    StorageError, StorageUnavailableError)
from freezer_rsyncv2.storage import retry as retries
from freezer_rsyncv2.storage.base import StorageFileNotFoundError

DEFAULT_REGION = "us-east-1"

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_DENIED_CODES = frozenset({
    "AccessDenied", "AllAccessDisabled", "AccountProblem", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidSecurity",
    "InvalidBucketName", "AuthorizationHeaderMalformed", "PermanentRedirect",
})

# Loading botocore's service models takes a noticeable time for every new
# session; sessions share one loader (its cache) but each client still gets a
# fresh session, so credentials and settings come from the environment as it
# is when the storage is created. Clients are thread-safe, creating them is not.
_LOADER_LOCK = threading.Lock()
_LOADER: Any = None


def split_container(container: str) -> tuple[str, str]:
    """``"bucket/some/prefix"`` -> ``("bucket", "some/prefix")``; ConfigError if malformed."""
    if not isinstance(container, str):
        raise ConfigError(f"S3 container must be a string BUCKET[/PREFIX], got {container!r}")
    text = container.strip("/")
    bucket, _, prefix = text.partition("/")
    if not bucket or any(ch.isspace() for ch in text) or "\0" in text:
        raise ConfigError(f"S3 container must be BUCKET[/PREFIX], got {container!r}")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ConfigError(f"S3 container prefix must not have empty, '.' or '..' "
                          f"components, got {container!r}")
    return bucket, prefix


def make_client(endpoint_url: str | None, region: str, access_key: str | None,
                secret_key: str | None, session_token: str | None,
                connect_timeout: float, read_timeout: float, pool_size: int,
                verify_tls: bool | str) -> Any:
    """A botocore S3 client; without keys, botocore's usual credential chain applies.

    For a custom endpoint (an S3-compatible store) the newer botocore
    default of adding CRC32 checksum headers to every upload is turned off
    unless the AWS_REQUEST_CHECKSUM_CALCULATION/AWS_RESPONSE_CHECKSUM_VALIDATION
    variables say otherwise: several stores reject those headers on
    multipart uploads. Uploads then carry a Content-MD5 instead, which
    every S3 implementation verifies (see ``sends_content_md5``).
    """
    global _LOADER
    import botocore.session
    from botocore.config import Config
    if bool(access_key) != bool(secret_key):
        raise ConfigError("give both an S3 access key and a secret key, or neither")
    checksums: dict[str, str] = {}
    if endpoint_url and "request_checksum_calculation" in Config.OPTION_DEFAULTS:
        for option, variable in (("request_checksum_calculation",
                                  "AWS_REQUEST_CHECKSUM_CALCULATION"),
                                 ("response_checksum_validation",
                                  "AWS_RESPONSE_CHECKSUM_VALIDATION")):
            if not os.environ.get(variable):
                checksums[option] = "when_required"
    config = Config(
        region_name=region, signature_version="s3v4",
        # Custom endpoints rarely have wildcard DNS for virtual-host buckets.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        # Our RetryPolicy is the only retry layer, so its settings are exact.
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=connect_timeout, read_timeout=read_timeout,
        max_pool_connections=pool_size, user_agent_extra="freezer-rsyncv2", **checksums)
    try:
        with _LOADER_LOCK:
            session = botocore.session.get_session()
            if _LOADER is None:
                _LOADER = session.get_component("data_loader")
            else:
                session.register_component("data_loader", _LOADER)
            return session.create_client(
                "s3", endpoint_url=endpoint_url, aws_access_key_id=access_key or None,
                aws_secret_access_key=secret_key or None,
                aws_session_token=session_token or None, config=config, verify=verify_tls)
    except ValueError as exc:
        raise ConfigError(f"bad S3 endpoint {endpoint_url!r}: {exc}") from exc
    except boto_errors.BotoCoreError as exc:
        raise ConfigError(f"cannot set up an S3 client for {endpoint_url or region}: "
                          f"{retries.describe(exc)}") from exc


def sends_content_md5(client: Any) -> bool:
    """True unless botocore already adds a checksum header to every upload (its newer default)."""
    mode = getattr(client.meta.config, "request_checksum_calculation", None)
    return mode != "when_supported"


def translate(exc: BaseException, operation: str, target: str, bucket: str, where: str,
              attempts: int) -> BaseException:
    """Our error for botocore error ``exc`` of ``operation`` on ``target``; others unchanged.

    ``where`` names the endpoint and bucket; every message is one line.
    """
    text = retries.describe(exc)
    code, status = retries.error_code(exc), retries.http_status(exc)
    if isinstance(exc, boto_errors.ClientError):
        if code == "NoSuchBucket" or (operation == "HeadBucket" and status == 404):
            return BucketNotFoundError(f"S3 bucket {bucket!r} does not exist ({where})")
        if code in _NOT_FOUND_CODES or (status == 404 and operation in (
                "GetObject", "HeadObject")):
            return StorageFileNotFoundError(target, f"no such object in storage: {target} "
                                            f"({where})")
        if code in _DENIED_CODES or status in (401, 403):
            return StorageAccessError(f"S3 {operation} {target} refused: {text} ({where})")
    if isinstance(exc, (boto_errors.NoCredentialsError, boto_errors.PartialCredentialsError)):
        return StorageAccessError(f"no S3 credentials for {where}: give an access key and a "
                                  f"secret key or set AWS_ACCESS_KEY_ID and "
                                  f"AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, boto_errors.SSLError):
        return StorageAccessError(f"TLS error on S3 {operation} ({where}): {text}")
    if retries.is_transient(exc):
        return StorageUnavailableError(f"S3 {operation} {target} still failing after "
                                       f"{attempts} attempts: {text} ({where})")
    if isinstance(exc, (boto_errors.ClientError, boto_errors.BotoCoreError)):
        return StorageError(f"S3 {operation} {target} failed: {text} ({where})")
    return exc
