"""Regular files of a restore: atomic writes, deltas, and staging across levels.

A big file that a later level patches would otherwise be rewritten once per
level.  So a file of ``STAGE_MIN`` bytes or more stays under its temporary
name for the whole restore (all levels of one chain, see
``RestoreTree``): a later level whose delta only overwrites ranges in place
(every COPY at its own offset, as a database or a disk image changes)
writes just those ranges into the staged file.  Only ``finish()`` renames
staged files to their final names, after a whole-file digest check of each
file that was patched in place since it was last hashed.  The final name is
therefore never half-written; a failed restore removes the staged files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import itertools
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO, cast

from oslo_log import log

from freezer_rsyncv2 import digests, treehash
from freezer_rsyncv2.errors import IntegrityError, RestoreError, Rsyncv2Error
from freezer_rsyncv2.fs.entry import Entry
from freezer_rsyncv2.fs.filedata import BasisRange, create_temp, punch_hole, pwrite_all, write_pieces
from freezer_rsyncv2.fs.safepath import lstat_at, show
from freezer_rsyncv2.fs.filehash import hash_fd, rehash_leaves
from freezer_rsyncv2.threads import PARALLEL_MIN

LOG = log.getLogger(__name__)

#: Files at least this big stay staged (temporary name) until finish().
STAGE_MIN = 16 << 20
#: At most this much LITERAL data is held while deciding on an in-place patch.
IN_PLACE_BUFFER = 16 << 20

PlanItem = Any      # bytes (LITERAL data) or (basis offset, length)


@contextlib.contextmanager
def os_errors(path: bytes, action: str, foreign: list[BaseException] | None = None) -> Iterator[None]:
    """Turn stray OSErrors into RestoreError naming the path.

    Exceptions listed in ``foreign`` (raised by caller-supplied data
    iterators) are not ours to translate and pass through unchanged.
    """
    try:
        yield
    except Rsyncv2Error:
        raise
    except OSError as exc:
        if foreign and any(exc is other for other in foreign):
            raise
        raise RestoreError(f"cannot {action} {show(path)}: "
                           f"{exc.strerror or exc}") from exc


@dataclasses.dataclass
class Staged:
    """A file kept under its temporary name until finish()."""

    tmp: bytes              # the temporary name, beside the final one
    entry: Entry            # metadata applied when it is renamed
    digest: bytes           # what its content must hash to
    hash_name: str          # ... with this digest (``digests``)
    levels: list[Any] = dataclasses.field(default_factory=list)
    # ^ levels that patched it in place since it was last hashed
    leaves: dict[int, bytes] | None = None
    # ^ blake3-tree leaf hashes of its content (``treehash``): a patch in
    #   place is then checked by rehashing the leaves it touched, at once


def identity_prefix(items: Iterable[PlanItem], limit: int) -> tuple[list[PlanItem], Iterator[PlanItem] | None]:
    """Read a patch plan while it only overwrites ranges in place.

    Returns (the items read, None) when the whole plan keeps every basis
    range at its own offset and its literals total at most ``limit``
    bytes; otherwise (the items read so far, the rest of the plan).
    """
    head: list[PlanItem] = []
    it = iter(items)
    pos = literal = 0
    for item in it:
        head.append(item)
        if isinstance(item, int):       # a hole: punched in place
            pos += item
        elif isinstance(item, tuple):
            if item[0] != pos:
                return head, it
            pos += item[1]
        else:
            head[-1] = bytes(item)      # a view would pin its whole frame
            pos += len(item)
            literal += len(item)
            if literal > limit:
                return head, it
    return head, None


class RegularFiles:
    """The regular-file half of ``RestoreTree`` (see the module docstring).

    Expects the tree's ``parent_of``, ``meta``, ``_hash_worker`` and
    ``level`` attributes; ``_staged`` maps final paths to ``Staged``.
    """

    _staged: dict[bytes, Staged]
    level: Any
    meta: Any
    _hash_worker: Any
    parent_of: Callable[..., contextlib.AbstractContextManager[tuple[int | None, bytes]]]
    clear_at: Callable[..., os.stat_result | None]

    def open_basis(self, path: bytes) -> BinaryIO | None:
        """Open the regular file at ``path`` (staged or final), or None.

        The rsync delta of a later level is applied against this basis.
        Opened O_NOFOLLOW|O_NONBLOCK (a fifo planted there must not block
        us) and type-checked on the descriptor, not by name.
        """
        with os_errors(path, "open"), self.parent_of(path, create=False) as (parent, name):
            if parent is None:
                return None
            staged = self._staged.get(path)
            name = staged.tmp if staged is not None else name
            st = lstat_at(parent, name)
            if st is None:
                return None
            if not stat.S_ISREG(st.st_mode):
                raise RestoreError(f"{show(path)} is not a regular file")
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise RestoreError(f"{show(path)} is not a regular file")
                os.set_blocking(fd, True)
                return cast(BinaryIO, os.fdopen(fd, 'rb'))
            except BaseException:
                os.close(fd)
                raise

    def patch_file(self, entry: Entry, basis_path: bytes, basis_fd: int,
                   items: Iterable[PlanItem],
                   digest: Callable[[], bytes],
                   hash_name: str = digests.SHA256) -> int:
        """Write ``entry`` from a patch plan against the open basis.

        In place when the basis is this path's staged file and the plan
        only overwrites ranges (``identity_prefix``); otherwise into a new
        temporary file, unchanged ranges copied kernel-side.  Returns the
        data bytes written.
        """
        staged = self._staged.get(entry.path)
        if staged is not None and basis_path == entry.path:
            head, rest = identity_prefix(items, IN_PLACE_BUFFER)
            if rest is None:
                return self.patch_in_place(entry, staged, head, digest, hash_name)
            items = itertools.chain(head, rest)
        pieces = (BasisRange(basis_fd, *item) if isinstance(item, tuple)
                  else item for item in items)     # data, or an int: a hole
        return self.write_file(entry, pieces, digest, hash_name)

    def patch_in_place(self, entry: Entry, staged: Staged, plan: list[PlanItem], digest: Callable[[], bytes],
                       hash_name: str) -> int:
        """Write a staged file's changes over it in place (the plan keeps every basis range where it is)."""
        written = pos = 0
        try:
            with os_errors(entry.path, "patch"), self.parent_of(entry.path, create=False) as (parent, _n):
                if parent is None:
                    raise RestoreError(f"{show(entry.path)}: its directory "
                                       f"is gone")
                fd = os.open(staged.tmp, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                try:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        raise RestoreError(f"{show(entry.path)}: staged file "
                                           f"is not a regular file")
                    changed: list[tuple[int, int, bool]] = []
                    for item in plan:
                        if isinstance(item, int):
                            punch_hole(fd, pos, item)
                            changed.append((pos, item, True))
                            pos += item
                            continue
                        if isinstance(item, tuple):
                            pos += item[1]
                            continue
                        pwrite_all(fd, item, pos)
                        changed.append((pos, len(item), False))
                        pos += len(item)
                        written += len(item)
                    if pos != entry.size:
                        raise IntegrityError(
                            f"{show(entry.path)}: restored {pos} bytes, "
                            f"expected {entry.size}")
                    old_size = os.fstat(fd).st_size
                    os.ftruncate(fd, pos)
                    expected = digest()
                    if staged.leaves is not None and hash_name == digests.BLAKE3_TREE:
                        self._check_leaves(fd, entry, staged.leaves, changed, old_size, expected)
                    else:       # checked by finalize(), reading it whole
                        staged.leaves = None
                        staged.levels.append(self.level)
                finally:
                    os.close(fd)
            staged.digest = expected
            staged.hash_name = hash_name
        except BaseException:
            self._drop_staged(entry.path)     # half-patched: never renamed
            raise
        staged.entry = entry
        return written

    def _check_leaves(self, fd: int, entry: Entry, leaves: dict[int, bytes],
                      changed: list[tuple[int, int, bool]],
                      old_size: int, expected: bytes) -> None:
        """Rehash the leaves an in-place patch touched; check the digest.

        The cost follows what the level changed (at most the file's data:
        a leaf that lies in a hole is known to be zeros without a read),
        not the file's size.
        """
        size = entry.size
        touched = rehash_leaves(fd, size, leaves, changed, old_size)
        if not hmac.compare_digest(treehash.digest_from_leaves(size, leaves), expected):
            raise IntegrityError(
                f"{show(entry.path)}: {digests.BLAKE3_TREE} digest mismatch "
                f"after level {self.level} patched it in place "
                f"({touched} leaves rehashed)")

    def write_file(self, entry: Entry,
                   pieces: Iterable[bytes | int | BasisRange],
                   digest: bytes | Callable[[], bytes],
                   hash_name: str = digests.SHA256) -> int:
        """Write a regular file atomically; return the data bytes written.

        ``pieces`` are data (bytes-like), ints meaning a hole of that
        many zero bytes, made with lseek so the result is sparse (a final
        ftruncate keeps trailing holes), or ranges of an open basis file,
        copied kernel-side (``BasisRange``).  The digest covers the logical
        content (holes as zeros).  Nothing replaces the final name before
        length and digest check out; on any failure (including one raised
        by ``pieces``) the temporary file is removed.  The return value
        counts bytes actually written, holes excluded.  ``digest`` may be
        a callable, asked only once ``pieces`` is exhausted (a stream
        carries a file's digest after its data).  A file of ``STAGE_MIN``
        bytes or more is staged: renamed by finish().
        """
        hasher = digests.new(hash_name, keep_leaves=entry.size >= STAGE_MIN)
        foreign: list[BaseException] = []
        with os_errors(entry.path, "write", foreign), self.parent_of(entry.path) as (parent, name):
            assert parent is not None
            fd, tmp = create_temp(parent)
            try:
                try:
                    total, written = write_pieces(
                        fd, pieces, hasher, entry.path, entry.size, foreign,
                        self._hash_worker if entry.size >= PARALLEL_MIN
                        else None)
                    if total != entry.size:
                        raise IntegrityError(
                            f"{show(entry.path)}: restored {total} bytes, "
                            f"expected {entry.size}")
                    if callable(digest):    # known once pieces are done
                        digest = digest()
                    if not hmac.compare_digest(hasher.digest(), digest):
                        raise IntegrityError(
                            f"{show(entry.path)}: {hash_name} digest "
                            f"mismatch")
                    os.ftruncate(fd, total)
                    staging = total >= STAGE_MIN
                    if not staging:
                        self.meta.apply_fd(fd, entry)
                finally:
                    os.close(fd)
                if staging:
                    self._unstage(parent, entry.path)
                    self._staged[entry.path] = Staged(
                        tmp, entry, digest, hash_name,
                        leaves=getattr(hasher, "leaves", None))
                else:
                    self._rename_into_place(parent, tmp, name, entry.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=parent)
                raise
        return written

    def _rename_into_place(self, parent: int, tmp: bytes, name: bytes, path: bytes) -> None:
        # rename() replaces files and symlinks atomically, but not
        # directories: those go first.
        present = lstat_at(parent, name)
        if present is not None and stat.S_ISDIR(present.st_mode):
            self.clear_at(parent, name, path)
        self._unstage(parent, path)
        os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)

    # -- staged files ---------------------------------------------------

    def _unstage(self, parent: int, path: bytes) -> None:
        """Forget (and remove) the staged file of ``path``, if any."""
        staged = self._staged.pop(path, None)
        if staged is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged.tmp, dir_fd=parent)

    def _forget_staged_below(self, path: bytes) -> None:
        """A directory went away with its contents: forget staged files in it."""
        prefix = path + b'/'
        for key in [k for k in self._staged if k.startswith(prefix)]:
            del self._staged[key]

    def _drop_staged(self, path: bytes) -> None:
        try:
            with self.parent_of(path, create=False, mutate=False) as (parent, _n):
                if parent is not None:
                    self._unstage(parent, path)
        except (Rsyncv2Error, OSError) as exc:
            LOG.debug("staged file of %s not removed: %s", show(path), exc)
        self._staged.pop(path, None)

    def discard_staged(self) -> None:
        """Remove every staged file (a failed restore)."""
        for path in sorted(self._staged):
            self._drop_staged(path)

    def finalize(self, path: bytes) -> None:
        """Check (if patched in place) and rename one staged file."""
        staged = self._staged.pop(path, None)
        if staged is None:
            return
        with os_errors(path, "finish"), self.parent_of(path, create=False, mutate=True) as (parent, name):
            if parent is None:
                raise RestoreError(f"{show(path)}: its directory is gone")
            try:
                fd = os.open(staged.tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                try:
                    if staged.levels:
                        self._check_patched(fd, path, staged)
                    self.meta.apply_fd(fd, staged.entry)
                finally:
                    os.close(fd)
                self._rename_into_place(parent, staged.tmp, name, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(staged.tmp, dir_fd=parent)
                raise

    @staticmethod
    def _check_patched(fd: int, path: bytes, staged: Staged) -> None:
        digest, size = hash_fd(fd, staged.hash_name)
        levels = f"level{'s' if len(staged.levels) > 1 else ''} {', '.join(map(str, staged.levels))}"
        if size != staged.entry.size:
            raise IntegrityError(
                f"{show(path)}: {size} bytes after {levels} patched it "
                f"in place, expected {staged.entry.size}")
        if not hmac.compare_digest(digest, staged.digest):
            raise IntegrityError(
                f"{show(path)}: {staged.hash_name} digest mismatch after "
                f"{levels} patched it in place")

    def finalize_all(self) -> None:
        """Rename every staged file; the first failure is raised at the end
        (the others are still renamed: each was checked on its own)."""
        failures = []
        for path in sorted(self._staged):
            try:
                self.finalize(path)
            except Rsyncv2Error as exc:
                failures.append(exc)
        if failures:
            raise failures[0]
