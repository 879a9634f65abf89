"""Backups written by format version 3 still restore (whole and in part), verify and extend.

``tests/data/format-v3/container`` was written by the release before
version 4 (``Rsyncv2Engine(compression="zstd")``, local storage, two levels)
from the tree ``build`` makes, changed by ``change`` between the levels: a
file edited in place, a big file renamed, one deleted, one with a new mode
only, a name that is not UTF-8.
"""

import os
import random
import shutil

from freezer_rsyncv2 import partial
from freezer_rsyncv2 import verify as verify_mod
from freezer_rsyncv2.engine import rsyncv2
from freezer_rsyncv2.storage import local
from freezer_rsyncv2.stream import frames
from tests.functional import treeutil

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "data", "format-v3", "container")
NAME = "fixture_v3"
T0 = 1_650_000_000_000_000_000
T1 = 1_650_000_100_000_000_000
LATIN = "caf\udce9.txt"         # b"caf\xe9.txt": not UTF-8


def build(root, level):
    """The source tree as it was at level 0 (``level`` 0) or level 1 (1) of the fixture."""
    for d in ("docs", "big"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    files = {"docs/a.txt": b"alpha\n", "docs/b.txt": b"bravo\n" * 100, LATIN: b"latin-1 name\n",
             "gone.txt": b"deleted at level 1\n", "mode.txt": b"mode changes\n"}
    for rel, data in files.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    with open(os.path.join(root, "big", "old-name.bin"), "wb") as f:
        f.write(random.Random(3).randbytes(200_000))
    image = os.path.join(root, "big", "image.bin")
    with open(image, "wb") as f:
        f.truncate(3 << 20)
        os.pwrite(f.fileno(), random.Random(4).randbytes(40_000), 0)
        os.pwrite(f.fileno(), random.Random(5).randbytes(20_000), 2 << 20)
    os.chmod(os.path.join(root, "mode.txt"), 0o644)
    if not os.path.lexists(os.path.join(root, "link")):
        os.symlink("docs/a.txt", os.path.join(root, "link"))
    for rel in [*files, "big/old-name.bin", "big/image.bin", "link"]:
        os.utime(os.path.join(root, rel), ns=(T0, T0), follow_symlinks=False)
    if level >= 1:
        change(root)


def change(root):
    """From level 0 to level 1, in place (the rename keeps its inode)."""
    image = os.path.join(root, "big", "image.bin")
    with open(image, "r+b") as f:
        os.pwrite(f.fileno(), random.Random(6).randbytes(5000), 10_000)
    os.utime(image, ns=(T1, T1))
    os.rename(os.path.join(root, "big", "old-name.bin"), os.path.join(root, "big", "new-name.bin"))
    os.unlink(os.path.join(root, "gone.txt"))
    os.chmod(os.path.join(root, "mode.txt"), 0o600)
    with open(os.path.join(root, "docs", "c.txt"), "wb") as f:
        f.write(b"charlie, added at level 1\n")
    os.utime(os.path.join(root, "docs", "c.txt"), ns=(T1, T1))


def _engine(container):
    return rsyncv2.Rsyncv2Engine(storage=local.LocalStorage(container), compression="zstd")


def _files(root):
    """path -> (kind, content or target, permission bits) of everything below root."""
    out = {}
    for top, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(top, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if os.path.islink(path):
                out[rel] = ("l", os.readlink(path), None)
            elif os.path.isdir(path):
                out[rel] = ("d", None, st.st_mode & 0o7777)
            else:
                with open(path, "rb") as f:
                    out[rel] = ("f", f.read(), st.st_mode & 0o7777)
    return out


def _container(tmp_path):
    container = str(tmp_path / "container")
    shutil.copytree(FIXTURE, container, symlinks=True)
    return container


def test_version_3_chain_restores_and_verifies(tmp_path):
    container = _container(tmp_path)
    assert [treeutil.level_meta(container, n)["format_version"] for n in (0, 1)] == [3, 3]
    expected = str(tmp_path / "expected")
    build(expected, 1)
    dest = str(tmp_path / "restored")
    _engine(container).restore(NAME, dest, False, None, "fs")
    assert _files(dest) == _files(expected)
    assert not os.path.exists(os.path.join(dest, "big", "old-name.bin"))
    assert verify_mod.verify(_engine(container), NAME).levels == [0, 1]


def test_version_3_chain_restores_in_part(tmp_path):
    """Levels without an index are read whole, and only the asked paths are written."""
    container = _container(tmp_path)
    expected = _files(_built(tmp_path))
    dest = str(tmp_path / "restored")
    partial.restore(_engine(container), NAME, dest, ["big/image.bin", "mode.txt", "docs/*.txt"])
    got = _files(dest)
    assert sorted(got) == ["big", "big/image.bin", "docs", "docs/a.txt", "docs/b.txt", "docs/c.txt", "mode.txt"]
    assert {k: v for k, v in got.items() if v[0] == "f"} == {k: expected[k] for k in got if expected[k][0] == "f"}


def test_version_3_chain_is_extended_by_version_4_levels(tmp_path):
    container = _container(tmp_path)
    src = _built(tmp_path)
    image = os.path.join(src, "big", "image.bin")
    with open(image, "r+b") as f:
        os.pwrite(f.fileno(), random.Random(9).randbytes(3000), (2 << 20) + 7)
    os.utime(image, ns=(T1 + 10**9, T1 + 10**9))
    os.chmod(os.path.join(src, "docs", "a.txt"), 0o640)
    engine = _engine(container)
    assert engine.backup(src, NAME, True, None, None, None) == 2
    assert treeutil.level_meta(container, 2)["format_version"] == frames.VERSION == 4
    # the edit went as a delta over the version-3 signature
    assert engine.last_summary.literal_bytes < 16 << 10
    os.rename(os.path.join(src, "big", "new-name.bin"), os.path.join(src, "big", "third-name.bin"))
    engine = _engine(container)
    assert engine.backup(src, NAME, True, None, None, None) == 3
    assert engine.last_summary.literal_bytes == 0       # a rename, found by its inode
    dest = str(tmp_path / "restored")
    _engine(container).restore(NAME, dest, False, None, "fs")
    assert _files(dest) == _files(src)
    assert verify_mod.verify(_engine(container), NAME).levels == [0, 1, 2, 3]
    # renamed at level 1 (version 3) and at level 3 (version 4)
    one = str(tmp_path / "one")
    partial.restore(_engine(container), NAME, one, ["big/third-name.bin"])
    assert _files(one) == {"big": _files(src)["big"], "big/third-name.bin": _files(src)["big/third-name.bin"]}


def _built(tmp_path):
    """The tree of level 1, built as the fixture's source was: level 0, then changed in place."""
    src = str(tmp_path / "src")
    build(src, 1)
    return src
