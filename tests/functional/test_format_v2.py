"""Backups written by format version 2 still restore, verify and extend.

``tests/data/format-v2/container`` was written by the release before
version 3 (``freezer-rsyncv2 backup --hostname fixture --backup-name v2
--compression zstd``, two levels) from the tree that ``_tree`` rebuilds.
"""

import os
import random
import shutil

from freezer_rsyncv2 import verify as verify_mod
from freezer_rsyncv2.engine import rsyncv2
from freezer_rsyncv2.storage import local
from freezer_rsyncv2.stream import frames
from tests.functional import treeutil

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "data", "format-v2",
                       "container")
NAME = "fixture_v2"
T0 = 1_600_000_000_000_000_000
T1 = 1_600_000_100_000_000_000


def _tree(root, level):
    """The source tree as it was at ``level`` of the fixture."""
    os.makedirs(os.path.join(root, "dir"), exist_ok=True)
    r = random.Random(7)
    small = os.path.join(root, "small.txt")
    with open(small, "wb") as f:
        f.write(b"hello version 2\n")
    image = os.path.join(root, "dir", "image.bin")
    with open(image, "wb") as f:
        f.truncate(3 << 20)
        os.pwrite(f.fileno(), r.randbytes(30000), 0)
        os.pwrite(f.fileno(), r.randbytes(20000), 2 << 20)
    if not os.path.lexists(os.path.join(root, "link")):
        os.symlink("small.txt", os.path.join(root, "link"))
    for p in (small, image, os.path.join(root, "link")):
        os.utime(p, ns=(T0, T0), follow_symlinks=False)
    if level >= 1:
        with open(image, "r+b") as f:
            os.pwrite(f.fileno(), random.Random(8).randbytes(5000), 10000)
        with open(os.path.join(root, "new.txt"), "wb") as f:
            f.write(b"added at level 1\n")
        os.utime(image, ns=(T1, T1))
        os.utime(os.path.join(root, "new.txt"), ns=(T1, T1))


def _engine(container, **kw):
    return rsyncv2.Rsyncv2Engine(storage=local.LocalStorage(container),
                                 compression="zstd", **kw)


def _content(root):
    snap = treeutil.snapshot(root, times=False)
    return {path: value for path, value in snap.items() if path != "."}


def _container(tmp_path):
    container = str(tmp_path / "container")
    shutil.copytree(FIXTURE, container, symlinks=True)
    return container


def test_version_2_chain_restores_and_verifies(tmp_path):
    container = _container(tmp_path)
    assert treeutil.level_meta(container, 1)["format_version"] == 2
    expected = str(tmp_path / "expected")
    _tree(expected, 1)
    dest = str(tmp_path / "restored")
    _engine(container).restore(NAME, dest, False, None, "fs")
    assert _content(dest) == _content(expected)
    assert os.stat(os.path.join(dest, "dir", "image.bin")).st_mtime_ns == T1
    assert verify_mod.verify(_engine(container), NAME).levels == [0, 1]


def test_version_2_chain_is_extended_by_newer_levels(tmp_path):
    container = _container(tmp_path)
    src = str(tmp_path / "src")
    _tree(src, 1)
    image = os.path.join(src, "dir", "image.bin")
    with open(image, "r+b") as f:
        os.pwrite(f.fileno(), random.Random(9).randbytes(3000), (2 << 20) + 7)
        os.pwrite(f.fileno(), random.Random(10).randbytes(4096), 1 << 20)
    os.utime(image, ns=(T1 + 10**9, T1 + 10**9))
    os.unlink(os.path.join(src, "small.txt"))
    engine = _engine(container)
    assert engine.backup(src, NAME, True, None, None, None) == 2
    assert treeutil.level_meta(container, 2)["format_version"] == frames.VERSION
    # the changed image went as a delta over the version-2 signature
    assert engine.last_summary.literal_bytes < 16 << 10
    with open(image, "ab") as f:
        f.write(b"level 3")
    os.utime(image, ns=(T1 + 2 * 10**9, T1 + 2 * 10**9))
    assert _engine(container).backup(src, NAME, True, None, None, None) == 3
    dest = str(tmp_path / "restored")
    _engine(container).restore(NAME, dest, False, None, "fs")
    assert _content(dest) == _content(src)
    assert verify_mod.verify(_engine(container), NAME).levels == [0, 1, 2, 3]
