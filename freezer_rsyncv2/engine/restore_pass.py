"""One restore level: apply a decoded record stream to the restore tree.

Records come from ``stream.records.decode`` (already type- and bound-checked);
this module checks their order (data records only inside a file, a file's
data closed by END_FILE) and hands every file system change to
``fs.restore.RestoreTree``, which owns path safety and atomic replacement.
"""

from __future__ import annotations

import array
import os
import tempfile
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import numpy as np
from oslo_log import log

from freezer_rsyncv2 import digests, errors
from freezer_rsyncv2 import progress as prog
from freezer_rsyncv2.fs import entry as fsentry
from freezer_rsyncv2.fs import restore as fsrestore
from freezer_rsyncv2.rsync import matcher as rmatch
from freezer_rsyncv2.rsync import patcher as rpatch
from freezer_rsyncv2.stream import entrymap, frames, place, records

LOG = log.getLogger(__name__)

HOLE_GRAIN = 4096


class _FileData:
    """Iterates one file's data records as pieces; learns size and digest
    from its END_FILE record."""

    def __init__(self, recs: Iterator[tuple], path: bytes, delta: bool
                 ) -> None:
        self._recs = recs
        self._path = path
        self._delta = delta
        self.size: int | None = None
        self.digest: bytes | None = None

    def ops(self) -> Iterator:
        """Data records as pieces (full) or matcher ops (delta)."""
        for rec in self._recs:
            rtype = rec[0]
            if rtype == records.END_FILE:
                self.size, self.digest = rec[1], rec[2]
                return
            if rtype == records.LITERAL:
                yield (rmatch.LITERAL, rec[1]) if self._delta else rec[1]
            elif rtype == records.COPY and self._delta:
                yield (rmatch.COPY, rec[1], rec[2])
            elif rtype == records.HOLE:
                yield (rmatch.HOLE, rec[1]) if self._delta else rec[1]
            else:
                raise errors.CorruptRecordError(
                    f"{records.NAMES[rtype]} record inside the data of {self._path!r}")
        raise errors.TruncatedError(
            f"stream ends inside the data of {self._path!r}")

    def checked_digest(self) -> bytes:
        if self.digest is None:
            raise errors.TruncatedError(f"no END_FILE for {self._path!r}")
        return self.digest


def _punch_holes(pieces: Iterable[bytes | memoryview | int]) -> Iterator[bytes | memoryview | int]:
    """Turn aligned all-zero 4 KiB runs into holes (for sparse sources)."""
    for piece in pieces:
        if isinstance(piece, int):      # already a hole
            yield piece
            continue
        n = len(piece) // HOLE_GRAIN * HOLE_GRAIN
        if n == 0:
            yield piece
            continue
        blocks = np.frombuffer(piece, dtype=np.uint64, count=n // 8)
        nonzero: np.ndarray = np.asarray(blocks.reshape(-1, HOLE_GRAIN // 8).any(axis=1))
        start = 0
        for flag, run in _runs(nonzero):
            length = run * HOLE_GRAIN
            yield piece[start:start + length] if flag else length
            start += length
        if n < len(piece):
            yield piece[n:]


def _runs(flags: np.ndarray) -> Iterator[tuple[bool, int]]:
    if not len(flags):
        return
    edges = np.flatnonzero(np.diff(flags.astype(np.int8))) + 1
    bounds = np.concatenate(([0], edges, [len(flags)]))
    for a, b in zip(bounds[:-1], bounds[1:]):
        yield bool(flags[a]), int(b - a)


class SeenPaths:
    """The paths of one level's entries, to refuse a second entry for one.

    Not a set of them: a million paths would hold some 70 MB.  Entries
    come in tree order (``fs.walk.sort_key``), and while they do, a
    path can only repeat the one before it; so the hashes of in-order
    paths go to a temporary file, 8 bytes each, written a block at a
    time.  The first entry out of order (the files a backup held back
    as possible renames come after the others; or a crafted stream)
    loads them, sorted (8 bytes a path, once), and from then on every
    path is looked up there and in a set of those that came since.
    ``hash()`` of bytes is keyed per process, so a crafted stream
    cannot aim collisions at it.
    """

    BLOCK = 8192        # hashes buffered before a write (64 KiB)

    def __init__(self) -> None:
        self._last: bytes | None = None     # key of the last in-order path
        self._buffer = array.array("q")
        self._spill: BinaryIO | None = None
        self._sorted: np.ndarray | None = None     # once out of order
        self._late: set[int] = set()

    def add(self, path: bytes) -> bool:
        """Note ``path``; False if it was noted before."""
        key = hash(path)
        if self._sorted is None:
            order = path.replace(b"/", b"\0")    # sort_key order, as bytes
            if self._last is None or order > self._last:
                self._last = order
                self._buffer.append(key)
                if len(self._buffer) >= self.BLOCK:
                    self._flush()
                return True
            self._sorted = self._load()
        if key in self._late:
            return False
        at = int(np.searchsorted(self._sorted, key))
        if at < len(self._sorted) and int(self._sorted[at]) == key:
            return False
        self._late.add(key)
        return True

    def _flush(self) -> None:
        if self._spill is None:
            self._spill = tempfile.TemporaryFile(prefix="rsyncv2-seen-")
        self._buffer.tofile(self._spill)
        self._buffer = array.array("q")

    def _load(self) -> np.ndarray:
        """Every hash noted so far, sorted; the spill file is closed."""
        if self._spill is None:
            hashes = np.array(self._buffer, dtype=np.int64)
        else:
            self._flush()
            self._spill.seek(0)
            hashes = np.fromfile(self._spill, dtype=np.int64)
            self.close()
        self._buffer = array.array("q")
        hashes.sort()
        return hashes

    def close(self) -> None:
        """Remove the spill file (idempotent)."""
        if self._spill is not None:
            self._spill.close()
            self._spill = None


class RestorePass:
    """Applies one level's records; raises the library's typed errors."""

    def __init__(self, tree: fsrestore.RestoreTree,
                 progress: prog.Progress = prog.NULL) -> None:
        self.tree = tree
        self.progress = progress
        self.files = 0
        self.bytes_written = 0
        self._seen = SeenPaths()
        self.digest = digests.SHA256     # named by the level's BEGIN record

    def run(self, recs: Iterable[tuple], level: int | None = None,
            where: place.Place | None = None, info: dict | None = None
            ) -> dict:
        """Apply the records of one level's data stream.

        ``level``, ``where``: the level and place (``stream.place``) the
        storage holds the stream as; ``info``: what ``frames.decode_frames``
        learnt of its header (the format version).
        """
        it = iter(recs)
        begin = next(it, None)
        if begin is None or begin[0] != records.BEGIN:
            raise errors.CorruptRecordError("stream does not open with BEGIN")
        written = begin[1].get("level")
        if where is not None:
            version = (info or {}).get("version", frames.VERSION)
            place.check(begin[1], where, "data of level %d" % where.level,
                        version >= 3)
            if version >= 3 and begin[1].get("dg") != digests.BLAKE3_TREE:
                # what version 3 writes; a hole costs nothing to hash in it
                raise errors.CorruptRecordError(
                    "a version-%d stream names file digest %r"
                    % (version, begin[1].get("dg")))
        elif level is not None and written != level:
            # A stream moved or copied from another level (or backup).
            raise errors.IntegrityError(
                "the stream says it is level %r, the storage says level %d"
                % (written, level))
        self.tree.level = written
        self.digest = digests.of_level(begin[1])
        try:
            return self._records(it)
        finally:
            self._seen.close()

    def _records(self, it: Iterator[tuple]) -> dict:
        for rec in it:
            rtype = rec[0]
            if rtype == records.ENTRY:
                self._entry(rec[1], rec[2], it)
            elif rtype == records.DELETE:
                self.tree.reached(rec[1])
                self.tree.remove(rec[1])
                self.progress.entry(rec[1], "deleted")
            elif rtype == records.END:
                return rec[1]       # the tree's owner calls finish()
            else:
                raise errors.CorruptRecordError(
                    f"{records.NAMES[rtype]} record outside a file")
        raise errors.TruncatedError("stream ends before its END record")

    def _entry(self, e: fsentry.Entry, extra: dict, it: Iterator) -> None:
        if not self._seen.add(e.path):
            raise errors.CorruptRecordError(
                f"second entry for {e.path!r} in one level")
        self.tree.reached(e.path)
        kind = e.kind
        data = extra.get("data", entrymap.DATA_NONE)
        if kind != fsentry.KIND_FILE and data != entrymap.DATA_NONE:
            raise errors.CorruptRecordError(
                f"entry {e.path!r} of kind {kind!r} carries data {data!r}")
        if kind == fsentry.KIND_FILE:
            self._file(e, extra, data, it)
        elif kind == fsentry.KIND_DIR:
            self.tree.make_dir(e)
        elif kind == fsentry.KIND_SYMLINK:
            if e.link_target is None:
                raise errors.CorruptRecordError(f"symlink {e.path!r} has no target")
            self.tree.make_symlink(e)
        elif kind == fsentry.KIND_FIFO:
            self.tree.make_fifo(e)
        elif kind in (fsentry.KIND_CHR, fsentry.KIND_BLK):
            self.tree.make_device(e)
        elif kind == fsentry.KIND_HARDLINK:
            if e.hardlink_to is None:
                raise errors.CorruptRecordError(f"hardlink {e.path!r} has no target")
            self.tree.make_hardlink(e)
        self.progress.entry(e.path, "restored")

    def _file(self, e: fsentry.Entry, extra: dict, data: str,
              it: Iterator) -> None:
        if data == entrymap.DATA_META:
            self.tree.set_meta(e)
            return
        if data not in (entrymap.DATA_FULL, entrymap.DATA_DELTA):
            raise errors.CorruptRecordError(
                f"file {e.path!r} has data kind {data!r}")
        self.files += 1
        fdata = _FileData(it, e.path, data == entrymap.DATA_DELTA)
        if data == entrymap.DATA_FULL:
            pieces: Iterable = fdata.ops()
            self._write(e, pieces, fdata)
            return
        basis_path = extra.get("pn", e.path)
        block_len, basis_size = extra.get("bl"), extra.get("bs")
        if not isinstance(block_len, int) or not isinstance(basis_size, int) \
                or block_len <= 0 or basis_size < 0:
            raise errors.CorruptRecordError(
                f"delta for {e.path!r} lacks a valid basis block length/size")
        basis = self.tree.open_basis(basis_path)
        if basis is None:
            raise errors.RestoreError(
                "delta for %r needs %r from the previous level, which is not "
                "in the restore directory" % (e.path, basis_path))
        with basis:
            fd = basis.fileno()
            actual = os.fstat(fd).st_size
            if actual != basis_size:
                raise errors.IntegrityError(
                    "basis %r has %d bytes, the delta expects %d (was the "
                    "restore directory changed between levels?)"
                    % (basis_path, actual, basis_size))

            def read(offset: int, length: int) -> bytes:
                return os.pread(fd, length, offset)

            if extra.get("sp"):
                pieces = _punch_holes(rpatch.patch(fdata.ops(), read,
                                                   block_len, basis_size))
                self._write(e, pieces, fdata)
                return
            # In place, or COPY ranges copied kernel-side (copy_file_range).
            plan = rpatch.plan(fdata.ops(), block_len, basis_size)
            self.bytes_written += self.tree.patch_file(
                e, basis_path, fd, _counted(e, plan, fdata),
                fdata.checked_digest, self.digest)

    def _write(self, e: fsentry.Entry, pieces: Iterable, fdata: _FileData
               ) -> None:
        self.bytes_written += self.tree.write_file(
            e, _counted(e, pieces, fdata), fdata.checked_digest, self.digest)


def _counted(e: fsentry.Entry, pieces: Iterable, fdata: _FileData
             ) -> Iterator:
    """Pass ``pieces`` on; at their end, set the entry's size from END_FILE."""
    for piece in pieces:
        yield piece
    if fdata.size is None:
        raise errors.TruncatedError(
            f"stream ends inside the data of {e.path!r}")
    e.size = fdata.size     # the bytes actually read at backup time
