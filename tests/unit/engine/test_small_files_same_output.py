"""Levels of a tree of small files: the one-go small-file signature changes no stored byte.

The same tree is backed up (level 0, then a level 1 after some files
changed) with the small-file path and with it turned off; the data records
and the manifests must be identical.
"""

import os
import random

from freezer_rsyncv2 import config as cfgmod
from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2 import manifest_writer as mw
from freezer_rsyncv2 import progress as prog
from freezer_rsyncv2.engine import backup_pass
from freezer_rsyncv2.rsync import signature as rsig
from freezer_rsyncv2.stream import compression


def _make_tree(src, rng):
    src.mkdir()
    for i in range(120):
        size = rng.randrange(0, 20 * 1024 + 1) if i % 7 else [0, 1, 699, 700, 701, 1400][i % 6]
        kind = i % 5
        if kind == 0:
            data = bytes(size)
        elif kind == 1:
            data = (b"line %d of a source file\n" % i * (size // 20 + 1))[:size]
        else:
            data = rng.randbytes(size)
        path = src / f"d{i % 4}" / f"f{i:03}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        if i % 11 == 3:     # a file with a hole (sparse where the file system can)
            with open(path, "r+b") as f:
                f.seek(size + rng.randrange(4096, 12000))
                f.write(rng.randbytes(rng.randrange(1, 3000)))


def _change(src, rng):
    for n, path in enumerate(sorted(p for p in src.rglob("f*"))):
        if n % 3 == 0:
            with open(path, "ab") as f:
                f.write(rng.randbytes(rng.randrange(1, 900)))
        elif n % 3 == 1:
            data = bytearray(path.read_bytes())
            if data:
                data[rng.randrange(len(data))] ^= 0xFF
                path.write_bytes(bytes(data))
        os.utime(path, ns=(10**18 + n, 10**18 + n))


def _level(src, out, level, previous):
    manifest = out / f"manifest-{level}"
    writer = mw.ManifestWriter(str(manifest), compression.by_name("zstd"), level=level)
    bpass = backup_pass.BackupPass(cfgmod.EngineConfig(), str(src), previous, writer, level,
                                   prog.Summary(level=level))
    data = list(bpass.records())
    writer.close()
    return data, manifest.read_bytes()


def _both(src, out, level, previous, monkeypatch):
    """The level made with the small-file path, then without it (the tree unchanged in between)."""
    _level(src, out / "warm-up", level, previous)       # access times settle (relatime)
    taken = []
    one_go = rsig._small_signature
    with monkeypatch.context() as patch:
        patch.setattr(rsig, "_small_signature", lambda *args: taken.append(one_go(*args)) or taken[-1])
        fast = _level(src, out / "fast", level, previous)
    # most files changed or new above 4 KiB took the small path (touched ones are found by their digest)
    assert sum(sig is not None for sig in taken) > 40
    with monkeypatch.context() as patch:
        patch.setattr(rsig, "SMALL_FILE", -1)       # every file through the general path
        general = _level(src, out / "general", level, previous)
    return fast, general


def test_small_path_changes_no_stored_byte(tmp_path, monkeypatch):
    src, out = tmp_path / "src", tmp_path / "out"
    for name in ("warm-up", "fast", "general"):
        (out / name).mkdir(parents=True)
    _make_tree(src, random.Random(1))
    fast, general = _both(src, out, 0, [], monkeypatch)
    assert fast == general
    _change(src, random.Random(2))
    previous = list(mf.overlay_lazy([str(out / "fast" / "manifest-0")]))
    fast, general = _both(src, out, 1, previous, monkeypatch)
    assert fast == general
