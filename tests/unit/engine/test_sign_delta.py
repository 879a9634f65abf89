"""get_sign_delta, the seed engine's entry point: records onto a queue, manifest on disk."""

import os
import queue

from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2.engine import rsyncv2
from freezer_rsyncv2.stream import records


def test_get_sign_delta_queues_records_and_writes_the_manifest(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.txt").write_bytes(b"alpha" * 1000)
    manifest_path = str(tmp_path / "engine_meta")
    q = queue.Queue()
    engine = rsyncv2.Rsyncv2Engine(compression="none")
    engine.get_sign_delta(str(src), manifest_path, q)
    batches = []
    while not q.empty():
        batches.append(q.get_nowait())
    assert all(isinstance(piece, bytes) for b in batches for piece in b)
    recs = list(records.decode(b"".join(b) for b in batches))
    entries = [r[1].path for r in recs if r[0] == records.ENTRY]
    assert entries == [b"d", b"d/a.txt"]
    data = b"".join(r[1] for r in recs if r[0] == records.LITERAL)
    assert data == b"alpha" * 1000
    paths = [r[1].path for r in mf.read(manifest_path)]
    assert paths == [b"d", b"d/a.txt"]
    assert engine.last_summary.files_new == 1
    assert not os.path.exists(manifest_path + ".new")
