"""Child process of the benchmark: runs one engine operation and prints its timing as JSON."""

from __future__ import annotations

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# Measure the checkout this script belongs to, not an installed copy.
sys.path[:0] = [os.path.dirname(HERE), HERE]

import bench_storage  # noqa: E402
from freezer_rsyncv2.engine.rsyncv2 import Rsyncv2Engine  # noqa: E402
from freezer_rsyncv2.stream import kdf  # noqa: E402


def main(spec: dict) -> dict:
    result = operation(spec)
    keys = kdf.stats()
    result.update(key_wait=keys["wait_seconds"], key_derive=keys["derive_seconds"])
    return result


def operation(spec: dict) -> dict:
    segment = spec["max_segment_size"]
    engine = Rsyncv2Engine(storage=bench_storage.build(spec["storage"], segment),
                           compression=spec.get("compression", "none"),
                           max_segment_size=segment,
                           rsync_block_size=spec.get("block_size"),
                           encrypt_key=spec.get("encrypt_key"))
    start = time.perf_counter()
    if spec["op"] == "backup":
        level = engine.backup(spec["source"], spec["name"], incremental=True,
                              max_level=1000, always_level=None,
                              restart_always_level=None)
        seconds = time.perf_counter() - start
        summary = engine.last_summary
        return {"seconds": seconds, "level": level,
                "stored": summary.stored_bytes if summary else None,
                "manifest": summary.manifest_bytes if summary else None}
    if spec["op"] == "restore":
        level = engine.restore(spec["name"], spec["dest"], overwrite=True,
                               recent_to_date=spec.get("until"))
        return {"seconds": time.perf_counter() - start, "level": level}
    raise ValueError("unknown op %r" % spec["op"])


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
