"""The writing side of a stream: records into frames, frames into storage segments.

``StreamEncoder`` turns record bytes into the header and frames of
``frames.FrameWriter`` (compressing on helper threads, ending frames between
records' pieces).  The resulting pieces reach a storage in one of the
forms of ``MESSAGE_FORMS`` (``messages``): ``segments`` groups them into
segments held as pieces (our storages), ``chunks`` passes them on as a
stream of small messages (storages that append every message to one
object), ``spooled_segments`` gathers each segment in a temporary file
instead of memory (storages that store one object or part per message).
"""

from __future__ import annotations

import collections
import os
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Iterable, Iterator
from typing import IO, Any

from freezer_rsyncv2.stream import compression, frames
from freezer_rsyncv2.stream.compression import Piece

_SMALL = 16 << 10              # record bytes below this are coalesced
_COMPRESS_THREADS = min(4, os.cpu_count() or 1)
_AHEAD = _COMPRESS_THREADS     # frames being compressed ahead of sealing
_codecs = threading.local()     # codec objects are not all thread-safe


def _compress(codec_id: int, plain: bytes) -> bytes:
    """Compress one frame's plaintext with this thread's codec object."""
    codec = getattr(_codecs, f"c{codec_id}", None)
    if codec is None:
        codec = compression.by_id(codec_id)
        setattr(_codecs, f"c{codec_id}", codec)
    return codec.compress(plain)


class StreamEncoder:
    """Collects record bytes and yields the stream's bytes, frame by frame.

    ``write``/``close`` yield each frame as bytes; ``write_many``/
    ``close_many`` take and yield pieces (bytes-like, never changed
    afterwards), which travel uncopied when the stream is neither
    compressed nor encrypted.  Compression runs on helper threads (zlib,
    bz2, lzma and zstd release the GIL) a few frames ahead of sealing,
    which stays in order on the caller's thread.
    """

    def __init__(self, kind: int, codec: compression.Codec, cipher: frames.Cipher | None = None) -> None:
        self._writer = frames.FrameWriter(kind, codec, cipher)
        self._buf = bytearray()         # small pieces being coalesced
        self._pieces: collections.deque[Piece] = collections.deque()
        self._size = 0                  # bytes in _pieces
        self._started = False
        self._inflight: collections.deque[tuple[Future[bytes], int, bool]] = collections.deque()
        self._pool = None if type(codec) is compression.NoCompression \
            else ThreadPoolExecutor(_COMPRESS_THREADS, "rsyncv2-zip")

    @property
    def table(self) -> frames.FrameTable:
        """Where the frames written so far lie (complete once ``close`` is consumed)."""
        return self._writer.table

    def write(self, data: bytes) -> Iterator[bytes]:
        return (b"".join(frame) for frame in self._frames((data,)))

    def close(self) -> Iterator[bytes]:
        return (b"".join(frame) for frame in self._frames((), final=True))

    def write_many(self, pieces: Iterable[Piece]) -> Iterator[Piece]:
        return (p for frame in self._frames(pieces) for p in frame)

    def close_many(self) -> Iterator[Piece]:
        return (p for frame in self._frames((), final=True) for p in frame)

    def _frames(self, pieces: Iterable[Piece], final: bool = False) -> Iterator[list[Piece]]:
        if not self._started:
            self._started = True
            yield [self._writer.header()]
        for piece in pieces:
            if len(piece) < _SMALL:
                self._buf += piece      # coalesce small records
                if len(self._buf) < _SMALL:
                    continue
                piece = b""
            self._take(piece)
            while self._size >= frames.FRAME_PLAIN:
                yield from self._frame(False)
        if final:
            self._take(b"")
            while self._size >= frames.FRAME_PLAIN:
                yield from self._frame(False)
            yield from self._frame(True)
            if self._pool is not None:
                self._pool.shutdown(wait=False)

    def _take(self, piece: Piece) -> None:     # coalesced small pieces first
        if self._buf:
            self._pieces.append(bytes(self._buf))
            self._size += len(self._buf)
            self._buf.clear()
        if len(piece):
            self._pieces.append(piece)
            self._size += len(piece)

    def _frame(self, final: bool) -> Iterator[list[Piece]]:
        """Make the next frame: whole pending pieces up to FRAME_PLAIN bytes
        or just past it (all of them if ``final``: fewer than FRAME_PLAIN);
        yield the frames (as lists of pieces) that are ready."""
        out: list[Piece] = []
        got = 0
        while self._pieces and (final or got < frames.FRAME_PLAIN):
            piece = self._pieces.popleft()
            n = len(piece)
            if n > frames.FRAME_PLAIN or got + n > 2 * frames.FRAME_PLAIN:
                cut = frames.FRAME_PLAIN - got
                view = memoryview(piece)
                self._pieces.appendleft(view[cut:])
                piece, n = view[:cut], cut
            out.append(piece)
            got += n
        size = got
        self._size -= size
        if self._pool is None:
            yield self._writer.frame_pieces(out, size, final)
            return
        self._inflight.append((self._pool.submit(_compress, self._writer.codec.id, b"".join(out)), size, final))
        while self._inflight and (final or len(self._inflight) > _AHEAD):
            future, plain_len, last = self._inflight.popleft()
            yield self._writer.seal_pieces(future.result(), plain_len, last)


class Segment:
    """One storage segment as the byte pieces it is made of, not joined.

    ``len()`` is its size in bytes and ``bytes()`` joins it.  A storage that
    writes pieces (``os.writev``) stores it without a copy; storages that
    need one bytes object get ``bytes(segment)`` from ``BackupEngine``
    (``Storage.takes_segments``).  The pieces are never changed.
    """

    __slots__ = ("pieces", "size")

    def __init__(self, pieces: list[Piece], size: int) -> None:
        self.pieces = pieces
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return b"".join(self.pieces)


#: How a storage takes the level's bytes (``Storage.message_form``).
PIECES = "pieces"        # encoder.Segment objects (our storages: writev)
STREAM = "stream"        # bytes messages of at most CHUNK bytes, in order
FILES = "files"          # SpooledSegment objects: one per object or part
BYTES = "bytes"          # one bytes object per segment (any other storage)
MESSAGE_FORMS = (PIECES, STREAM, FILES, BYTES)

#: Largest message of the STREAM form.
CHUNK = 1 << 20


def messages(pieces: Iterable[Piece], form: str, max_size: int) -> Iterator[Any]:
    """The stream's pieces as a storage of the given form takes them.

    Memory held here: a segment's pieces (PIECES), a segment joined
    (BYTES), at most CHUNK bytes (STREAM), or one piece (FILES: the
    segment is in a temporary file).
    """
    if form == STREAM:
        return chunks(pieces, CHUNK)
    if form == FILES:
        return spooled_segments(pieces, max_size)
    if form == PIECES:
        return segments(pieces, max_size)
    if form == BYTES:
        return (bytes(s) for s in segments(pieces, max_size))
    raise ValueError(f"unknown storage message form {form!r}")


def chunks(pieces: Iterable[Piece], size: int = CHUNK) -> Iterator[Piece]:
    """The pieces as messages of at most ``size`` bytes, in order.

    Small pieces (frame heads, small frames) are joined; a piece of
    ``size`` or more goes on uncopied, in ``size`` views.
    """
    if size <= 0:
        raise ValueError("chunk size must be positive")
    buf = bytearray()
    for piece in pieces:
        n = len(piece)
        if len(buf) + n <= size:
            buf += piece
            if len(buf) == size:
                yield bytes(buf)
                buf.clear()
            continue
        if buf:
            yield bytes(buf)
            buf.clear()
        view = memoryview(piece)
        while n >= size:
            yield view[:size]
            view, n = view[size:], n - size
        if n:
            buf += view
    if buf:
        yield bytes(buf)


class SpooledSegment:
    """One segment kept in an unnamed temporary file, read like a file.

    Its bytes never sit in memory: ``read``/``readinto`` copy from the
    file (page cache), ``seek``/``tell`` let an HTTP client rewind it for
    a retry, ``len()`` is its size.  The file goes when the segment is
    closed or garbage collected (it has no name on disk).
    """

    def __init__(self, file: IO[bytes], size: int) -> None:
        self._file = file
        self.size = size
        self._pos = 0

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return True

    def __bytes__(self) -> bytes:
        return os.pread(self._file.fileno(), self.size, 0)

    def read(self, n: int = -1) -> bytes:
        left = self.size - self._pos
        if n is None or n < 0 or n > left:
            n = left
        if n <= 0:
            return b""
        data = os.pread(self._file.fileno(), n, self._pos)
        self._pos += len(data)
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        view = memoryview(buf).cast("B")
        n = min(len(view), self.size - self._pos)
        if n <= 0:
            return 0
        got = os.preadv(self._file.fileno(), [view[:n]], self._pos)
        self._pos += got
        return got

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The segment's bytes in pieces of at most ``size``, from the start."""
        for offset in range(0, self.size, size):
            yield os.pread(self._file.fileno(), min(size, self.size - offset), offset)

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "SpooledSegment":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spooled_segments(pieces: Iterable[Piece], max_size: int, directory: str | None = None) -> Iterator[SpooledSegment]:
    """Regroup byte pieces into segments of exactly max_size (last shorter),
    each written to its own temporary file as the pieces come.

    A segment is yielded when full; the next one starts in a new file, so
    the storage may still be reading the previous one.
    """
    if max_size <= 0:
        raise ValueError("max_segment_size must be positive")
    spool = None
    size = 0
    try:
        for piece in pieces:
            view = memoryview(piece).cast("B")
            while len(view):
                if spool is None:
                    spool = tempfile.TemporaryFile(prefix="rsyncv2-segment-", dir=directory)
                    size = 0
                cut = min(len(view), max_size - size)
                spool.write(view[:cut])
                size += cut
                view = view[cut:]
                if size == max_size:
                    spool.flush()
                    full, spool = SpooledSegment(spool, size), None
                    yield full
                    del full    # the storage closes it, or GC does
        if spool is not None and size:
            spool.flush()
            last, spool = SpooledSegment(spool, size), None
            yield last
    finally:
        if spool is not None:
            spool.close()


def segments(pieces: Iterable[Piece], max_size: int) -> Iterator[Segment]:
    """Regroup byte pieces into segments of exactly max_size (last shorter).

    Nothing is copied: a piece that straddles two segments is cut into two
    views.  A segment holds its pieces until the storage has written it.
    """
    if max_size <= 0:
        raise ValueError("max_segment_size must be positive")
    held: list[Piece] = []
    size = 0
    for piece in pieces:
        n = len(piece)
        while size + n >= max_size:
            cut = max_size - size
            view = memoryview(piece)
            held.append(view[:cut])
            yield Segment(held, max_size)
            held, size = [], 0
            piece, n = view[cut:], n - cut
        if n:
            held.append(piece)
            size += n
    if size:
        yield Segment(held, size)
