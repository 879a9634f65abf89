"""The small-files benchmark runs end to end (tiny sizes; no timing is checked).

Runs ``benchmarks/bench_tree.py`` in its smallest mode.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks")
SCRIPT = os.path.join(HERE, "bench_tree.py")
ROWS = ("small files: level 0", "small files: level 1, 1 % appended", "small files: restore latest",
        "small files: level 2, no change", "source update: level 0 of v1",
        "source update: level 1 of v2")


def import_bench_tree():
    sys.path.insert(0, HERE)
    try:
        import bench_tree
    finally:
        sys.path.remove(HERE)
    return bench_tree


def cli():
    beside = os.path.join(os.path.dirname(sys.executable), "freezer-rsyncv2")
    return beside if os.access(beside, os.X_OK) else shutil.which("freezer-rsyncv2")


@pytest.mark.skipif(not cli(), reason="the freezer-rsyncv2 command is not installed")
def test_bench_tree_ours_prints_its_rows(tmp_path):
    # PATH holds rsync and zstd, not restic nor borg: they are skipped
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for exe in ("rsync", "zstd"):
        if shutil.which(exe):
            os.symlink(shutil.which(exe), str(bindir / exe))
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--files", "300", "--source-files", "120", "--changed", "4",
         "--workdir", str(work)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, PATH=str(bindir)))
    # 1: some target missed, which is expected at this size; 2 would be a
    # tool failure or a restore that differs
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    assert os.listdir(work) == []           # its data is removed
    out = proc.stdout
    for row in ROWS:
        assert re.search(r"^%s +ours +\d+\.\d+ +([\d,]+|-) +\d+$" % re.escape(row), out, re.M), out
    assert "ours restore: identical to the source (300 files, " in out
    assert "restic is not installed: skipped" in out
    assert "borg is not installed: skipped" in out
    assert not re.search(r" (borg|restic) +\d", out)
    assert re.search(r"^small files: ours level 0 time <= 1.0 x restic's .*n/a \(restic not installed\)$",
                     out, re.M)
    assert re.search(r"^no change: ours level stored < 64 KiB .*(PASS|FAIL)$", out, re.M)
    assert re.search(r"^ours peak RSS <= 150 MB in every step .*(PASS|FAIL)$", out, re.M)
    if shutil.which("rsync") and shutil.which("zstd"):
        assert re.search(r"^source update: level 1 of v2 +rsync batch, zstd -3 +\d", out, re.M)
        assert re.search(r"^source update: ours level 1 bytes <= 1.0 x rsync's batch after zstd -3 "
                         r".*(PASS|FAIL)$", out, re.M)


def test_bench_tree_compare_trees_finds_a_difference(tmp_path):
    bench_tree = import_bench_tree()
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    paths = bench_tree.write_small_tree(a, 90, 5)
    assert len(paths) == 90 and len({os.path.dirname(p) for p in paths}) == 3
    shutil.copytree(a, b)
    assert bench_tree.compare_trees(a, b) == (None, 90, bench_tree.tree_bytes(a))
    victim = os.path.join(b, os.path.relpath(paths[7], a))
    with open(victim, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 1]))       # same size, one bit
    assert "differs" in bench_tree.compare_trees(a, b)[0]
    os.remove(victim)
    assert "files missing" in bench_tree.compare_trees(a, b)[0]
    os.makedirs(os.path.join(b, "extra"))
    assert "directories missing [], extra ['extra']" in bench_tree.compare_trees(a, b)[0]


def test_bench_tree_source_versions_differ_in_the_edited_files(tmp_path):
    bench_tree = import_bench_tree()
    v1, v2 = str(tmp_path / "v1"), str(tmp_path / "v2")
    bench_tree.write_source_trees(v1, v2, 150, 6, 3)
    files = [os.path.relpath(os.path.join(top, n), v1)
             for top, _dirs, names in os.walk(v1) for n in names]
    assert len(files) == 150
    assert any(f.endswith(".po") for f in files) and any(f.endswith(".py") for f in files)
    changed = [f for f in files if not bench_tree.same_content(os.path.join(v1, f), os.path.join(v2, f))]
    assert 1 <= len(changed) <= 6            # an edit may, rarely, leave a file as it was
    for f in files:
        assert os.stat(os.path.join(v1, f)).st_mtime_ns != os.stat(os.path.join(v2, f)).st_mtime_ns
