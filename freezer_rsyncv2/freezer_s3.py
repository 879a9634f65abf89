"""Freezer's S3 storage, fixed: ``put_file``, ``stored_size``, ``upload_stream`` and a lean client.

``freezer_compat.adapt_storage`` binds these to a Freezer S3Storage object
(never to its class).  freezer 19.0.0's ``put_file`` passes
``ContentLength=len(f)`` for an open file (a TypeError: no level's metadata
is ever written); its ``upload_stream`` logs a failed part and returns as
if all went well, and takes only ``bytes``.  Ours upload spooled segments
as parts, raise on failure, and let the engine check the stored size.  The
client is made once, with less of botocore's data loaded
(docs/freezer-agent.rst, "Memory").
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import re
import threading
from typing import Any

from oslo_log import log

from freezer_rsyncv2 import errors
from freezer_rsyncv2.storage import retry as retries
from freezer_rsyncv2.storage import s3_client
from freezer_rsyncv2.storage.base import StorageFileNotFoundError
from freezer_rsyncv2.storage.s3_upload import MAX_PARTS

LOG = log.getLogger(__name__)


#: The settings Freezer's ``get_s3_connection`` makes its client from.
FREEZER_S3_SETTINGS = ("access_key", "secret_key", "endpoint")


def cached_client(storage: Any, original: Any = None) -> Any:
    """``get_s3_connection`` returning one client, made at first use.

    Freezer's builds a new botocore session and client for every request
    (about 12 MB of botocore data each, freed only by the cyclic garbage
    collector); botocore clients are thread-safe, so one serves the
    engine, the storage thread and Freezer's own calls.  It is made as
    Freezer's (a new session, the storage's keys and endpoint, settings
    from the environment) but from trimmed botocore data
    (``lean_client``); a storage without those settings (not the Freezer
    we know) gets one from ``original`` (Freezer's unbound method, when
    its class's was replaced: ``freezer_compat.adapt_s3_module``) or else
    from its own method.
    """
    if original is not None:
        make = functools.partial(original, storage)
    else:
        make = storage.get_s3_connection
    if all(hasattr(storage, name) for name in FREEZER_S3_SETTINGS):
        make = functools.partial(lean_client, *(
            getattr(storage, name) for name in FREEZER_S3_SETTINGS))
    lock = threading.Lock()
    client: list[Any] = []

    def get_s3_connection() -> Any:
        with lock:
            if not client:
                client.append(make())
            return client[0]
    return get_s3_connection


#: The only service whose entry an S3 client reads in botocore's endpoint
#: data (``endpoints.json``: every AWS service in every partition).
S3_SERVICE = "s3"


def lean_client(access_key: Any, secret_key: Any, endpoint: Any) -> Any:
    """A botocore S3 client as Freezer's ``get_s3_connection`` makes it, holding less.

    A client keeps what its session loaded: botocore's endpoint data for
    every AWS service (about 7 MB of Python objects) and the S3 service
    model with its documentation (about 3.4 MB).  This one's session
    loads them through ``lean_loader``: the endpoint data of S3 alone and
    the model without documentation (which only docstrings read), as
    plain dicts, so the client holds about 2.8 MB instead of 12.4; what
    it drops is dropped as it is parsed, so making it peaks about 6 MB
    above where it started, not 9 (docs/freezer-agent.rst, "Memory").
    """
    import botocore.session
    session = botocore.session.Session()
    session.register_component("data_loader", lean_loader(session))
    return session.create_client(
        "s3", aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        endpoint_url=endpoint)


def lean_loader(session: Any) -> Any:
    """The botocore data loader ``session`` would make, its files read by ``load_data_file``."""
    from botocore import loaders

    class LeanFileLoader(loaders.JSONFileLoader):
        def load_file(self, file_path: str) -> Any:
            return load_data_file(file_path)

    loader = loaders.create_loader(session.get_config_variable("data_path"))
    loader.file_loader = LeanFileLoader()
    return loader


#: How botocore's data files are stored: plain or gzipped JSON.
DATA_FILE_EXTENSIONS = ((".json", None), (".json.gz", gzip.decompress))

#: Where an S3 client's one entry sits in botocore's endpoint data:
#: ``partitions``, each of its items, their ``services`` (keep only S3).
ENDPOINTS_PATH = ("partitions", "*", "services", (S3_SERVICE,))


def load_data_file(file_path: str) -> Any:
    """Botocore data file ``file_path`` (no extension) as plain dicts, trimmed; None if absent.

    Botocore parses its files into OrderedDicts, which take about half
    as much memory again as dicts (ordered too); nothing in botocore
    needs more of them than a mapping.  The files are read whole and
    parsed as they are trimmed, so what an S3 client never reads is
    never held all at once (``parse_data``).
    """
    for extension, decompress in DATA_FILE_EXTENSIONS:
        if os.path.isfile(file_path + extension):
            return parse_data(file_path, _read_text(file_path + extension, decompress))
    return None


def _read_text(path: str, decompress: Any) -> str:
    with open(path, "rb") as data:
        raw = data.read()
    if decompress is not None:
        raw = decompress(raw)
    return raw.decode(json.detect_encoding(raw), "surrogatepass")


def parse_data(file_path: str, text: str) -> Any:
    """Botocore data file ``file_path`` (no extension), its JSON ``text``, as ``trim_data`` leaves it.

    The endpoint data (1.2 MB of JSON: every AWS service in every
    partition) is parsed one service entry at a time, each dropped at
    once unless it is S3's, instead of being built whole (about 5 MB of
    objects) and then trimmed; a service model drops the description of
    each of its objects as it is parsed.  Either way the result is
    ``trim_data``'s; endpoint data of another layout is parsed whole.
    """
    name = os.path.basename(file_path)
    if name == "endpoints":
        try:
            data, end = parse_only(text, 0, ENDPOINTS_PATH)
            if not text[end:].strip(" \t\n\r"):
                return data
        except (ValueError, IndexError):
            pass        # not the layout we know: parsed whole, then trimmed
    hook = _without_descriptions if name == "service-2" else None
    return trim_data(file_path, json.loads(text, object_pairs_hook=hook))


_JSON = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


def _skip(text: str, index: int) -> int:
    """Past the JSON white space at ``index``."""
    space = _SPACE.match(text, index)
    return space.end() if space else index


def parse_only(text: str, index: int, path: tuple[Any, ...]) -> tuple[Any, int]:
    """The JSON value at ``text[index:]`` with only what ``path`` keeps, and where it ends.

    ``path`` is the way down: a key of an object (its other members are
    parsed whole), ``"*"`` for every item of an array, and last a tuple
    of the keys to keep of the object found there (its other members are
    parsed and dropped one at a time).  A value of another type than
    ``path`` expects is parsed whole.  Malformed JSON raises ValueError
    or IndexError (cut short).
    """
    index = _skip(text, index)
    if not path:
        return _JSON.raw_decode(text, index)
    step, rest = path[0], path[1:]
    if text[index] == "[" and step == "*":
        items: list[Any] = []
        index, done = _first_item(text, index, "]")
        while not done:
            item, index = parse_only(text, index, rest)
            items.append(item)
            index, done = _next_item(text, index, "]")
        return items, index
    if text[index] == "{" and step != "*":
        members: dict[str, Any] = {}
        index, done = _first_item(text, index, "}")
        while not done:
            key, index = _JSON.raw_decode(text, index)
            index = _skip(text, index)
            if not isinstance(key, str) or text[index] != ":":
                raise ValueError(f"JSON object key expected at {index}")
            if isinstance(step, tuple):
                value, index = _JSON.raw_decode(text, _skip(text, index + 1))
                if key in step:
                    members[key] = value
                del value       # a member not kept goes now
            else:
                members[key], index = parse_only(text, index + 1, rest if key == step else ())
            index, done = _next_item(text, index, "}")
        return members, index
    return _JSON.raw_decode(text, index)


def _first_item(text: str, index: int, close: str) -> tuple[int, bool]:
    """Past the opening bracket at ``index``: where the first item starts, or the end if empty."""
    index = _skip(text, index + 1)
    if text[index] == close:
        return index + 1, True
    return index, False


def _next_item(text: str, index: int, close: str) -> tuple[int, bool]:
    """After an item: where the next one starts, or the end of the container."""
    index = _skip(text, index)
    if text[index] == ",":
        return _skip(text, index + 1), False
    if text[index] == close:
        return index + 1, True
    raise ValueError(f"JSON ',' or {close!r} expected at {index}")


def _without_descriptions(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A service model's JSON object without its description, as it is parsed.

    An object of ``type`` and ``documentation`` alone keeps it: a client
    context parameter needs its description (a scalar shape then loses
    its own in ``trim_data``).
    """
    members = dict(pairs)
    if isinstance(members.get("documentation"), str) \
            and not members.keys() <= {"documentation", "type"}:
        del members["documentation"]
    return members


def trim_data(file_path: str, data: Any) -> Any:
    """Botocore data file ``file_path`` (no extension) without what an S3 client never reads.

    ``endpoints``: each partition keeps its own settings and the S3
    entry of its services.  ``service-2`` (a service model): the
    descriptions of the service, its operations, its shapes and their
    members go (botocore reads them only for docstrings); the other
    ``documentation`` fields (client context parameters need theirs)
    stay.  Anything else is returned as loaded.
    """
    name = os.path.basename(file_path)
    if name == "endpoints" and isinstance(data, dict):
        for partition in data.get("partitions") or ():
            services = partition.get("services") if isinstance(partition, dict) else None
            if isinstance(services, dict):
                partition["services"] = {
                    key: value for key, value in services.items() if key == S3_SERVICE}
    elif name == "service-2" and isinstance(data, dict):
        _drop_description(data)
        for operation in _values(data.get("operations")):
            _drop_description(operation)
        for shape in _values(data.get("shapes")):
            _drop_description(shape)
            members = shape.get("members") if isinstance(shape, dict) else None
            for member in _values(members):
                _drop_description(member)
    return data


def _values(mapping: Any) -> Any:
    return mapping.values() if isinstance(mapping, dict) else ()


def _drop_description(node: Any) -> None:
    if isinstance(node, dict) and isinstance(node.get("documentation"), str):
        del node["documentation"]


def _bucket_key(path: str) -> tuple[str, str]:
    """``bucket/key`` as Freezer's S3 storage splits its paths."""
    bucket, _sep, key = path.partition("/")
    if not bucket or not key:
        raise errors.StorageError(f"S3 storage path {path!r} is not BUCKET/KEY")
    return bucket, key


def _where(storage: Any, bucket: str) -> str:
    return f"endpoint {getattr(storage, 'endpoint', '') or 'AWS S3'}, bucket {bucket}"


def _storage_error(storage: Any, exc: BaseException, operation: str,
                   bucket: str, key: str) -> errors.StorageError:
    """Our error for a failed request (botocore already retried it)."""
    where = _where(storage, bucket)
    err = s3_client.translate(exc, operation, f"{bucket}/{key}", bucket,
                              where, attempts=1)
    if isinstance(err, errors.StorageError):
        return err
    return errors.StorageError(f"S3 {operation} {bucket}/{key} failed: {retries.describe(exc)} ({where})")


def s3_put_file(storage: Any, from_path: str, to_path: str) -> None:
    """Upload local file ``from_path`` as object ``to_path`` (``bucket/key``), streamed.

    Bound to one Freezer S3Storage object by ``adapt_storage``; the size
    comes from the open file, the client from the storage's own settings.
    """
    bucket, key = _bucket_key(to_path)
    try:
        body = open(from_path, "rb")
    except OSError as exc:
        raise errors.StorageError(f"cannot read local file {from_path}: {exc.strerror or exc}") from exc
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


def s3_upload_stream(storage: Any, key: str, stream: Any) -> None:
    """Upload the messages of ``stream`` as the parts of object ``key``.

    Bound to a Freezer S3Storage object in place of its ``upload_stream``
    (Freezer's ``write_backup`` calls it with the object key, without the
    bucket).  A message is a spooled segment (read like a file, so it is
    never in memory whole) or bytes.  On any failure the multipart upload
    is aborted and the error raised: Freezer's logs it and returns.
    """
    bucket = storage.get_bucket_name()
    client = storage.get_s3_connection()
    try:
        upload_id = client.create_multipart_upload(
            Bucket=bucket, Key=key)["UploadId"]
    except Exception as exc:
        raise _storage_error(storage, exc, "CreateMultipartUpload", bucket,
                             key) from exc
    parts: list[dict[str, Any]] = []
    operation = "UploadPart"
    try:
        for number, message in enumerate(stream, 1):
            if number > MAX_PARTS:
                raise errors.StorageError(
                    "S3 upload %s/%s: more than %d parts; use a larger "
                    "--max-segment-size" % (bucket, key, MAX_PARTS))
            reply = client.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id,
                PartNumber=number, Body=message, ContentLength=len(message))
            parts.append({"PartNumber": number, "ETag": reply["ETag"]})
            close = getattr(message, "close", None)
            if close is not None:
                close()         # a spooled segment's file goes now
            del message
        if not parts:
            raise errors.StorageError(f"S3 upload {bucket}/{key}: no data")
        operation = "CompleteMultipartUpload"
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id,
            MultipartUpload={"Parts": parts})
    except BaseException as exc:
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=key,
                                          UploadId=upload_id)
        except Exception as abort_exc:   # the first error is the one to tell
            LOG.warning("S3 upload %s/%s: abort failed: %s", bucket, key,
                        retries.describe(abort_exc))
        if isinstance(exc, Exception) and not isinstance(exc, errors.Rsyncv2Error):
            raise _storage_error(storage, exc, operation, bucket, key) from exc
        raise
