"""Names that could forge log lines or drive a terminal never reach it raw.

Hostile storage, round 2 (finding 7): a stored path is attacker data, and so
is a file name on the backup side.  Whatever it holds (a newline, a carriage
return, ESC sequences, a C1 CSI, bytes that are not UTF-8), every line the
command line prints, log lines, warnings and errors included, must be one
printable line: the name escaped (``safepath.escape``), never raw.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import socket
import subprocess
import sys

import pytest

from freezer_rsyncv2 import cli, cli_output
from freezer_rsyncv2.fs import safepath, walk
from freezer_rsyncv2.stream import frames, records
from tests.hostile import streamkit as sk

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

#: raw names, and how each must read once escaped
NASTY = {
    b"new\nline": "new\\nline",
    b"carriage\rreturn": "carriage\\rreturn",
    b"clear\x1b[2Jscreen": "clear\\x1b[2Jscreen",
    b"c1-csi\xc2\x9b31m": "c1-csi\\x9b31m",       # U+009B, UTF-8 encoded
    b"raw-csi\x9b31m": "raw-csi\\x9b31m",          # a lone 0x9b byte
    b"bad\xff\xfeutf8": "bad\\xff\\xfeutf8",
    b"bell\x07del\x7f": "bell\\x07del\\x7f",
    b"tab\tsep\xe2\x80\xa8x": "tab\\tsep\\u2028x",  # U+2028 LINE SEPARATOR
    b"bidi\xe2\x80\xaeevil": "bidi\\u202eevil",     # RIGHT-TO-LEFT OVERRIDE
    b"back\\slash": "back\\\\slash",
    b"caf\xc3\xa9 ok": "caf\u00e9 ok",             # printable: as is
}


# -- the one quoting function ---------------------------------------------

@pytest.mark.parametrize("raw", sorted(NASTY))
def test_escape_makes_one_printable_line(raw):
    assert safepath.escape(raw) == NASTY[raw]
    assert safepath.escape(os.fsdecode(raw)) == NASTY[raw]
    assert walk.show_path(raw) == NASTY[raw]
    assert safepath.show(raw) == "'" + NASTY[raw] + "'"
    assert safepath.escape(raw).isprintable()


def test_escape_keeps_backslashes_of_escaped_messages():
    message = "cannot write %s: denied" % safepath.show(b"a\nb\\c")
    assert message == "cannot write 'a\\nb\\\\c': denied"
    assert safepath.escape(message, backslash=False) == message
    assert safepath.escape("x\ny\\n", backslash=False) == "x\\ny\\n"


def test_show_is_bounded():
    shown = safepath.show(b"\x1b" * 5000)
    assert shown == "'" + "\\x1b" * 300 + "...'"


def test_every_byte_and_code_point_class_is_printable_once_escaped():
    raw = bytes(range(256))
    assert safepath.escape(raw).isprintable()
    text = "".join(map(chr, range(0, 0x3000)))
    assert safepath.escape(text).isprintable()
    assert safepath.escape(text, backslash=False).isprintable()


def test_log_filter_escapes_any_message():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(cli_output.OneLineLogFilter())
    logger = logging.getLogger("test-hostile-names")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("%s: %s", os.fsdecode(b"a\n\x1b[2J\xff"), "raw")
        logger.warning("plain %d", 3)
    finally:
        logger.removeHandler(handler)
    assert out.getvalue() == "a\\n\\x1b[2J\\xff: raw\nplain 3\n"


def test_log_formatter_escapes_exceptions_line_by_line():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(cli_output.PrintableFormatter(None))
    logger = logging.getLogger("test-hostile-names-exc")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError("bad \x1b[2J\x9b " + os.fsdecode(b"\xff"))
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "ValueError: bad \\x1b[2J\\x9b \\xff" in text
    assert all(line.isprintable() for line in text.split("\n"))
    assert len(text.split("\n")) > 3          # the traceback keeps its lines


def test_tty_progress_line_escapes_the_phase_name():
    out = io.StringIO()
    progress = cli_output.TtyProgress(out)
    progress.phase("restore level \x1b[2J\n")
    progress.entry(b"x\x1b[2J\n", "restored")
    progress.close()
    text = out.getvalue()
    assert "\x1b" not in text and text.count("\n") == 1
    assert "restore level \\x1b[2J\\n" in text


# -- through the command line -----------------------------------------------

def run_cli(*argv: str) -> tuple[int, list[str]]:
    """Run the command line in a child; its output as lines, each checked."""
    proc = subprocess.run(
        [sys.executable, "-m", "freezer_rsyncv2.cli", *argv, "--debug"],
        cwd=REPO, capture_output=True, timeout=300)
    lines = []
    for stream in (proc.stdout, proc.stderr):
        text = stream.decode("utf-8")    # strict: nothing undecodable
        for line in text.split("\n"):
            assert line.isprintable(), repr(line)
            lines.append(line)
    return proc.returncode, lines


@pytest.fixture
def box(tmp_path):
    """A source full of nasty names, and the CLI arguments around it."""
    src = tmp_path / "src"
    src.mkdir()
    for raw in NASTY:
        path = os.path.join(os.fsencode(src), raw)
        os.mkdir(path)
        with open(os.path.join(path, raw), "wb") as f:
            f.write(raw)
    # A socket is skipped with a warning that names it.
    sock = socket.socket(socket.AF_UNIX)
    sock_path = os.path.join(os.fsencode(src), b"sock\n\x1b[2J\xff")
    try:
        sock.bind(sock_path)
    finally:
        sock.close()

    class Box:
        top = tmp_path
        source = str(src)
        container = str(tmp_path / "store")
        dest = str(tmp_path / "restored")
        names = ["--container", container, "--backup-name", "n",
                 "--hostname", "h"]
    return Box()


def test_backup_and_restore_of_nasty_names(box):
    code, lines = run_cli("backup", "--path-to-backup", box.source,
                          *box.names)
    assert code == cli.EXIT_WARNINGS        # the socket
    [warning] = [line for line in lines if "socket skipped" in line]
    assert "sock\\n\\x1b[2J\\xff: socket skipped" in warning
    code, lines = run_cli("restore", "--restore-abs-path", box.dest,
                          *box.names)
    assert code == 0, lines
    for raw in NASTY:
        with open(os.path.join(os.fsencode(box.dest), raw, raw), "rb") as f:
            assert f.read() == raw
    code, lines = run_cli("list", "--container", box.container)
    assert code == 0 and "h_n" in lines


def craft(box, recs: list) -> None:
    """Replace level 0's data by ``recs`` (same BEGIN, so only the
    records differ) and declare its size in the level's metadata."""
    [data] = glob.glob(os.path.join(box.container, "data", "*", "h_n", "*",
                                    "0_*", "data"))
    [meta] = glob.glob(os.path.join(box.container, "metadata", "*", "h_n",
                                    "*", "0_*", "metadata"))
    with open(data, "rb") as f:
        begin = next(records.decode(frames.decode_frames(
            [f.read()], frames.KIND_DATA)))[1]
    sk.replace_level(data, meta, sk.encode(recs, **begin))


def test_restore_warnings_and_errors_naming_nasty_paths(box):
    os.unlink(os.path.join(os.fsencode(box.source), b"sock\n\x1b[2J\xff"))
    code, lines = run_cli("backup", "--path-to-backup", box.source,
                          *box.names)
    assert code == 0, lines
    nasty = sorted(NASTY)
    # A warning per symlink (xattrs cannot be set on one), then an error
    # naming two nasty paths.
    recs = [sk.entry(raw, "l", l=b"target\n\x1b[2J", x={b"user.a": b"1"})
            for raw in nasty]
    recs.append(sk.entry(b"h\x1b]0;title\x07\n", "h",
                         h=b"missing\x9b\r\xff"))
    craft(box, recs)
    code, lines = run_cli("restore", "--restore-abs-path", box.dest,
                          *box.names)
    assert code == 1
    warned = [line for line in lines
              if "xattrs on a symlink not restored" in line]
    assert len(warned) == len(nasty)
    for raw in nasty:
        # A backslash is printable: doubled where the name is escaped as
        # a name (show_path), kept where a message is (the log filter).
        forms = {NASTY[raw], NASTY[raw].replace("\\\\", "\\")}
        assert any(form + ": xattrs" in line
                   for line in warned for form in forms), raw
    [error] = [line for line in lines
               if line.startswith("freezer-rsyncv2: error:")]
    assert "'h\\x1b]0;title\\x07\\n'" in error
    assert "'missing\\x9b\\r\\xff'" in error
    code, lines = run_cli("verify", *box.names)
    assert code in (0, 1)                  # each line checked by run_cli
