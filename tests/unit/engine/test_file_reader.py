"""Reading one file for a backup: its records, and the result object that says what the read came to."""

import os

import msgpack
import pytest

from freezer_rsyncv2 import config as cfgmod
from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2 import progress as prog
from freezer_rsyncv2 import threads
from freezer_rsyncv2.engine import content_hash, file_reader
from freezer_rsyncv2.fs import walk as fswalk
from freezer_rsyncv2.stream import entrymap, records
from tests.unprivileged import run_unprivileged

MiB = 1 << 20
BLOCK = 4096


class Reading:
    """A FileReader over ``root`` that keeps its warnings and can be handed a ``read_range``."""

    def __init__(self, root, read_range=None, block_size=BLOCK):
        self.root = os.fsencode(root)
        self.summary = prog.Summary()
        self.warnings = []
        self.reader = file_reader.FileReader(
            cfgmod.EngineConfig(block_size=block_size), self.root, self.summary, prog.NULL,
            lambda path, message: self.warnings.append((path, message)), read_range=read_range)

    def entry(self, name):
        return next(e for e in fswalk.walk(self.root) if e.path == os.fsencode(name))

    def read(self, entry, basis=None, below=None):
        """(decoded records, result) of reading ``entry``; ``below``: its map in the chain below."""
        read = self.reader.read(entry, basis, None, below)
        try:
            data = b"".join(read.pieces())
        finally:
            self.reader.close()
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(data)
        return list(unpacker), read.result


def hashes_of(data, block_len=BLOCK):
    hasher = content_hash.ContentHasher(block_len)
    hasher.update(data)
    return hasher.finish()


def same_signature(a, b):
    return (a.block_len, a.file_size, a.weak.tolist(), a.strong, None if a.blocks is None else a.blocks.tolist()) \
        == (b.block_len, b.file_size, b.weak.tolist(), b.strong, None if b.blocks is None else b.blocks.tolist())


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def test_a_whole_file_is_literals_then_its_digest(tmp_path):
    data = os.urandom(10000)
    write(tmp_path / "f", data)
    reading = Reading(tmp_path)
    entry = reading.entry("f")
    recs, result = reading.read(entry)
    digest, signature = hashes_of(data)
    assert [r[0] for r in recs] == [records.ENTRY, records.LITERAL, records.END_FILE]
    assert recs[0][1]["data"] == entrymap.DATA_FULL and "sp" not in recs[0][1]
    assert recs[1][1] == data
    assert recs[2][1:] == [len(data), digest]
    assert result.skipped is None and not result.changed
    assert result.entry is entry and result.entry.size == len(data)
    assert result.digest == digest and same_signature(result.signature, signature)
    assert (result.literal_bytes, result.copied_bytes) == (len(data), 0)
    assert reading.summary.bytes_read == len(data) and reading.warnings == []


def test_a_file_read_again_against_its_signature_is_copies(tmp_path):
    data = os.urandom(5 * BLOCK)
    write(tmp_path / "f", data)
    reading = Reading(tmp_path)
    digest, signature = hashes_of(data)
    # a basis without a digest is not compared first (see the test below)
    basis = mf.ManifestEntry(reading.entry("f"), None, signature)
    recs, result = reading.read(reading.entry("f"), basis)
    assert recs[0][1]["data"] == entrymap.DATA_DELTA
    assert recs[0][1]["bl"] == BLOCK and recs[0][1]["bs"] == len(data)
    assert [r[0] for r in recs[1:]] == [records.COPY, records.END_FILE]
    assert result.digest == digest and (result.literal_bytes, result.copied_bytes) == (0, len(data))


def test_a_touched_file_is_found_by_its_digest_without_a_delta(tmp_path):
    data = os.urandom(5 * BLOCK)
    write(tmp_path / "f", data)
    reading = Reading(tmp_path)
    digest, signature = hashes_of(data)
    basis = mf.ManifestEntry(reading.entry("f"), digest, signature)    # the same path's entry below
    below = entrymap.entry_map(basis.entry, {"dg": digest})                # ... as its map
    recs, result = reading.read(reading.entry("f"), basis, below=below)
    assert recs == [] and result.digest == digest and not result.changed
    assert (result.literal_bytes, result.copied_bytes) == (0, 0)
    # one byte changed: the delta goes on from what was read
    write(tmp_path / "f", data[:7] + b"X" + data[8:])
    recs, result = reading.read(reading.entry("f"), basis, below=below)
    assert recs[0][1]["data"] == entrymap.DATA_DELTA
    assert [r[0] for r in recs[1:]] == [records.LITERAL, records.COPY, records.END_FILE]
    assert result.digest == hashes_of(data[:7] + b"X" + data[8:])[0]
    assert result.copied_bytes == 4 * BLOCK


def test_a_touched_small_file_is_found_by_its_digest_before_any_record(tmp_path):
    data = os.urandom(3000)         # under SIGNED_MIN: no signature below, only a digest
    write(tmp_path / "f", data)
    reading = Reading(tmp_path)
    digest = hashes_of(data)[0]
    below = entrymap.entry_map(reading.entry("f"), {"dg": digest, "sg": entrymap.SIG_NONE})
    recs, result = reading.read(reading.entry("f"), None, below=below)
    assert recs == [] and result.digest == digest and not result.changed
    assert (result.literal_bytes, result.copied_bytes) == (0, 0)
    # another content of the same size is sent whole
    write(tmp_path / "f", data[:10] + bytes([data[10] ^ 1]) + data[11:])
    recs, result = reading.read(reading.entry("f"), None, below=below)
    assert [r[0] for r in recs] == [records.ENTRY, records.LITERAL, records.END_FILE]
    assert result.digest != digest and result.literal_bytes == len(data)


def test_a_sparse_file_reads_only_its_data(tmp_path):
    path = tmp_path / "image"
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
        f.write(b"a" * 100)
        f.seek(6 * MiB)
        f.write(b"b" * BLOCK)
    reading = Reading(tmp_path)
    recs, result = reading.read(reading.entry("image"))
    with open(path, "rb") as f:
        digest, signature = hashes_of(f.read())
    first = b"a" * 100 + bytes(BLOCK - 100)
    assert recs[0][1]["sp"] is True
    assert [r[:2] for r in recs[1:-1]] == [
        [records.LITERAL, first], [records.HOLE, 6 * MiB - BLOCK],
        [records.LITERAL, b"b" * BLOCK], [records.HOLE, 2 * MiB - BLOCK]]
    assert recs[-1][1:] == [8 * MiB, digest]
    assert reading.summary.bytes_read == 2 * BLOCK     # the holes were not read
    assert result.digest == digest and same_signature(result.signature, signature)
    assert not result.changed and result.entry.size == 8 * MiB
    assert (result.literal_bytes, result.copied_bytes) == (2 * BLOCK, 0)


@pytest.mark.parametrize("size", [MiB, threads.PARALLEL_MIN])     # hashed inline, on the helper threads
def test_a_file_that_grows_while_read_is_stored_as_read_and_marked(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "f"
    write(path, data)

    def growing(fd, offset, length, step, name, warn):
        yield from file_reader.read_range(fd, offset, length, step, name, warn)
        with open(path, "ab") as f:
            f.write(b"more")
    reading = Reading(tmp_path, growing)
    recs, result = reading.read(reading.entry("f"))
    digest, _ = hashes_of(data)
    assert result.changed and result.skipped is None
    assert result.entry.size == size and result.entry.mtime_ns == -1     # read again at the next level
    assert result.digest == digest and recs[-1][1:] == [size, digest]
    assert reading.warnings == []       # the pass reports it, from the result


def test_a_file_that_shrinks_while_read_stops_where_it_ends(tmp_path):
    data = os.urandom(3 * MiB)
    path = tmp_path / "f"
    write(path, data)

    def shrinking(fd, offset, length, step, name, warn):
        for i, chunk in enumerate(file_reader.read_range(fd, offset, length, step, name, warn)):
            yield chunk
            if i == 0:
                os.truncate(path, MiB + 10)
    reading = Reading(tmp_path, shrinking)
    recs, result = reading.read(reading.entry("f"))
    digest, _ = hashes_of(data[:MiB + 10])
    assert result.changed and result.entry.size == MiB + 10 and result.entry.mtime_ns == -1
    assert result.digest == digest and recs[-1][1:] == [MiB + 10, digest]


def test_a_read_error_ends_the_file_early_with_a_warning(tmp_path):
    write(tmp_path / "f", os.urandom(2 * MiB))

    def failing(fd, offset, length, step, name, warn):
        warn(name, f"read error at byte {offset}: Input/output error")
        return iter(())
    reading = Reading(tmp_path, failing)
    recs, result = reading.read(reading.entry("f"))
    assert reading.warnings == [(b"f", "read error at byte 0: Input/output error")]
    assert result.changed and result.entry.size == 0 and recs[-1][1] == 0


def test_a_file_that_vanished_is_skipped(tmp_path):
    write(tmp_path / "f", b"gone")
    reading = Reading(tmp_path)
    entry = reading.entry("f")
    os.unlink(tmp_path / "f")
    recs, result = reading.read(entry)
    assert recs == []
    assert result.skipped == "cannot open: No such file or directory"
    assert result.entry is entry and result.digest is None and result.signature is None


def test_a_file_that_vanishes_once_open_is_read_whole(tmp_path):
    data = os.urandom(3 * MiB)
    path = tmp_path / "f"
    write(path, data)

    def unlinking(fd, offset, length, step, name, warn):
        if os.path.exists(path):
            os.unlink(path)
        yield from file_reader.read_range(fd, offset, length, step, name, warn)
    reading = Reading(tmp_path, unlinking)
    recs, result = reading.read(reading.entry("f"))
    assert result.skipped is None and not result.changed
    assert result.digest == hashes_of(data)[0] and result.entry.size == len(data)


def test_a_file_replaced_by_a_directory_is_skipped(tmp_path):
    write(tmp_path / "f", b"x")
    reading = Reading(tmp_path)
    entry = reading.entry("f")
    os.unlink(tmp_path / "f")
    os.mkdir(tmp_path / "f")
    recs, result = reading.read(entry)
    assert recs == [] and result.skipped == "no longer a regular file"


def test_an_unreadable_file_is_skipped(tmp_path):
    write(tmp_path / "secret", b"no")
    os.chmod(tmp_path / "secret", 0)

    def read_it():
        reading = Reading(tmp_path)
        recs, result = reading.read(reading.entry("secret"))
        return recs, result.skipped, result.digest, reading.summary.bytes_read
    assert run_unprivileged(read_it) == ([], "cannot open: Permission denied", None, 0)


def test_the_result_waits_for_the_last_piece(tmp_path):
    write(tmp_path / "f", b"data")
    reading = Reading(tmp_path)
    read = reading.reader.read(reading.entry("f"), None, None)
    pieces = read.pieces()
    next(pieces)
    with pytest.raises(RuntimeError):
        read.result
    pieces.close()
    reading.reader.close()


def test_changed_while_read_compares_size_and_mtime(tmp_path):
    write(tmp_path / "f", b"12345")
    before = os.stat(tmp_path / "f")
    assert not file_reader.changed_while_read(before, before, 5)
    assert file_reader.changed_while_read(before, before, 4)
    os.utime(tmp_path / "f", ns=(1, 1))
    assert file_reader.changed_while_read(before, os.stat(tmp_path / "f"), 5)
