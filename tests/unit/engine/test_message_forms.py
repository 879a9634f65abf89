"""How the level's bytes reach a storage: the message forms, and Freezer's storages' forms.

No segment is held in memory for Freezer's storages: appending storages
get the stream in chunks, object storages get segments spooled to
temporary files (encoder.messages, BackupEngine.message_form,
freezer_compat).  Freezer is not installed here: stand-in modules hold
classes with the names, and the methods, the adapter looks for.
"""

from __future__ import annotations

import io
import os
import sys
import types
from typing import Any

import pytest

from freezer_rsyncv2 import errors, freezer_compat
from freezer_rsyncv2.engine.rsyncv2 import Rsyncv2Engine
from freezer_rsyncv2.freezer_engine import Rsyncv2Engine as AgentEngine
from freezer_rsyncv2.storage import foreign
from freezer_rsyncv2.storage.local import LocalStorage
from freezer_rsyncv2.stream import encoder

MIB = 1 << 20


def pieces_of(data: bytes, sizes: list[int]) -> list[Any]:
    """``data`` cut into pieces of the given sizes (bytes and views, as the encoder yields)."""
    out, at = [], 0
    for i, n in enumerate(sizes):
        piece = data[at:at + n]
        out.append(memoryview(piece) if i % 2 else piece)
        at += n
    assert at == len(data)
    return out


# -- the forms ------------------------------------------------------------------

def test_chunks_keep_order_and_bound_every_message() -> None:
    data = os.urandom(5 * 1000 + 3 * 4096 + 17)
    sizes = [3, 4096, 1, 5000, 2, 2, 4096 * 2 + 9, 1000, 1000, 1000, 1000, 1]
    sizes.append(len(data) - sum(sizes))
    out = list(encoder.chunks(pieces_of(data, sizes), 4096))
    assert b"".join(bytes(m) for m in out) == data
    assert all(0 < len(m) <= 4096 for m in out)
    # Small pieces are joined: not one message per piece.
    assert len(out) < len(sizes)


def test_chunks_pass_big_pieces_on_uncopied() -> None:
    big = os.urandom(3 * 4096)
    out = list(encoder.chunks([big], 4096))
    assert [len(m) for m in out] == [4096] * 3
    assert all(isinstance(m, memoryview) and m.obj is big for m in out)


def test_spooled_segments_are_files_of_the_segment_size() -> None:
    data = os.urandom(3 * 4096 + 100)
    segs = list(encoder.spooled_segments(pieces_of(data, [1000, 5000, 6000, 388]),
                                         4096))
    assert [len(s) for s in segs] == [4096, 4096, 4096, 100]
    assert b"".join(bytes(s) for s in segs) == data
    for seg in segs:
        assert not any(isinstance(p, (bytes, bytearray)) and len(p) > 4096
                       for p in vars(seg).values())
        seg.close()
        assert seg.closed


def test_a_spooled_segment_reads_like_a_file_and_rewinds() -> None:
    data = os.urandom(10_000)
    (seg,) = encoder.spooled_segments([data], 1 << 20)
    assert seg and len(seg) == 10_000
    assert seg.read(100) == data[:100] and seg.tell() == 100
    buf = bytearray(50)
    assert seg.readinto(buf) == 50 and bytes(buf) == data[100:150]
    assert seg.read() == data[150:] and seg.read(10) == b""
    seg.seek(0)                     # a retry rewinds, as HTTP clients do
    assert seg.read() == data
    assert seg.seek(-10, io.SEEK_END) == 9_990 and seg.read() == data[-10:]
    assert b"".join(seg.chunks(4096)) == data
    with pytest.raises(ValueError):
        seg.seek(-1)
    with seg:
        pass
    assert seg.closed


def test_an_empty_stream_gives_no_segment_and_no_chunk() -> None:
    assert list(encoder.spooled_segments([b""], 10)) == []
    assert list(encoder.chunks([b"", b""], 10)) == []


@pytest.mark.parametrize("form", encoder.MESSAGE_FORMS)
def test_every_form_carries_the_same_bytes(form) -> None:
    data = os.urandom(9000)
    out = list(encoder.messages(pieces_of(data, [10, 4000, 4990]), form, 4096))
    assert b"".join(bytes(m) for m in out) == data
    kinds = {type(m) for m in out}
    expected = {encoder.PIECES: {encoder.Segment}, encoder.BYTES: {bytes},
                encoder.FILES: {encoder.SpooledSegment},
                encoder.STREAM: {bytes, memoryview}}[form]
    assert kinds <= expected
    if form != encoder.STREAM:
        assert [len(m) for m in out] == [4096, 4096, 808]
    with pytest.raises(ValueError):
        list(encoder.messages([data], "letters", 4096))


# -- which form a storage gets ----------------------------------------------------

class Plain:
    """A storage that says nothing: Freezer's engines give it bytes."""


@pytest.mark.parametrize("storage, form", [
    (Plain(), encoder.BYTES),
    (types.SimpleNamespace(message_form=encoder.STREAM), encoder.STREAM),
    (types.SimpleNamespace(message_form=encoder.FILES), encoder.FILES),
    (types.SimpleNamespace(message_form="unknown"), encoder.BYTES),
])
def test_the_engine_asks_the_storage(storage, form) -> None:
    assert Rsyncv2Engine(storage=storage).message_form() == form


def test_our_storages_take_pieces(tmp_path) -> None:
    engine = Rsyncv2Engine(storage=LocalStorage(str(tmp_path / "c")))
    assert engine.message_form() == encoder.PIECES


# -- Freezer's storages ---------------------------------------------------------------

class FakeS3Client:
    def __init__(self, fail_part: int | None = None) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.uploads: dict[str, dict[int, bytes]] = {}
        self.aborted: list[str] = []
        self.bodies: list[Any] = []
        self.fail_part = fail_part

    def create_multipart_upload(self, Bucket: str, Key: str) -> dict:
        upload_id = "u%d" % len(self.uploads)
        self.uploads[upload_id] = {}
        return {"UploadId": upload_id}

    def upload_part(self, Bucket, Key, UploadId, PartNumber, Body, ContentLength):
        if PartNumber == self.fail_part:
            raise OSError("connection reset")
        self.bodies.append(Body)
        data = Body.read() if hasattr(Body, "read") else bytes(Body)
        assert len(data) == ContentLength
        self.uploads[UploadId][PartNumber] = data
        return {"ETag": '"%d"' % PartNumber}

    def complete_multipart_upload(self, Bucket, Key, UploadId, MultipartUpload):
        parts = self.uploads.pop(UploadId)
        numbers = [p["PartNumber"] for p in MultipartUpload["Parts"]]
        assert numbers == sorted(parts)
        self.objects[(Bucket, Key)] = b"".join(parts[n] for n in numbers)

    def abort_multipart_upload(self, Bucket, Key, UploadId):
        self.aborted.append(UploadId)
        self.uploads.pop(UploadId, None)

    def head_object(self, Bucket, Key):
        return {"ContentLength": len(self.objects[(Bucket, Key)])}

    def put_object(self, Bucket, Key, Body, ContentLength):
        self.objects[(Bucket, Key)] = Body.read()


@pytest.fixture
def freezer(monkeypatch, tmp_path) -> types.SimpleNamespace:
    """Stand-ins for Freezer's storage modules, as loaded in freezer-agent."""
    def module(name: str, **classes: type) -> None:
        mod = types.ModuleType(name)
        for key, cls in classes.items():
            setattr(mod, key, cls)
        monkeypatch.setitem(sys.modules, name, mod)

    class FsLikeStorage:
        """Appends every message to one file, as Freezer's does."""

        def __init__(self, root: str, max_segment_size: int = 32 * MIB) -> None:
            self.root = root
            self.max_segment_size = max_segment_size
            self.messages: list[Any] = []

        def write_backup(self, rich_queue: Any, backup: Any) -> None:
            with open(os.path.join(self.root, "data"), "wb") as out:
                for message in rich_queue.get_messages():
                    self.messages.append(len(message))
                    out.write(message)

    class SwiftStorage:
        """PUTs every message as an object (``len()``, read like a file)."""

        def __init__(self, max_segment_size: int = 32 * MIB) -> None:
            self.max_segment_size = max_segment_size
            self.objects: list[bytes] = []

        def write_backup(self, rich_queue: Any, backup: Any) -> None:
            for message in rich_queue.get_messages():
                length = len(message)
                data = message.read() if hasattr(message, "read") else message
                assert len(data) == length
                self.objects.append(data)

    class S3Storage:
        """Freezer 19.0.0's S3Storage: upload_stream takes bytes only."""

        def __init__(self, client: FakeS3Client, max_segment_size: int = 32 * MIB) -> None:
            self.client = client
            self.max_segment_size = max_segment_size
            self.made = 0
            self.storage_path = "bucket/pre"

        def get_s3_connection(self) -> FakeS3Client:
            self.made += 1
            return self.client

        def get_bucket_name(self) -> str:
            return "bucket"

        def write_backup(self, rich_queue: Any, backup: Any) -> None:
            self.upload_stream("pre/data", rich_queue.get_messages())

        def upload_stream(self, key: str, stream: Any) -> None:
            raise AssertionError("Freezer's upload_stream is replaced")

        def put_file(self, from_path: str, to_path: str) -> None:
            raise AssertionError("replaced")

    class MultipleStorage:
        def __init__(self, storages: list) -> None:
            self.storages = storages

        def write_backup(self, rich_queue: Any, backup: Any) -> None:
            raise AssertionError("not run here")

    module("freezer.storage.fslike", FsLikeStorage=FsLikeStorage)
    module("freezer.storage.swift", SwiftStorage=SwiftStorage)
    module("freezer.storage.s3", S3Storage=S3Storage)
    module("freezer.storage.multiple", MultipleStorage=MultipleStorage)
    monkeypatch.delitem(sys.modules, "freezer.storage.ftp", raising=False)
    return types.SimpleNamespace(fslike=FsLikeStorage, swift=SwiftStorage,
                                 s3=S3Storage, multiple=MultipleStorage,
                                 root=str(tmp_path))


def test_freezers_storages_get_their_forms(freezer) -> None:
    local = freezer.fslike(freezer.root)
    swift = freezer.swift()
    s3 = freezer.s3(FakeS3Client())
    for storage, form in ((local, encoder.STREAM), (swift, encoder.FILES),
                          (s3, encoder.FILES)):
        assert AgentEngine(storage=storage).message_form() == form
    assert "upload_stream" in vars(s3) and "get_s3_connection" in vars(s3)

    class OwnWrite(freezer.fslike):     # its own write_backup: not known
        def write_backup(self, rich_queue: Any, backup: Any) -> None:
            pass
    assert AgentEngine(storage=OwnWrite(freezer.root)).message_form() == encoder.BYTES
    assert freezer_compat.message_form(Plain()) is None


def test_multiple_storage_streams_only_when_every_member_appends(freezer) -> None:
    both = freezer.multiple([freezer.fslike(freezer.root), freezer.fslike(freezer.root)])
    assert AgentEngine(storage=both).message_form() == encoder.STREAM
    mixed = freezer.multiple([freezer.fslike(freezer.root), freezer.swift()])
    assert AgentEngine(storage=mixed).message_form() == encoder.BYTES
    assert freezer_compat.engine_form(mixed.storages[1]) == encoder.FILES


def test_s3_client_is_made_once(freezer) -> None:
    s3 = freezer.s3(FakeS3Client())
    freezer_compat.adapt_storage(s3)
    assert s3.get_s3_connection() is s3.get_s3_connection() is s3.client
    assert s3.made == 1


def test_s3_upload_stream_uploads_each_segment_as_a_part(freezer) -> None:
    client = FakeS3Client()
    s3 = freezer_compat.adapt_storage(freezer.s3(client))
    data = os.urandom(10_000)
    segs = list(encoder.spooled_segments([data], 4096))
    s3.upload_stream("pre/data", iter(segs))
    assert client.objects[("bucket", "pre/data")] == data
    assert all(isinstance(b, encoder.SpooledSegment) for b in client.bodies)
    assert all(s.closed for s in segs)      # each file went once uploaded
    assert s3.stored_size("bucket/pre/data") == 10_000


def test_a_failed_s3_part_aborts_the_upload_and_raises(freezer) -> None:
    client = FakeS3Client(fail_part=2)
    s3 = freezer_compat.adapt_storage(freezer.s3(client))
    with pytest.raises(errors.StorageError, match="UploadPart bucket/pre/data"):
        s3.upload_stream("pre/data", iter([b"a" * 10, b"b" * 10, b"c"]))
    assert client.aborted == ["u0"] and not client.objects

    client = FakeS3Client()
    s3 = freezer_compat.adapt_storage(freezer.s3(client))

    def stopped():
        yield b"x"
        raise errors.Rsyncv2Error("the engine failed")
    with pytest.raises(errors.Rsyncv2Error, match="the engine failed"):
        s3.upload_stream("pre/data", stopped())
    assert client.aborted == ["u0"]
    with pytest.raises(errors.StorageError, match="no data"):
        s3.upload_stream("pre/data", iter([]))


def test_restores_read_freezers_storages_in_small_blocks(freezer) -> None:
    local, swift = freezer.fslike(freezer.root), freezer.swift(4 * MIB)
    small, other = freezer.fslike(freezer.root, 4096), Plain()
    other.max_segment_size = 32 * MIB
    both = freezer.multiple([local, swift, small, other])
    with freezer_compat.small_reads(both):
        assert [s.max_segment_size for s in both.storages] == [
            freezer_compat.RESTORE_READ, freezer_compat.RESTORE_READ, 4096,
            32 * MIB]
    assert [s.max_segment_size for s in both.storages] == [
        32 * MIB, 4 * MIB, 4096, 32 * MIB]


def test_agent_backup_to_an_appending_storage(freezer, tmp_path) -> None:
    """End to end through the base class: chunks of at most CHUNK bytes."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(3 * MIB + 5))
    storage = freezer.fslike(freezer.root)

    class Backup:
        level = 0

    engine = AgentEngine(storage=storage, compression="gzip")
    engine.place = None
    engine._run_backup(str(src), str(tmp_path / "manifest"), Backup(), 0)
    assert max(storage.messages) <= encoder.CHUNK
    assert sum(storage.messages) == engine.handed_bytes \
        == os.path.getsize(os.path.join(freezer.root, "data"))
    assert engine.handed_bytes > 3 * MIB       # random data: stored, not grown


def test_release_memory_runs_anywhere() -> None:
    freezer_compat.release_memory()
    freezer_compat.release_memory(collect=False)


def test_base_counts_what_it_hands_over() -> None:
    engine = Rsyncv2Engine(storage=Plain())
    assert list(engine._counted(iter([b"ab", b"c"]))) == [b"ab", b"c"]
    assert engine.handed_bytes == 3
    assert foreign.members(Plain())[0].__class__ is Plain
    assert foreign.members(engine.storage)[0].__class__ is Plain


def test_gzip_stores_what_it_cannot_shrink() -> None:
    """Random frames are stored (deflate's stored blocks), text is compressed;
    both decode with the same gzip decoder."""
    from freezer_rsyncv2.stream import compression
    gzip = compression.by_name("gzip")
    rand = os.urandom(MIB)
    text = b"def value(self): return self.field\n" * (MIB // 36)
    mixed = text[:MIB // 2] + rand[:MIB // 2]
    for data in (rand, text, mixed, b"short"):
        packed = gzip.compress(data)
        assert gzip.decompress(packed, len(data)) == data
    assert len(gzip.compress(rand)) < MIB + 1024           # stored: ~100 B more
    assert compression._incompressible(rand)
    assert not compression._incompressible(text)
    assert not compression._incompressible(mixed)          # a sample shrinks
    assert len(gzip.compress(mixed)) < 0.6 * len(mixed)
