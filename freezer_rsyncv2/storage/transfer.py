"""Moving bytes between local files, the engine's queue and an object store, for object storages.

An object storage supplies a writer (``write``, ``close`` publishes the
object, ``abort`` discards what was sent) and a chunk iterator for reads;
these functions add what every such storage does the same way: downloads
that appear under their final name only when complete, uploads that are
aborted on any failure, and a bounded pool of parallel part uploads.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from freezer_rsyncv2.errors import StorageError
from freezer_rsyncv2.storage.localfs import discard, temp_name


class Writer(Protocol):
    """An upload in progress: nothing is visible until ``close``; ``abort`` never raises."""

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


def download(chunks: Iterable[bytes], to_path: str) -> None:
    """Write ``chunks`` to a temporary sibling of ``to_path``, renamed into place when complete.

    On any failure the temporary file goes and an existing ``to_path`` is
    left as it was; a local write error is a StorageError naming the file.
    """
    tmp = temp_name(to_path)
    try:
        with open(tmp, "xb") as out:
            for chunk in chunks:
                out.write(chunk)
        os.replace(tmp, to_path)
    except OSError as exc:
        discard(tmp)
        raise StorageError(f"cannot write {to_path}: {exc}") from exc
    except BaseException:
        discard(tmp)
        raise


def upload_file(writer: Writer, from_path: str, block: int) -> None:
    """Send local file ``from_path`` through ``writer`` in blocks of ``block`` bytes and publish it."""
    try:
        with open(from_path, "rb") as src:
            while data := src.read(block):
                writer.write(data)
        writer.close()
    except OSError as exc:
        writer.abort()
        raise StorageError(f"cannot read local file {from_path}: {exc}") from exc
    except BaseException:
        writer.abort()
        raise


def upload_queue(writer: Writer, rich_queue: Any) -> None:
    """Send the queue's segments (their ``pieces`` where they have them) and publish the object.

    On any failure the upload is aborted, the queue force-stopped so that
    its producer does not block, and the error re-raised.
    """
    try:
        for message in rich_queue.get_messages():
            for piece in getattr(message, "pieces", (message,)):
                writer.write(piece)
        writer.close()
    except BaseException:
        writer.abort()
        stop = getattr(rich_queue, "force_stop", None)
        if stop is not None:
            stop()
        raise


class UploadPool:
    """At most ``size`` uploads at once on worker threads; ``submit`` blocks while all are busy.

    The first failure of an upload is re-raised by the next ``submit``,
    ``collect`` or ``wait``; ``cancel`` drops what has not started and
    waits for the rest.  ``wait`` returns the result of every upload.
    """

    def __init__(self, size: int, name: str) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"upload concurrency must be an int >= 1, got {size!r}")
        self._size = size
        self._name = name
        self._slots = threading.BoundedSemaphore(size)
        self._in_flight: set[concurrent.futures.Future[Any]] = set()
        self._results: list[Any] = []
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=self._size,
                                                                   thread_name_prefix=self._name)
        self._slots.acquire()       # blocks while `size` uploads are in flight
        try:
            self.collect(block=False)
            future = self._executor.submit(fn, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _f: self._slots.release())
        self._in_flight.add(future)

    def collect(self, block: bool) -> None:
        """Note the results of the uploads finished so far (after one finishes, if ``block``)."""
        if block and self._in_flight:
            concurrent.futures.wait(self._in_flight, return_when=concurrent.futures.FIRST_EXCEPTION)
        for future in [f for f in self._in_flight if f.done()]:
            self._in_flight.discard(future)
            self._results.append(future.result())     # raises the upload's error

    def wait(self) -> list[Any]:
        """The results of every upload, once all have finished; then the threads end."""
        while self._in_flight:
            self.collect(block=True)
        self.shutdown()
        return self._results

    def cancel(self) -> None:
        for future in self._in_flight:
            future.cancel()
        if self._in_flight:
            concurrent.futures.wait(self._in_flight)
        self._in_flight.clear()
        self.shutdown()

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def content_range(header: str | None) -> tuple[int, int, int | None] | None:
    """(first, last, total or None for "*") of a ``Content-Range: bytes first-last/total``
    header; None when there is none or it does not read so."""
    if not header:
        return None
    unit, _, spec = header.strip().partition(" ")
    span, _, total = spec.partition("/")
    first, _, last = span.partition("-")
    try:
        if unit.lower() != "bytes" or not 0 <= int(first) <= int(last):
            return None
        return int(first), int(last), None if total.strip() == "*" else int(total)
    except ValueError:
        return None


def read_exactly(body: Any, wanted: int, short: Callable[[], BaseException] | None) -> bytes:
    """``wanted`` bytes of a response body (``body.read``), in as many reads as it takes.

    A body that ends first raises ``short()`` (a transient error: the caller
    resumes from where it broke), or, with ``short`` None (a size not known
    in advance), gives what there was.
    """
    parts: list[bytes] = []
    while wanted:
        data = body.read(wanted)
        if not data:
            if short is not None:
                raise short()
            break
        parts.append(data)
        wanted -= len(data)
    return b"".join(parts)


def range_end(offset: int, end: int, content_range_header: str | None, content_length: Any) -> int | None:
    """Where the bytes a ranged GET ``[offset, end)`` answered with stop, or None when the answer is
    not that range: a ``Content-Range`` from ``offset``, or the whole object from byte 0 (or one
    that ends before ``offset``) from a server that ignored the Range."""
    span = content_range(content_range_header)
    if span is not None and span[0] == offset:
        return min(end, span[1] + 1)
    if span is None and content_length is not None and (offset == 0 or int(content_length) <= offset):
        return min(end, int(content_length))
    return None


def close_quietly(body: Any) -> None:
    """Close a response body that may already be broken."""
    close = getattr(body, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # noqa: BLE001 - closing a broken stream may fail again
            pass
