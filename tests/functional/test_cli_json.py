"""--json on backup and verify: one JSON document on stdout, logs elsewhere."""

from __future__ import annotations

import json
import os
from typing import Any

from freezer_rsyncv2 import cli
from freezer_rsyncv2.engine import file_reader
from tests.functional import treeutil


def run(*argv: Any) -> int:
    return cli.main([str(a) for a in argv])


def test_backup_and_verify_print_one_json_document(tmp_path: Any, clock: Any, capsys: Any) -> None:
    src = tmp_path / "src"
    treeutil.write(str(src / "a.txt"), b"alpha\n")
    treeutil.write(str(src / "d/b.bin"), os.urandom(50000))
    base = ["--container", tmp_path / "store", "--backup-name", "n", "--hostname", "h"]
    capsys.readouterr()
    assert run("backup", "--path-to-backup", src, *base, "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["backup"], doc["level"], doc["dry_run"]) == ("h_n", 0, False)
    summary = doc["summary"]
    assert (summary["files_new"], summary["entries"], summary["warnings"], summary["partial"]) == (2, 3, [], False)
    assert summary["literal_bytes"] == 50006 and summary["stored_bytes"] > 0

    treeutil.write(str(src / "a.txt"), b"alpha, changed\n", mtime_ns=3 * 10**18)
    assert run("backup", "--path-to-backup", src, *base, "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["level"] == 1 and doc["summary"]["files_changed"] == 1

    assert run("verify", *base, "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["backup"], doc["levels"]) == ("h_n", [0, 1]) and doc["manifest_entries"] >= 3


def test_backup_json_lists_its_warnings(tmp_path: Any, clock: Any, capsys: Any, monkeypatch: Any) -> None:
    src = tmp_path / "src"
    treeutil.write(str(src / "moving\xe9.bin".encode("latin-1").decode("utf-8", "surrogateescape")),
                   os.urandom(20000))
    original = file_reader.read_range

    def shrinking(fd, offset, length, step, path, warn):
        for chunk in original(fd, offset, length, step, path, warn):
            os.truncate(os.path.join(os.fsencode(src), path), 10)
            yield chunk
    monkeypatch.setattr(file_reader, "read_range", shrinking)
    capsys.readouterr()
    assert run("backup", "--path-to-backup", src, "--container", tmp_path / "store", "--backup-name", "n",
               "--hostname", "h", "--json") == 3
    doc = json.loads(capsys.readouterr().out)
    (warning,) = doc["summary"]["warnings"]
    assert warning["path_base64"] == "bW92aW5n6S5iaW4="       # b"moving\xe9.bin", not UTF-8
    assert "changed while being read" in warning["message"] and doc["summary"]["partial"] is True


def test_a_summary_keeps_the_first_warnings_and_counts_them_all(
        tmp_path: Any, clock: Any, capsys: Any, monkeypatch: Any) -> None:
    import socket

    from freezer_rsyncv2 import progress
    monkeypatch.setattr(progress, "KEPT_WARNINGS", 2)
    src = tmp_path / "src"
    treeutil.write(str(src / "a.txt"), b"alpha\n")
    sockets = []
    for i in range(5):          # each is skipped with a warning
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(src / f"s{i}"))
        sockets.append(sock)
    capsys.readouterr()
    try:
        assert run("backup", "--path-to-backup", src, "--container", tmp_path / "store", "--backup-name", "n",
                   "--hostname", "h", "--json") == 3
    finally:
        for sock in sockets:
            sock.close()
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert [w["path"] for w in summary["warnings"]] == ["s0", "s1"]
    assert summary["warnings_left_out"] == 3 and summary["partial"] is True and summary["files_new"] == 1
