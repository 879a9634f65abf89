"""The digest helper: a process that reads files whole and answers with their digests.

Its answers must be what the backup's own read would find (stat, changed
while read, digest), it must never block or fail the backup (a helper that
cannot start, dies or talks nonsense leaves the reading to the pass), and
it ends with the backup.
"""

import os
import stat
import sys
import time

import pytest

from freezer_rsyncv2 import digests
from freezer_rsyncv2.engine import digest_helper
from freezer_rsyncv2.fs import digest_child

WAIT = 20.0     # seconds an answer may take (a loaded CI machine)


def _answer(helper, ticket):
    """The helper's answer for ``ticket``, waited for (the pass never waits)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = helper.answer(ticket)
        if found is not None or helper._answers and helper._answers[-1][0] > ticket:
            return found
        helper._send()
        time.sleep(0.01)
    raise AssertionError(f"no answer for ticket {ticket}")


def _stops_without_answer(helper, ticket):
    """The helper stops (it ended or talked nonsense) and ``ticket`` gets no answer meanwhile."""
    deadline = time.monotonic() + WAIT
    while not helper._stopped and time.monotonic() < deadline:
        assert helper.answer(ticket) is None
        time.sleep(0.01)
    assert helper._stopped


def _files(tmp_path, count=8):
    paths = []
    for i in range(count):
        path = tmp_path / f"f{i}"
        path.write_bytes(os.urandom(100 * i + 1))
        paths.append(path)
    return paths


@pytest.fixture
def eager(monkeypatch):
    """The helper starts at the first file and sends every request at once."""
    monkeypatch.setattr(digest_helper, "START_AFTER", 1)
    monkeypatch.setattr(digest_helper, "SEND_BYTES", 1)


def test_answers_are_what_the_backup_read_finds(tmp_path, eager):
    paths = _files(tmp_path)
    helper = digest_helper.DigestHelper(False, 1 << 20)
    try:
        tickets = [helper.ask(os.fsencode(p)) for p in paths]
        for path, ticket in zip(paths, tickets):
            answer = _answer(helper, ticket)
            st = os.lstat(path)
            assert answer == digest_helper.Answer(st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns,
                                                  st.st_ctime_ns, False,
                                                  digests.of_bytes(digests.DEFAULT, path.read_bytes()))
        assert helper.answered == len(paths)
    finally:
        helper.close()


def test_what_cannot_be_read_whole_has_no_answer(tmp_path, eager):
    big, small = tmp_path / "big", tmp_path / "small"
    big.write_bytes(b"x" * 101)
    small.write_bytes(b"y" * 100)
    os.symlink("small", tmp_path / "link")
    (tmp_path / "dir").mkdir()
    asked = [tmp_path / "missing", tmp_path / "dir", tmp_path / "link", big, small]
    helper = digest_helper.DigestHelper(False, 100)
    try:
        tickets = [helper.ask(os.fsencode(p)) for p in asked]
        assert _answer(helper, tickets[-1]).digest == digests.of_bytes(digests.DEFAULT, b"y" * 100)
        for ticket in tickets[:-1]:     # answered before the last, each with None
            assert helper.answer(ticket) is None
    finally:
        helper.close()


def test_a_symlink_is_followed_when_the_backup_follows_them(tmp_path, eager):
    (tmp_path / "target").write_bytes(b"content")
    os.symlink("target", tmp_path / "link")
    helper = digest_helper.DigestHelper(True, 1 << 20)
    try:
        answer = _answer(helper, helper.ask(os.fsencode(tmp_path / "link")))
        assert stat.S_ISREG(answer.mode) and answer.digest == digests.of_bytes(digests.DEFAULT, b"content")
    finally:
        helper.close()


def test_no_process_for_a_few_files(tmp_path, monkeypatch):
    monkeypatch.setattr(digest_helper, "START_AFTER", 4)
    paths = _files(tmp_path, 3)
    helper = digest_helper.DigestHelper(False, 1 << 20)
    tickets = [helper.ask(os.fsencode(p)) for p in paths]
    assert tickets == [0, 1, 2] and helper._proc is None
    assert [helper.answer(t) for t in tickets] == [None, None, None]
    helper.close()


def test_a_helper_that_cannot_start_leaves_the_reading_to_the_pass(tmp_path, eager):
    helper = digest_helper.DigestHelper(False, 1 << 20)
    helper._argv = [str(tmp_path / "no-such-python")]
    assert helper.ask(os.fsencode(tmp_path)) == 0       # the first is taken before the start
    assert helper.ask(os.fsencode(tmp_path)) is None
    assert helper.answer(0) is None
    helper.close()


def test_a_helper_that_dies_gives_no_more_answers(tmp_path, eager):
    paths = _files(tmp_path, 2)
    helper = digest_helper.DigestHelper(False, 1 << 20)
    try:
        first = helper.ask(os.fsencode(paths[0]))
        assert _answer(helper, first) is not None
        helper._proc.kill()
        helper._proc.wait()
        second = helper.ask(os.fsencode(paths[1]))
        _stops_without_answer(helper, second)
        assert helper.ask(os.fsencode(paths[1])) is None
    finally:
        helper.close()


def test_a_helper_talking_nonsense_is_stopped(tmp_path, eager):
    helper = digest_helper.DigestHelper(False, 1 << 20)
    helper._argv = [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'\\x92\\x00\\xa1x'); "
                    "sys.stdout.flush(); sys.stdin.read()"]
    try:
        ticket = helper.ask(os.fsencode(tmp_path))
        _stops_without_answer(helper, ticket)
    finally:
        helper.close()


def test_close_ends_the_process(tmp_path, eager):
    helper = digest_helper.DigestHelper(False, 1 << 20)
    helper.ask(os.fsencode(tmp_path))
    proc = helper._proc
    helper.close()
    helper.close()
    assert proc.returncode is not None and helper.ask(os.fsencode(tmp_path)) is None


def test_the_child_serves_requests_in_order(tmp_path):
    import msgpack
    paths = _files(tmp_path, 3)
    requests_r, requests_w = os.pipe()
    answers_r, answers_w = os.pipe()
    with os.fdopen(requests_w, "wb") as out:
        for i, path in enumerate(paths + [tmp_path / "missing"]):
            out.write(msgpack.packb([i, os.fsencode(path)], use_bin_type=True))
    digest_child.serve(False, 1 << 20, digests.DEFAULT, requests_r, answers_w)
    os.close(requests_r)
    os.close(answers_w)
    with os.fdopen(answers_r, "rb") as got:
        answers = list(msgpack.Unpacker(got, raw=False))
    assert [a[0] for a in answers] == [0, 1, 2, 3] and answers[3][1] is None
    for (_t, fields), path in zip(answers, paths):
        assert dict(zip(digest_child.ANSWER_FIELDS, fields))["digest"] == \
            digests.of_bytes(digests.DEFAULT, path.read_bytes())


def test_a_file_changing_while_read_is_marked_changed(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    real_pread = os.pread

    def growing(fd, size, offset):
        data = real_pread(fd, size, offset)
        with open(path, "ab") as f:
            f.write(b"more")
        return data
    monkeypatch.setattr(os, "pread", growing)
    answer = digest_child.digest_file(os.fsencode(path), False, 1 << 20)
    assert answer[5] is True and answer[2] == 3


def test_the_named_digest_is_the_one_answered(tmp_path, eager):
    import hashlib
    path = tmp_path / "f"
    path.write_bytes(b"content")
    helper = digest_helper.DigestHelper(False, 1 << 20, digests.SHA256)
    try:
        assert _answer(helper, helper.ask(os.fsencode(path))).digest == hashlib.sha256(b"content").digest()
    finally:
        helper.close()


def test_an_unknown_digest_ends_the_helper(tmp_path, eager):
    helper = digest_helper.DigestHelper(False, 1 << 20, "md5")
    try:
        ticket = helper.ask(os.fsencode(tmp_path))
        _stops_without_answer(helper, ticket)
    finally:
        helper.close()


def test_the_current_directory_stays_out_of_the_helper_s_imports(tmp_path, eager, monkeypatch):
    """A backup often runs in the tree it backs up: a module there must not be imported."""
    marker = tmp_path / "imported"
    for name in ("msgpack", "blake3", "freezer_rsyncv2"):
        (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(9)\n")
    (tmp_path / "f").write_bytes(b"data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    helper = digest_helper.DigestHelper(False, 1 << 20)
    try:
        answer = _answer(helper, helper.ask(os.fsencode(tmp_path / "f")))
        assert answer is not None and answer.digest == digests.of_bytes(digests.DEFAULT, b"data")
    finally:
        helper.close()
    assert not marker.exists()
