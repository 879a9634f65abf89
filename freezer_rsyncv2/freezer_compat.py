"""Fixes for Freezer's own storages, applied to the storage object freezer-agent hands our engine.

freezer 19.0.0's S3 storage (``freezer.storage.s3.S3Storage``) has two
faults that touch every backup:

* ``put_file`` passes ``ContentLength=len(f)`` for an open file, which
  raises TypeError, so ``put_metadata`` never writes a level's metadata and
  every ``--storage s3`` backup fails after its data is uploaded;
* ``upload_stream`` (behind ``write_backup``) logs a failed part or
  completion, aborts the multipart upload and returns as if all went well,
  so the level's data can be missing while the agent reports success.

``adapt_storage`` gives that storage object (not the class: other users of
Freezer in the process are left alone) a working ``put_file`` and a
``stored_size``, through which the engine's base class checks, before it
writes any metadata, that the data object holds every byte the engine
produced (``engine.base.BackupEngine._check_stored``).  Freezer itself is
never imported here: a storage is recognised by its class only when
Freezer's module is already loaded, so without Freezer nothing happens.

``adapt_storage`` also tells the engine how each of Freezer's storages
takes the level's bytes (``message_form``, see ``engine.base``), so that
no segment is held in memory: the storages that append every message to
one file (local, ssh, ftp: ``FsLikeStorage``) get the stream in small
chunks; Swift, which stores each message as one object and reads it like
a file, gets segments spooled to temporary files; the S3 storage gets the
same, through an ``upload_stream`` that uploads each spooled segment as a
part (Freezer's takes only ``bytes``, so each part would be held in
memory) and raises on a failed upload.  The S3 storage object also keeps
one client, made from trimmed botocore data (``lean_client``), instead of
building a new botocore session and client for every request.  See
docs/freezer-agent.rst, "Memory".
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import sys
import types
from typing import Any

from oslo_log import log

from freezer_rsyncv2 import freezer_s3
from freezer_rsyncv2.storage import foreign
from freezer_rsyncv2.storage.s3_upload import MIN_PART_SIZE
from freezer_rsyncv2.stream import encoder

LOG = log.getLogger(__name__)

#: Where Freezer's S3 storage class lives, and its name.
FREEZER_S3_MODULE = "freezer.storage.s3"
FREEZER_S3_CLASS = "S3Storage"

#: Freezer's storage classes whose ``write_backup`` we know, and how it
#: takes the level's bytes when the object's class keeps that method:
#: ``FsLikeStorage`` (local, ssh, ftp) writes every message to one file;
#: ``SwiftStorage`` PUTs every message as one object, with ``len()`` and
#: reading it like a file when it has ``read``.
FREEZER_FORMS = (
    ("freezer.storage.fslike", "FsLikeStorage", encoder.STREAM),
    ("freezer.storage.ftp", "BaseFtpStorage", encoder.STREAM),
    ("freezer.storage.swift", "SwiftStorage", encoder.FILES),
)
FREEZER_MULTIPLE = ("freezer.storage.multiple", "MultipleStorage")


def freezer_class(module_name: str, class_name: str) -> type | None:
    """A Freezer class if its module is loaded, else None (never imports it)."""
    module = sys.modules.get(module_name)
    cls = getattr(module, class_name, None)
    return cls if isinstance(cls, type) else None


def freezer_s3_class() -> type | None:
    """Freezer's S3Storage class if its module is loaded, else None (never imports it)."""
    return freezer_class(FREEZER_S3_MODULE, FREEZER_S3_CLASS)


def _keeps(storage: Any, cls: type | None, method: str) -> bool:
    """True if ``storage`` is a ``cls`` that uses ``cls``'s own ``method``."""
    if cls is None:
        return False
    own = getattr(cls, method, None)
    return (own is not None and isinstance(storage, cls)
            and method not in vars(storage)
            and getattr(type(storage), method, None) is own)


def message_form(storage: Any) -> str | None:
    """How a Freezer storage object takes the level's bytes (None: not known)."""
    for module, name, form in FREEZER_FORMS:
        cls = freezer_class(module, name)
        if cls is not None and isinstance(storage, cls):
            # A subclass with its own write_backup may want something else.
            return form if _keeps(storage, cls, "write_backup") else None
    return None


def is_freezer_s3(storage: Any) -> bool:
    """True if ``storage`` is Freezer's S3Storage (or a subclass keeping its ``put_file``)."""
    cls = freezer_s3_class()
    return (cls is not None and isinstance(storage, cls)
            and getattr(type(storage), "put_file", None) is getattr(cls, "put_file", None))


def adapt_storage(storage: Any) -> Any:
    """Fix Freezer's S3 storage objects in ``storage`` in place; returns ``storage``.

    The replacement is applied whenever the object uses Freezer's own
    ``S3Storage.put_file``, whatever Freezer's version: that method has one
    job (a single PUT of a small local file under its storage path) and
    ours does just that, so on a Freezer whose put_file works nothing
    observable changes.  A version check would have to guess which release
    fixes it, and a behaviour probe would need an upload to the user's
    bucket.  A subclass overriding ``put_file``, or an object given its own,
    is left alone.
    """
    for member in foreign.members(storage):
        if not is_freezer_s3(member) or "put_file" in vars(member):
            continue
        member.put_file = types.MethodType(freezer_s3.s3_put_file, member)
        member.stored_size = types.MethodType(freezer_s3.s3_stored_size, member)
        if _keeps(member, freezer_s3_class(), "get_s3_connection"):
            member.get_s3_connection = freezer_s3.cached_client(
                member, getattr(type(member).get_s3_connection, "__wrapped__", None))
        if _keeps(member, freezer_s3_class(), "upload_stream") \
                and _keeps(member, freezer_s3_class(), "write_backup"):
            member.upload_stream = types.MethodType(freezer_s3.s3_upload_stream, member)
            member.message_form = encoder.FILES
        LOG.debug("rsyncv2 engine: Freezer's S3 storage on %s: metadata "
                  "uploaded with its size, data checked after upload",
                  getattr(member, "storage_path", "?"))
        segment = getattr(member, "max_segment_size", None)
        if isinstance(segment, int) and 0 < segment < MIN_PART_SIZE:
            LOG.warning(
                "rsyncv2 engine: --max-segment-size %d is below 5 MiB: "
                "Freezer's S3 storage uploads each segment as one part of a "
                "multipart upload, and S3 refuses parts under 5 MiB but the "
                "last, so the backup will fail unless this store accepts "
                "smaller parts; use at least %d", segment, MIN_PART_SIZE)
    return storage


def adapt_s3_module(module: Any) -> None:
    """Freezer's S3 module, just imported: each S3Storage object keeps one lean client, made at first use.

    For the import hook (``freezer_hook``), before freezer-agent builds
    its storage: Freezer's ``S3Storage`` builds a new botocore client for
    every request, one or two of them while it sets the storage up
    (``prepare``), before our engine is loaded, and what they leave
    stays resident (about 8 MB of the agent's peak with S3;
    docs/freezer-agent.rst, "Memory").  The class's
    ``get_s3_connection`` is replaced by one that gives the object the
    client ``adapt_storage`` would (``freezer_s3.cached_client``), made
    as Freezer's from the same settings, so every engine's backups use
    the same client as before, only one of it.  A module without
    Freezer's class and method, or already adapted, is left alone.
    """
    cls = getattr(module, FREEZER_S3_CLASS, None)
    original = vars(cls).get("get_s3_connection") if isinstance(cls, type) else None
    if not callable(original) or hasattr(original, "__wrapped__"):
        return

    @functools.wraps(original)
    def get_s3_connection(self: Any) -> Any:
        if "get_s3_connection" not in vars(self):
            self.get_s3_connection = freezer_s3.cached_client(self, original)
        return self.get_s3_connection()

    setattr(cls, "get_s3_connection", get_s3_connection)


def engine_form(storage: Any) -> str:
    """How the engine hands ``storage`` (adapted) the level's bytes: ``encoder.MESSAGE_FORMS``.

    A storage may say so itself (a ``message_form`` attribute); Freezer's
    known classes get theirs from ``FREEZER_FORMS``; Freezer's
    MultipleStorage hands every member the same message, so chunks when
    all its members append, else whole segments as bytes; any other
    storage gets one bytes object per segment, as Freezer's engines give.
    """
    members = foreign.members(storage)
    forms = [_form(member) for member in members]
    if storage is members[0]:
        return forms[0] or encoder.BYTES
    declared = _form(storage) if "message_form" in vars(storage) else None
    if declared is not None:
        return declared
    if _keeps(storage, freezer_class(*FREEZER_MULTIPLE), "write_backup") \
            and all(form == encoder.STREAM for form in forms):
        return encoder.STREAM
    return encoder.BYTES


def _form(storage: Any) -> str | None:
    declared = getattr(storage, "message_form", None)
    if declared in encoder.MESSAGE_FORMS:
        return declared
    return message_form(storage)


def can_tell_size(storage: Any) -> bool:
    """Whether ``storage`` (adapted) can say how many bytes an object holds (``stored_size``):
    ours, and Freezer's S3 storage once adapted; Freezer's other storages are trusted."""
    return callable(getattr(storage, "stored_size", None))


_libc: Any = None

#: glibc's mallopt parameter for the number of malloc arenas, and the
#: number the engine's threads share in freezer-agent: one, so that a
#: buffer freed by any thread can be reused by any other (with two, each
#: arena kept its own megabyte buffers: the peaks were about 3 MB higher,
#: for no measurable speed; the threads allocate little without the GIL).
M_ARENA_MAX = -8
ARENAS = 1


def _glibc() -> Any:
    """glibc through ctypes, or False elsewhere (musl, macOS)."""
    global _libc
    if _libc is None:
        _libc = False
        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name) if name else None
            if lib is not None and hasattr(lib, "malloc_trim") \
                    and hasattr(lib, "mallopt"):
                _libc = lib
        except OSError:
            pass
    return _libc


def release_memory(collect: bool = True) -> None:
    """Give the heap the agent no longer uses back to the system, and keep less from now on.

    With ``collect``, unreachable objects are collected first: with S3,
    freezer-agent reaches our engine holding every botocore client
    Freezer built for a request (about 0.1 s; ``freezer_engine`` does it
    when freezer-agent imports it).  Trimming glibc's heaps
    (``malloc_trim``) lowers the resident size a backup or restore
    starts from.  The engine's threads then share ``ARENAS`` malloc
    arena(s): glibc gives each thread its own by default, and each keeps
    the megabyte buffers freed into it (read pieces, frames, the rsync
    search's arrays) for reuse, a few MB per thread at the peak.  Only
    the collection happens without glibc.
    """
    if collect:
        gc.collect()
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)
        libc.mallopt(M_ARENA_MAX, ARENAS)


#: Bytes Freezer's storages read per block on restore (their
#: ``backup_blocks`` and ``get_file`` read ``max_segment_size`` at a time).
RESTORE_READ = 1 << 20


@contextlib.contextmanager
def small_reads(storage: Any, size: int = RESTORE_READ) -> Any:
    """Inside: Freezer's storages in ``storage`` read blocks of at most ``size``.

    Freezer's ``backup_blocks`` reads ``max_segment_size`` bytes per block
    (32 MiB by default), and the engine holds the block being restored and
    the one read next; the attribute sizes nothing else on a restore.
    Storages that are not Freezer's known ones are left alone.
    """
    changed = []
    for member in foreign.members(storage):
        current = getattr(member, "max_segment_size", None)
        if (message_form(member) is None and not is_freezer_s3(member)) \
                or not isinstance(current, int) or current <= size:
            continue
        member.max_segment_size = size
        changed.append((member, current))
    try:
        yield storage
    finally:
        for member, current in changed:
            member.max_segment_size = current
