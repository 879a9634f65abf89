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
