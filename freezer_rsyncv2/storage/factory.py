"""Build a storage from command-line or configuration values: a local directory, an S3 bucket, Swift."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TypedDict

from freezer_rsyncv2.errors import ConfigError
from freezer_rsyncv2.storage.base import Storage
from freezer_rsyncv2.storage.layout import DEFAULT_MAX_SEGMENT_SIZE

#: Storage kinds, named as freezer-agent's ``--storage`` values.
KINDS = ("local", "s3", "swift")


class S3Settings(TypedDict):
    """Connection settings of an S3Storage, as ``s3_settings`` resolves them."""

    endpoint_url: str | None
    access_key: str | None
    secret_key: str | None
    session_token: str | None
    region: str | None


def _first(*values: str | None) -> str | None:
    for value in values:
        if value:
            return value
    return None


def s3_settings(endpoint: str | None = None, access_key: str | None = None,
                secret_key: str | None = None, region: str | None = None,
                environ: Mapping[str, str] | None = None) -> S3Settings:
    """Explicit S3 settings, completed from the usual AWS environment variables.

    Explicit values win. The endpoint falls back to ``AWS_ENDPOINT_URL_S3``
    then ``AWS_ENDPOINT_URL`` (none means AWS itself); the keys to
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (with
    ``AWS_SESSION_TOKEN``); the region to ``AWS_REGION`` then
    ``AWS_DEFAULT_REGION``. Keys left unset are looked up by botocore's
    credential chain (shared credentials file, instance role, ...).
    """
    env = os.environ if environ is None else environ
    session_token = None
    if not access_key and not secret_key:
        access_key = env.get("AWS_ACCESS_KEY_ID") or None
        secret_key = env.get("AWS_SECRET_ACCESS_KEY") or None
        session_token = env.get("AWS_SESSION_TOKEN") or None
    return S3Settings(
        endpoint_url=_first(endpoint, env.get("AWS_ENDPOINT_URL_S3"),
                            env.get("AWS_ENDPOINT_URL")),
        access_key=access_key or None,
        secret_key=secret_key or None,
        session_token=session_token,
        region=_first(region, env.get("AWS_REGION"), env.get("AWS_DEFAULT_REGION")))


def build_storage(kind: str | None, container: str, *,
                  max_segment_size: int | None = None, skip_prepare: bool = False,
                  endpoint: str | None = None, access_key: str | None = None,
                  secret_key: str | None = None, region: str | None = None,
                  environ: Mapping[str, str] | None = None,
                  os_options: Mapping[str, Any] | None = None, **options: Any) -> Storage:
    """A storage of ``kind`` ('local' when None) on ``container``.

    ``local``: ``container`` is a directory. ``s3``: ``container`` is
    ``BUCKET[/PREFIX]`` and the connection settings come from the arguments
    or the environment (see ``s3_settings``). ``swift``: ``container`` is
    ``NAME[/PREFIX]`` and ``os_options`` (the keyword arguments of
    ``SwiftSettings.from_options``: ``auth_url``, ``username``, ...) are
    completed from the OS_* variables. ``options`` go to the storage class
    as they are (``retry``, ``part_size``, ``segment_size``,
    ``upload_concurrency``, timeouts...). Connection settings given for
    another kind of storage are a ConfigError rather than silently ignored.
    """
    kind = kind or "local"
    if kind not in KINDS:
        raise ConfigError(f"unknown storage {kind!r}: choose one of {', '.join(KINDS)}")
    if not container:
        raise ConfigError(f"--container is required for {kind} storage")
    segment = max_segment_size or DEFAULT_MAX_SEGMENT_SIZE
    s3_given = [name for name, value in (("endpoint", endpoint), ("access key", access_key),
                                         ("secret key", secret_key), ("region", region)) if value]
    os_given = sorted(f"os {name.replace('_', ' ')}" for name, value in (os_options or {}).items()
                      if value not in (None, ""))
    if kind != "s3" and s3_given:
        raise ConfigError(f"{', '.join(s3_given)} only apply to --storage s3")
    if kind != "swift" and os_given:
        raise ConfigError(f"{', '.join(os_given)} only apply to --storage swift")
    if kind == "local":
        if options:
            raise ConfigError(f"{', '.join(sorted(options))} only apply to --storage s3 or swift")
        from freezer_rsyncv2.storage.local import LocalStorage
        return LocalStorage(container, max_segment_size=segment, skip_prepare=skip_prepare)
    if kind == "swift":
        return _swift(container, segment, skip_prepare, os_options or {}, environ, options)
    try:
        from freezer_rsyncv2.storage.s3 import S3Storage
    except ImportError as exc:
        raise ConfigError(f"--storage s3 needs boto3 (pip install boto3): {exc}") from exc
    settings = s3_settings(endpoint, access_key, secret_key, region, environ)
    return S3Storage(container, endpoint_url=settings["endpoint_url"],
                     access_key=settings["access_key"], secret_key=settings["secret_key"],
                     region=settings["region"], session_token=settings["session_token"],
                     max_segment_size=segment, skip_prepare=skip_prepare, **options)


def _swift(container: str, segment: int, skip_prepare: bool, os_options: Mapping[str, Any],
           environ: Mapping[str, str] | None, options: dict[str, Any]) -> Storage:
    try:
        from freezer_rsyncv2.storage.swift import SwiftStorage
        from freezer_rsyncv2.storage.swift_client import SwiftSettings
    except ImportError as exc:
        raise ConfigError(f"--storage swift needs python-swiftclient (pip install "
                          f"python-swiftclient): {exc}") from exc
    settings = SwiftSettings.from_options(environ=environ, **os_options)
    return SwiftStorage(container, settings, max_segment_size=segment, skip_prepare=skip_prepare,
                        **options)
