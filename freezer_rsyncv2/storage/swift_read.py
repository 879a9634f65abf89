"""How SwiftStorage reads objects: whole or a byte range, resumed where a body breaks off.

Reads go through swiftclient's ``get_object`` with ``resp_chunk_size``; a
transient failure while the body streams (swiftclient retries only the
request) closes the body and resumes with a ranged GET from the last byte
received, as long as the object's ETag is unchanged.  Retries are counted
from the last progress, so a long read survives many independent hiccups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from freezer_rsyncv2.errors import Rsyncv2Error, StorageError
from freezer_rsyncv2.storage import retry as retries
from freezer_rsyncv2.storage import transfer
from freezer_rsyncv2.storage.swift_client import SwiftSettings, is_transient, status_of, translate


class SwiftReads:
    """Object reads of ``SwiftStorage`` (which supplies ``container``, ``settings``, ``retry``,
    ``call`` and ``conn``)."""

    container: str
    settings: SwiftSettings
    retry: retries.RetryPolicy
    call: Any
    conn: Any

    def iter_object(self, name: str, chunk_size: int, limit: int | None = None,
                    limit_reason: str = "expected there") -> Iterator[bytes]:
        """Stream object ``name`` in chunks of exactly ``chunk_size`` bytes (the last shorter).

        An object of more than ``limit`` bytes is refused before its body is
        read.  A body that breaks off resumes with a ranged GET from the
        last byte received, as long as the object's ETag is unchanged.
        """
        offset = 0
        size: int | None = None
        etag: str | None = None
        body: Any = None

        def open_body() -> None:
            nonlocal body, etag, size
            headers = {"Range": f"bytes={offset}-"} if offset else None
            head, body = self.call("GET", name, lambda: self.conn().get_object(
                self.container, name, resp_chunk_size=chunk_size, headers=headers))
            tag = head.get("etag")
            if size is None:
                length = head.get("content-length")
                size = int(length) if length is not None else -1
                etag = tag
                if limit is not None and size > limit:
                    raise StorageError(f"{self.container}/{name} holds {size} bytes, more than the "
                                       f"{limit} {limit_reason}")
            elif tag != etag:
                raise StorageError(f"{self.container}/{name} changed while it was read")

        def read_chunk() -> bytes:
            if body is None:
                open_body()
            if size is None or size < 0:        # no Content-Length: read to the body's end
                return transfer.read_exactly(body, chunk_size, None)
            return transfer.read_exactly(body, min(chunk_size, size - offset), lambda: ConnectionError(
                f"body of {self.container}/{name} ended early"))

        def drop_body() -> None:
            nonlocal body
            transfer.close_quietly(body)
            body = None

        try:
            for chunk in self._resuming(name, read_chunk, drop_body):
                offset += len(chunk)
                if limit is not None and offset > limit:
                    raise StorageError(f"{self.container}/{name} holds more than the {limit} {limit_reason}")
                yield chunk
        finally:
            transfer.close_quietly(body)

    def iter_range(self, name: str, chunk_size: int, start: int, stop: int) -> Iterator[bytes]:
        """Stream bytes [start, stop) of object ``name`` (fewer if it ends first), ``chunk_size`` at a time.

        Each GET asks for what is left of the range and nothing more; on a
        Static or Dynamic Large Object Swift then reads only the segments
        the range covers.  A range that starts at or past the object's end
        yields nothing (Swift answers 416); an answer that is not the range
        asked for is a StorageError, not a read of the whole object.
        """
        offset, end = start, stop
        etag: str | None = None
        body: Any = None

        def get() -> tuple[dict[str, str], Any]:
            try:
                answer: tuple[dict[str, str], Any] = self.conn().get_object(
                    self.container, name, resp_chunk_size=chunk_size, headers={"Range": f"bytes={offset}-{end - 1}"})
                return answer
            except Exception as exc:
                if status_of(exc) == 416:
                    return {}, None     # the object ends at or before offset
                raise

        def open_body() -> None:
            nonlocal body, end, etag
            head, body = self.call("GET", name, get)
            if body is None:
                end = offset
                return
            tag = head.get("etag")
            if etag is None:
                etag = tag
            elif tag != etag:
                raise StorageError(f"{self.container}/{name} changed while it was read")
            answered = transfer.range_end(offset, end, head.get("content-range"), head.get("content-length"))
            if answered is None:
                got = head.get("content-range") or "the whole object"
                raise StorageError(f"Swift GET {self.container}/{name} answered the range "
                                   f"bytes={offset}-{end - 1} with {got}")
            end = answered

        def read_chunk() -> bytes:
            if body is None:
                open_body()
            return transfer.read_exactly(body, max(0, min(chunk_size, end - offset)), lambda: ConnectionError(
                f"body of {self.container}/{name} ended early"))

        def drop_body() -> None:
            nonlocal body
            transfer.close_quietly(body)
            body = None

        try:
            for chunk in self._resuming(name, read_chunk, drop_body):
                offset += len(chunk)
                yield chunk
        finally:
            transfer.close_quietly(body)

    def _resuming(self, name: str, read_chunk: Callable[[], bytes],
                  drop_body: Callable[[], None]) -> Iterator[bytes]:
        """``read_chunk()`` until it gives b""; after a transient failure, a backoff, ``drop_body()``
        (the next ``read_chunk`` opens a new one) and another try, ``retry.attempts`` in a row at most."""
        failures = 0
        while True:
            try:
                chunk = read_chunk()
            except Exception as exc:
                if isinstance(exc, Rsyncv2Error) or not is_transient(exc):
                    raise self._translated(exc, "GET", name) from exc
                failures += 1
                if failures >= self.retry.attempts:
                    raise self._translated(exc, "GET", name) from exc
                self.retry.backoff(exc, failures, f"Swift GET {self.container}/{name}")
                drop_body()
                continue
            if not chunk:
                return
            failures = 0
            yield chunk

    def _translated(self, exc: BaseException, operation: str, name: str) -> BaseException:
        if isinstance(exc, Rsyncv2Error):
            return exc
        return translate(exc, operation, f"{self.container}/{name}", self.settings, self.container)
