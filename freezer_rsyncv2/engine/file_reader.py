"""Reading one regular file for a backup pass: its records, then what the read came to.

The file is read once, by ranges: holes in a sparse file (and, in a big
file, whole blocks of zeros) are never read nor hashed byte by byte; they
travel as HOLE records (``extents``).  Each chunk feeds the whole-file
digest and the signature the next level will match against
(``content_hash``) and, when the previous level has a signature, the rsync
matcher (``file_records``); without one the data goes out as literals and
the holes as hole records.  A file that changes while it is read is stored
as read and marked to be read again at the next level.

``FileReader.read`` gives a ``FileRead``: iterate its ``pieces()`` (record
bytes), then its ``result`` (a ``ReadResult``) says what they came to.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from freezer_rsyncv2 import config as cfgmod
from freezer_rsyncv2 import digests
from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2 import progress as prog
from freezer_rsyncv2 import threads
from freezer_rsyncv2.engine import content_hash, digest_helper, extents, file_records
from freezer_rsyncv2.fs import entry as fsentry
from freezer_rsyncv2.fs.openfile import Unreadable, changed_while_read, open_regular
from freezer_rsyncv2.fs import walk as fswalk
from freezer_rsyncv2.rsync import signature as rsig
from freezer_rsyncv2.stream import entrymap, records

Warn = Callable[[bytes, str], None]
#: ``(fd, offset, length, step, path, warn)`` -> the range's bytes in chunks of ``step``; short on a read error
ReadRange = Callable[[int, int, int, int, bytes, Warn], Iterator[bytes]]

#: Files smaller than this get no block signature (``entrymap.SIG_NONE``): a
#: change sends them whole, a few hundred bytes more than a delta after
#: compression, and a tree of small files skips the rolling hash and 20
#: bytes of manifest a block.
SIGNED_MIN = 4096
#: Files up to this size, of the size they had below, are compared by digest first (``_touched_only``).
PRECHECK_MAX = 1 << 20


@dataclasses.dataclass
class ReadResult:
    """What reading one file came to.

    ``skipped``: why the file was not read (it yielded no record, and the
    chain keeps its old state).  Otherwise ``entry`` is the file as read: its
    size is the bytes stored and, when it ``changed`` while read, its mtime is
    -1 so that the next level reads it again.
    """

    entry: fsentry.Entry
    skipped: str | None = None
    digest: bytes | None = None
    signature: rsig.Signature | None = None
    changed: bool = False
    literal_bytes: int = 0
    copied_bytes: int = 0


class FileReader:
    """Reads the regular files of one backup pass; ``close`` stops its helper threads.

    ``read_range`` replaces the reading of a file's bytes (tests make files
    change or fail while they are read).
    """

    def __init__(self, config: cfgmod.EngineConfig, root: bytes, summary: prog.Summary, progress: prog.Progress,
                 warn: Warn, read_range: ReadRange | None = None) -> None:
        self.config = config
        self.root = root
        self.summary = summary
        self.progress = progress
        self.warn = warn
        self._range_reader = read_range
        # A big file's digest and signature run on helper threads (other
        # cores) while this one reads and matches.
        self._digest_worker = threads.OrderedWorker("rsyncv2-digest")
        self._sig_worker = threads.OrderedWorker("rsyncv2-signature")
        # Touched files' digests, read ahead in a process of their own; not
        # with a test's reader (``read_range``), which must see every read.
        self._helper = digest_helper.DigestHelper(config.dereference, PRECHECK_MAX) \
            if read_range is None and _plain_reads() else None
        try:
            self._file_root = not stat.S_ISDIR(os.stat(self.root).st_mode)
        except OSError:
            self._file_root = False

    def close(self) -> None:
        """Discard pending work and stop the helper threads and process (idempotent)."""
        self._digest_worker.close()
        self._sig_worker.close()
        if self._helper is not None:
            self._helper.close()

    def ask(self, path: bytes) -> int | None:
        """A ticket (for ``read``) for the digest of the file at ``path`` (absolute), read ahead
        by the digest helper; None without one.  Asked for a file that ``read`` will check
        for its content below (``_touched_only``)."""
        return self._helper.ask(path) if self._helper is not None else None

    def read(self, e: fsentry.Entry, basis: mf.ManifestEntry | None, prev_name: bytes | None,
             below: Mapping[str, Any] | None = None) -> FileRead:
        """The read of ``e``: a delta against ``basis`` if given (``prev_name``: a rename's old path).
        ``below``: the same path's map in the chain below (``manifest.Prior.fields``, unchecked);
        a file found with its content again (``_touched_only``) yields no record (a touched file)."""
        return FileRead(self, e, basis, prev_name, below)

    def touched(self, e: fsentry.Entry, below: Mapping[str, Any] | None, ticket: int | None,
                signed: Callable[[], bool]) -> fsentry.Entry | None:
        """``e`` as the digest helper found it, when its answer for ``ticket`` (``ask``'s) shows
        the content ``below`` (the same path's map), unchanged while read: a touched file, as
        ``FileRead`` would find it, not opened again.  Else None (the file is read).

        ``signed()``: whether the entry below has a signature; a file of ``SIGNED_MIN``
        bytes or more without one is read, for its signature (``FileRead._records``)."""
        a = self._helper.answer(ticket) if self._helper is not None else None
        if a is None or a.changed or not stat.S_ISREG(a.mode) or not _touched_only(below, a.size):
            return None
        assert below is not None        # _touched_only
        if a.digest != below["dg"] or (a.size >= SIGNED_MIN and not signed()):
            return None
        self.counted(a.size)
        return _refresh(e, a.size, a.mtime_ns, a.ctime_ns, a.ino, a.mode)

    def path_of(self, e: fsentry.Entry) -> bytes:
        return self.root if self._file_root else os.path.join(self.root, e.path)

    def hasher(self, block_len: int, size: int) -> content_hash.ContentHasher:
        """The content hasher of a file of ``size`` bytes: on the helper threads when it is big, without a
        signature when it is small (``SIGNED_MIN``)."""
        if size >= threads.PARALLEL_MIN:
            return content_hash.ContentHasher(block_len, self._digest_worker, self._sig_worker)
        return content_hash.ContentHasher(block_len, sign=size >= SIGNED_MIN)

    def region_reader(self, fd: int, path: bytes, block_len: int) -> Callable[[int, int], Iterator[bytes]]:
        """``read(offset, length)`` of the open file, in block-aligned chunks of about ``extents.READ_SIZE``."""
        step = max(extents.READ_SIZE // block_len, 1) * block_len
        reader = self._range_reader or read_range     # the module's, looked up now (tests replace it)

        def read(offset: int, length: int) -> Iterator[bytes]:
            for chunk in reader(fd, offset, length, step, path, self.warn):
                self.summary.bytes_read += len(chunk)
                self.progress.advance(len(chunk))
                yield chunk
        return read

    def read_all(self, fd: int, path: bytes, size: int) -> bytes:
        """The first ``size`` bytes of the open file in one piece (short after a read error):
        a content held whole, for its digest first (``FileRead``)."""
        reader = self._range_reader or read_range
        data = b"".join(reader(fd, 0, size, extents.READ_SIZE, path, self.warn))
        self.counted(len(data))
        return data

    def counted(self, size: int) -> None:
        """Count ``size`` bytes read (of one file, whole)."""
        self.summary.bytes_read += size
        self.progress.advance(size)


class FileRead:
    """One file's read: iterate ``pieces()`` once to the end, then ``result`` says what it came to."""

    def __init__(self, reader: FileReader, e: fsentry.Entry, basis: mf.ManifestEntry | None,
                 prev_name: bytes | None, below: Mapping[str, Any] | None = None) -> None:
        self._reader = reader
        self._entry = e
        self._basis = basis
        self._prev_name = prev_name
        self._below = below if prev_name is None else None     # a rename's content is its own
        self._result: ReadResult | None = None

    @property
    def result(self) -> ReadResult:
        if self._result is None:
            raise RuntimeError("FileRead.result before its pieces() were read to the end")
        return self._result

    def pieces(self) -> Iterator[bytes]:
        """The file's records: ENTRY, its data records, END_FILE; none when it is skipped."""
        try:
            fd, st = open_regular(self._reader.path_of(self._entry), self._reader.config.dereference)
        except Unreadable as skip:
            self._result = ReadResult(self._entry, skipped=str(skip))
            return
        try:
            yield from self._records(fd, st)
        finally:
            os.close(fd)

    def _records(self, fd: int, st: os.stat_result) -> Iterator[bytes]:
        e = _refresh(self._entry, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)
        if self._basis is None and st.st_size < SIGNED_MIN:
            yield from self._small(fd, st, e)
            return
        block_len = rsig.block_size_for(st.st_size, self._reader.config.block_size)
        if self._basis is not None and _touched_only(self._below, st.st_size):
            content = self._reader.read_all(fd, e.path, st.st_size)
            digest = digests.of_bytes(digests.DEFAULT, content)
            if self._same_as_below(digest, st, fd, len(content)):
                # The content below: the caller makes it a metadata change.
                self._result = ReadResult(e, digest=digest)
                return
            read = _held(content)       # what was read, again
        else:
            read = self._reader.region_reader(fd, e.path, block_len)
        ranges = fswalk.data_ranges(fd, st.st_size, keep_offset=False)     # read with pread only
        out = file_records.for_basis(self._basis, self._prev_name)
        yield records.entry(e, **out.fields(sparse=sum(length for _o, length in ranges) < st.st_size))
        hasher = self._reader.hasher(block_len, st.st_size)
        try:
            done = 0
            for piece in extents.file_pieces(read, ranges, st.st_size, block_len):
                if piece.zeros:
                    hasher.zeros(piece.zeros)
                    yield from out.zeros(piece.zeros)
                else:
                    hasher.update(piece.data)
                    yield from out.data(piece.data)
                done += piece.zeros or len(piece.data)
            yield from out.finish()
            digest, signature = hasher.finish()
            yield records.end_file(done, digest)
        finally:
            hasher.discard()    # nothing if all went well
        changed = changed_while_read(st, os.fstat(fd), done)
        e.size = done
        if changed:
            e.mtime_ns = -1     # forces a re-read at the next level
        self._result = ReadResult(e, digest=digest, signature=signature, changed=changed,
                                  literal_bytes=out.literal_bytes, copied_bytes=out.copied_bytes)

    def _same_as_below(self, digest: bytes, st: os.stat_result, fd: int, read: int) -> bool:
        """Whether what was read (``read`` bytes, ``digest``) is the content below, unchanged while read."""
        return (self._below is not None and digest == self._below.get("dg")
                and not changed_while_read(st, os.fstat(fd), read))

    def _small(self, fd: int, st: os.stat_result, e: fsentry.Entry) -> Iterator[bytes]:
        """A small file sent whole: one read, its digest, ENTRY, LITERAL and END_FILE.

        What the general path would store, but for holes and runs of zeros
        (stored as data: a file under ``SIGNED_MIN`` has no room for a
        hole), without its per-file set-up: no extent map, signature or
        zero detection (most files of a source tree are this small).
        """
        data = self._reader.read_all(fd, e.path, st.st_size)
        digest = digests.of_bytes(digests.DEFAULT, data)
        if _touched_only(self._below, st.st_size) and self._same_as_below(digest, st, fd, len(data)):
            self._result = ReadResult(e, digest=digest)     # the content below: a metadata change
            return
        yield records.entry(e, data=entrymap.DATA_FULL)
        if data:
            yield records.literal(data)
        yield records.end_file(len(data), digest)
        changed = changed_while_read(st, os.fstat(fd), len(data))
        e.size = len(data)
        if changed:
            e.mtime_ns = -1     # forces a re-read at the next level
        self._result = ReadResult(e, digest=digest, changed=changed, literal_bytes=len(data))


def _touched_only(below: Mapping[str, Any] | None, size: int) -> bool:
    """Whether to check a file of ``size`` bytes against the digest of its map ``below``
    before any record: a file of ``PRECHECK_MAX`` bytes or less, of its size below (a
    touched file is then a metadata change at the cost of a digest, not of the rsync
    matcher or of its data)."""
    return below is not None and below.get("dg") is not None and size == below.get("s") and size <= PRECHECK_MAX


def _held(content: bytes) -> Callable[[int, int], Iterator[bytes]]:
    """``read(offset, length)`` of a content already read whole."""
    def read(offset: int, length: int) -> Iterator[bytes]:
        yield content[offset:offset + length]
    return read


def _refresh(e: fsentry.Entry, size: int, mtime_ns: int, ctime_ns: int, ino: int, mode: int) -> fsentry.Entry:
    """The entry as the open file is now (its stat then; it may have changed since the walk)."""
    e.size = size
    e.mtime_ns = mtime_ns
    e.ctime_ns = ctime_ns
    e.ino = ino
    e.mode = stat.S_IMODE(mode)
    return e


def _plain_reads() -> bool:
    """Whether this module's ``read_range`` is its own (a test may have replaced it)."""
    return read_range is _READ_RANGE


def read_range(fd: int, offset: int, length: int, step: int, path: bytes, warn: Warn) -> Iterator[bytes]:
    """Read a range in pieces of ``step`` bytes (block-aligned when ``offset``
    is); a read error ends it early (the caller sees the shortfall)."""
    end = offset + length
    while offset < end:
        try:
            chunk = os.pread(fd, min(step, end - offset), offset)
        except InterruptedError:
            continue
        except OSError as err:
            warn(path, f"read error at byte {offset}: {err.strerror}")
            return
        if not chunk:
            return
        yield chunk
        offset += len(chunk)


_READ_RANGE = read_range
