"""Reading one regular file for a backup pass: its records, whole-file digest and signature.

The file is read once, by ranges: holes in a sparse file (and, in a big
file, whole blocks of zeros) are never read nor hashed byte by byte; they
travel as HOLE records.  Each chunk feeds the whole-file digest and the
signature the next level will match against and, when the previous level
has a signature, the rsync matcher; without one the data goes out as
literals and the holes as hole records.  A file that changes while it is
read is stored as read and marked to be read again at the next level.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator

from freezer_rsyncv2 import config as cfgmod
from freezer_rsyncv2 import digests
from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2 import progress as prog
from freezer_rsyncv2 import threads
from freezer_rsyncv2.engine import extents
from freezer_rsyncv2.fs import entry as fsentry
from freezer_rsyncv2.fs import walk as fswalk
from freezer_rsyncv2.rsync import matcher as rmatch
from freezer_rsyncv2.rsync import signature as rsig
from freezer_rsyncv2.stream import records

READ_SIZE = 1 << 20


class FileReader:
    """Reads the regular files of one backup pass; ``close`` stops its helper threads."""

    def __init__(self, cfg: cfgmod.EngineConfig, root: bytes,
                 summary: prog.Summary, progress: prog.Progress,
                 warn: Callable[[bytes, str], None]) -> None:
        self.cfg = cfg
        self.root = root
        self.summary = summary
        self.progress = progress
        self._warn = warn
        # A big file's SHA-256 and signature run on helper threads (other
        # cores) while this one reads and matches.
        self._digest_worker = threads.OrderedWorker("rsyncv2-digest")
        self._sig_worker = threads.OrderedWorker("rsyncv2-signature")
        try:
            self._file_root = not stat.S_ISDIR(os.stat(self.root).st_mode)
        except OSError:
            self._file_root = False

    def close(self) -> None:
        """Discard pending work and stop the helper threads (idempotent)."""
        self._digest_worker.close()
        self._sig_worker.close()

    def _count_read(self, nbytes: int) -> None:
        self.summary.bytes_read += nbytes
        self.progress.advance(nbytes)

    def read(self, e: fsentry.Entry, basis: mf.ManifestEntry | None,
             prev_name: bytes | None) -> Iterator:
        """Yield record bytes, then one tuple (entry, digest, signature, complete)."""
        full = self.root if self._file_root else os.path.join(self.root, e.path)
        flags = os.O_RDONLY | getattr(os, "O_NOATIME", 0)
        if not self.cfg.dereference:
            flags |= os.O_NOFOLLOW
        try:
            try:
                fd = os.open(full, flags)
            except PermissionError:
                fd = os.open(full, flags & ~getattr(os, "O_NOATIME", 0))
        except OSError as err:
            self._warn(e.path, "skipped, cannot open: %s" % err.strerror)
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self._warn(e.path, "skipped, no longer a regular file")
                return
            e = _refresh(e, st)
            block_len = rsig.block_size_for(st.st_size, self.cfg.block_size)
            ranges = fswalk.data_ranges(fd, st.st_size)
            sparse = sum(length for _o, length in ranges) < st.st_size
            extra = {"data": records.DATA_FULL, "sp": sparse or None}
            matcher = None
            if basis is not None:
                extra.update(data=records.DATA_DELTA, pn=prev_name,
                             bl=basis.block_len, bs=basis.entry.size)
                matcher = rmatch.Matcher(basis.signature())
            yield records.entry(e, **extra)
            digest = digests.new(digests.DEFAULT)
            builder = rsig.SignatureBuilder(
                block_len, extents.min_zero_blocks(block_len))
            if st.st_size >= threads.PARALLEL_MIN:
                def hash_data(chunk: bytes) -> None:
                    self._digest_worker.submit(digest.update, chunk)
                    self._sig_worker.submit(builder.update, chunk)

                def hash_zeros(length: int) -> None:
                    self._digest_worker.submit(digest.zeros, length)
                    self._sig_worker.submit(builder.zeros, length)
            else:
                def hash_data(chunk: bytes) -> None:
                    digest.update(chunk)
                    builder.update(chunk)

                def hash_zeros(length: int) -> None:
                    digest.zeros(length)
                    builder.zeros(length)
            done = literal = 0
            for piece in _pieces(fd, ranges, st.st_size, block_len,
                                 e.path, self._warn, self._count_read):
                if isinstance(piece, int):      # a hole or zero blocks
                    hash_zeros(piece)
                    if matcher is not None:
                        yield from _ops(matcher.zeros(piece))
                    else:
                        yield records.hole(piece)
                    done += piece
                    continue
                hash_data(piece)
                if matcher is not None:
                    yield from _ops(matcher.feed(piece))
                else:
                    yield records.literal_head(len(piece))
                    yield piece
                    literal += len(piece)
                done += len(piece)
            if matcher is not None:
                yield from _ops(matcher.finish())
                self.summary.literal_bytes += matcher.literal_bytes
                self.summary.copied_bytes += matcher.copied_bytes
            else:
                self.summary.literal_bytes += literal
            self._digest_worker.wait()
            self._sig_worker.wait()
            value = digest.digest()
            yield records.end_file(done, value)
            after = os.fstat(fd)
            complete = (done == st.st_size and after.st_size == st.st_size
                        and after.st_mtime_ns == st.st_mtime_ns)
            e.size = done
            if not complete:
                self._warn(e.path, "changed while being read; stored what "
                                   "was read, will be read again next time")
                e.mtime_ns = -1     # forces a re-read at the next level
            yield (e, value, builder.finish(), complete)
        finally:
            self._digest_worker.discard()   # nothing if all went well
            self._sig_worker.discard()
            os.close(fd)


def _refresh(e: fsentry.Entry, st: os.stat_result) -> fsentry.Entry:
    """The entry as the open file is now (it may have changed since the walk)."""
    e.size = st.st_size
    e.mtime_ns = st.st_mtime_ns
    e.ctime_ns = st.st_ctime_ns
    e.ino = st.st_ino
    e.mode = stat.S_IMODE(st.st_mode)
    return e


def _pieces(fd: int, ranges: list[tuple[int, int]], size: int,
            block_len: int, path: bytes, warn: Callable[[bytes, str], None],
            on_read: Callable[[int], None]) -> Iterator[bytes | int]:
    """The file in order: data as bytes, long runs of zeros as lengths.

    Only the data ranges are read, widened to whole blocks; in a file of
    ``extents.ZERO_SCAN_MIN`` bytes or more, whole blocks of zeros count
    as holes.  A run of holes and zero blocks of ``extents.ZERO_RUN_MIN``
    bytes or more is one length; a shorter one is data (zero bytes).  A
    short read (the file shrank, a read error) ends the pieces early.
    """
    scan = size >= extents.ZERO_SCAN_MIN
    step = max(READ_SIZE // block_len, 1) * block_len
    pos = zeros = 0

    def flush_zeros() -> Iterator[bytes | int]:
        if zeros >= extents.ZERO_RUN_MIN:
            yield zeros
        else:
            for at in range(0, zeros, READ_SIZE):
                yield bytes(min(READ_SIZE, zeros - at))

    for offset, length in extents.aligned_regions(ranges, size, block_len):
        zeros += offset - pos
        pos = offset
        for chunk in _read_range(fd, offset, length, step, path, warn):
            on_read(len(chunk))
            runs = (extents.zero_block_runs(chunk, block_len) if scan
                    else ((False, 0, len(chunk)),))
            for is_zero, start, run in runs:
                if is_zero:
                    zeros += run
                    continue
                if zeros:
                    yield from flush_zeros()
                    zeros = 0
                yield chunk if run == len(chunk) else chunk[start:start + run]
            pos += len(chunk)
        if pos < offset + length:
            return      # the file shrank while we read it
    zeros += size - pos
    if zeros:
        yield from flush_zeros()


def _read_range(fd: int, offset: int, length: int, step: int, path: bytes,
                warn: Callable[[bytes, str], None]) -> Iterator[bytes]:
    """Read a range in pieces of ``step`` bytes (block-aligned when
    ``offset`` is); a read error ends it early (the caller sees the
    shortfall)."""
    end = offset + length
    while offset < end:
        try:
            chunk = os.pread(fd, min(step, end - offset), offset)
        except InterruptedError:
            continue
        except OSError as err:
            warn(path, "read error at byte %d: %s" % (offset, err.strerror))
            return
        if not chunk:
            return
        yield chunk
        offset += len(chunk)


def _ops(ops: Iterable[tuple]) -> Iterator[bytes]:
    for op in ops:
        if op[0] == rmatch.COPY:
            yield records.copy(op[1], op[2])
        elif op[0] == rmatch.HOLE:
            yield records.hole(op[1])
        else:
            yield records.literal_head(len(op[1]))
            yield op[1]
