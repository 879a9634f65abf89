"""The CLI over hostile levels: one error line, exit code 1, no traceback.

Hostile storage, round 2: a real backup is made by the CLI into a local
container, then its level's ``data`` object is replaced by a crafted
stream (same level, same BEGIN fields, so only the defect differs) and
``restore`` and ``verify`` are run through ``cli.main`` as a user would.
Whatever the defect, the user must see exactly one line saying what is
wrong, never a Python traceback, and nothing outside the restore
directory may change.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

from freezer_rsyncv2 import cli, digests
from freezer_rsyncv2.stream import compression, frames, records
from tests.hostile import streamkit as sk

PREFIX = "freezer-rsyncv2: error: level 0 of h_n: "


def _digest(name: str, data: bytes) -> bytes:
    hasher = digests.new(name)
    hasher.update(data)
    return hasher.digest()


def _file(path: bytes, data: bytes, dg: str, digest: bytes | None = None,
          **fields) -> list:
    """A file's records as a backup writes them, but for ``fields``."""
    recs = sk.file_records(path, data)
    recs[0][1].update(fields)
    recs[-1][2] = _digest(dg, data) if digest is None else digest
    return recs


def _no_final_frame(begin: dict, dg: str) -> bytes:
    writer = frames.FrameWriter(frames.KIND_DATA,
                                compression.by_name("none"))
    body = [records.pack([records.BEGIN, begin])]
    body += [records.pack(r) for r in _file(b"x", b"abc", dg)]
    body.append(records.end({}))
    return writer.header() + writer.frame(b"".join(body))


#: name -> (crafted level from (BEGIN fields, digest name), error class,
#: what the line must say)
CASES = {
    "uid out of range": (
        lambda b, dg: sk.encode(_file(b"x", b"abc", dg, u=1 << 32), **b),
        "CorruptRecordError", "field 'u' out of range: 4294967296"),
    "negative gid": (
        lambda b, dg: sk.encode(_file(b"x", b"abc", dg, g=-1), **b),
        "CorruptRecordError", "field 'g' out of range: -1"),
    "mode with file type bits": (
        lambda b, dg: sk.encode(_file(b"x", b"abc", dg, m=0o100644), **b),
        "CorruptRecordError", "field 'm' out of range: 0o100644"),
    "negative mode": (
        lambda b, dg: sk.encode([sk.entry(b"d", "d", m=-1)], **b),
        "CorruptRecordError", "field 'm' out of range: -0o1"),
    "negative rdev": (
        lambda b, dg: sk.encode([sk.entry(b"c", "c", rd=-1)], **b),
        "CorruptRecordError", "field 'rd' out of range: -1"),
    "block length out of range": (
        lambda b, dg: sk.encode([sk.entry(b"x", "f", s=3, data="delta",
                                          bl=1 << 40, bs=3)], **b),
        "CorruptRecordError", "field 'bl' out of range"),
    "data after END": (
        lambda b, dg: sk.encode(_file(b"x", b"abc", dg) + [
            records.end({}), records.delete(b"x")], end=False, **b),
        "CorruptRecordError", "trailing bytes after END record"),
    "bytes after the final frame": (
        lambda b, dg: sk.encode(_file(b"x", b"abc", dg), **b) + b"\x00",
        "CorruptRecordError", "unexpected bytes after the final frame"),
    "missing final frame": (
        _no_final_frame,
        "TruncatedError", "without its final frame"),
    "cut inside a record": (
        lambda b, dg: sk.encode(_file(b"x", b"abc", dg), **b)[:-30],
        "TruncatedError", ""),
    "digest mismatch": (
        lambda b, dg: sk.encode(_file(b"x", b"abc", dg,
                                      digest=_digest(dg, b"abd")), **b),
        "IntegrityError", "digest"),
    "unsafe path": (
        lambda b, dg: sk.encode(_file(b"../sentinel/precious.txt", b"own",
                                      dg), **b),
        "UnsafePathError", "../sentinel/precious.txt"),
    "write through a symlink": (
        lambda b, dg: sk.encode([sk.entry(b"evil", "l", l=b"../sentinel")]
                                + _file(b"evil/precious.txt", b"own", dg),
                                **b),
        "UnsafePathError", "evil"),
    "hardlink to nothing": (
        lambda b, dg: sk.encode([sk.entry(b"h", "h", h=b"missing")], **b),
        "RestoreError", "not a restored file"),
}


@pytest.fixture
def crafted(tmp_path):
    """A container whose level 0 is replaced by ``put(case)``'s stream."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"alpha\n")
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "precious.txt").write_bytes(b"do not touch")
    container = str(tmp_path / "store")
    assert cli.main(["backup", "--path-to-backup", str(src), "--container",
                     container, "--backup-name", "n", "--hostname",
                     "h"]) == 0
    [data] = glob.glob(os.path.join(container, "data", "*", "h_n", "*",
                                    "0_*", "data"))
    [meta] = glob.glob(os.path.join(container, "metadata", "*", "h_n", "*",
                                    "0_*", "metadata"))
    with open(data, "rb") as f:
        begin = next(records.decode(frames.decode_frames(
            [f.read()], frames.KIND_DATA)))[1]
    dg = digests.of_level(begin)

    class Crafted:
        top = tmp_path
        dest = str(tmp_path / "restored")
        args = ["--container", container, "--backup-name", "n",
                "--hostname", "h"]
        before = sk.tree_state(str(tmp_path / "sentinel"))

        def put(self, case: str) -> None:
            """Store the case's level, and its size in the level's
            metadata (where the storage bounds what it reads)."""
            sk.replace_level(data, meta, CASES[case][0](dict(begin), dg))

        def check_outside(self) -> None:
            assert sk.tree_state(str(sentinel)) == self.before
            assert set(os.listdir(tmp_path)) - {"restored"} == {
                "sentinel", "src", "store"}
            if os.path.isdir(self.dest):
                for dirpath, _dirs, names in os.walk(self.dest):
                    for name in names:
                        assert not name.startswith(".rsyncv2-tmp-")
    return Crafted()


def _one_error_line(out: str, err: str, says: str) -> str:
    assert "Traceback" not in out + err
    assert "Exception in thread" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(PREFIX), line
    assert says in line, line
    # the line as the CLI prints it, and nowhere else
    assert (out + err).count("error:") == 1
    return line


@pytest.mark.parametrize("command", ["restore", "verify"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_prints_one_line_and_exits_1(crafted, capfd, monkeypatch, case, command):
    crafted.put(case)
    raised: list = []
    real = cli.COMMANDS[command]

    def spy(args, progress):
        """The command, noting the class of what it raised for main."""
        try:
            return real(args, progress)
        except BaseException as err:
            raised.append(type(err).__name__)
            raise
    monkeypatch.setitem(cli.COMMANDS, command, spy)
    capfd.readouterr()
    argv = [command] + crafted.args
    if command == "restore":
        argv += ["--restore-abs-path", crafted.dest]
    assert cli.main(argv) == 1
    out, err = capfd.readouterr()
    _one_error_line(out, err, CASES[case][2])
    assert raised == [CASES[case][1]]
    crafted.check_outside()
    if case == "digest mismatch" and command == "restore":
        assert not os.path.lexists(os.path.join(crafted.dest, "x"))


@pytest.mark.parametrize("case", ["uid out of range", "missing final frame"])
def test_cli_process_prints_no_traceback(crafted, case):
    """The same through a real process: what a user's terminal shows."""
    crafted.put(case)
    proc = subprocess.run(
        [sys.executable, "-m", "freezer_rsyncv2.cli", "restore",
         *crafted.args, "--restore-abs-path", crafted.dest],
        capture_output=True, text=True, timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))))
    assert proc.returncode == 1
    _one_error_line(proc.stdout, proc.stderr, CASES[case][2])
    crafted.check_outside()
