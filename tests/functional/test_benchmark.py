"""The benchmark script still runs end to end (tiny sizes; no timing is checked)."""

import os
import shutil
import subprocess
import sys


SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks",
                      "bench_delta.py")


def test_bench_delta_prints_its_table(tmp_path):
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--size", "1", "--cases", "random,chain",
         "--chain-size", "1", "--repeat", "1", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    # 1: some target missed, which is expected at this size
    assert proc.returncode in (0, 1), proc.stderr
    out = proc.stdout
    for op in ("ours level 0", "ours level 1", "ours restore 0+1",
               "ours restore levels 0..6", "peak RSS"):
        assert op in out
    if shutil.which("tar"):
        assert "tar -x" in out
    else:
        assert "tar is not installed" in out
    if shutil.which("rdiff"):
        assert "rdiff delta -b" in out
    else:
        assert "rdiff is not installed" in out
    assert "PASS" in out or "FAIL" in out
    assert os.listdir(tmp_path) == []       # its data is removed


def test_bench_delta_encrypted_case_on_s3(tmp_path):
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--size", "1", "--cases", "random,encrypted",
         "--repeat", "1", "--storage", "s3", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr
    out = proc.stdout
    assert "encryption: ours level 0 <= 1.1 x unencrypted" in out
    assert "encryption: ours level 1 <= 1.1 x unencrypted" in out
    for op in ("level 0", "level 1"):
        assert "encryption, ours %s:" % op in out
        assert "waiting for the key derivation" in out
    assert "storage s3" in out
    assert os.listdir(tmp_path) == []
