"""Small files carry no block signature: unchanged ones stay unchanged, changed ones go whole."""

import os

from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2.engine import file_reader
from freezer_rsyncv2.stream import records
from tests.functional import treeutil
from tests.functional.conftest import backup, restore


def _manifest_records(container, level):
    for root, _dirs, files in os.walk(os.path.join(container, "data")):
        if os.path.basename(root).startswith(f"{level}_"):
            return {r[1].path: r[2] for r in mf.read(os.path.join(root, "engine_metadata"))
                    if r[0] == records.MANIFEST}
    raise AssertionError(f"no level {level}")


def test_small_files_across_levels(make_engine, src, restore_dir):
    small, big = os.path.join(src, "small.txt"), os.path.join(src, "big.bin")
    treeutil.write(small, b"s" * (file_reader.SIGNED_MIN - 1))
    treeutil.write(big, os.urandom(file_reader.SIGNED_MIN * 4))
    backup(make_engine(), src)
    zero = _manifest_records(make_engine.container, 0)
    assert zero[b"small.txt"]["sg"] == records.SIG_NONE and zero[b"big.bin"]["sg"] == records.SIG_FULL
    # Unchanged: no record at all; touched: a change entry; rewritten: whole.
    engine = make_engine()
    backup(engine, src)
    assert engine.last_summary.files_unchanged == 2
    os.utime(small, ns=(1, 2_000_000_000_000_000_000))
    engine = make_engine()
    backup(engine, src)
    assert engine.last_summary.files_meta == 1 and engine.last_summary.literal_bytes == 0
    two = _manifest_records(make_engine.container, 2)[b"small.txt"]
    assert {"p", "k", "mt"} <= two["dm"] and "sg" not in two and "dg" not in two
    with open(small, "r+b") as f:
        f.write(b"edited")
    engine = make_engine()
    backup(engine, src)
    three = _manifest_records(make_engine.container, 3)[b"small.txt"]
    assert three["sg"] == records.SIG_NONE and three["da"] == records.DATA_FULL
    assert engine.last_summary.files_changed == 1
    dest = restore_dir()
    restore(make_engine(), dest)
    assert treeutil.snapshot(dest) == treeutil.snapshot(src)
