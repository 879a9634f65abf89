"""What a restore and a walk keep per entry: directories finished as the stream leaves them, hardlink groups
dropped once complete, the paths of a level in a spill file rather than a set."""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any

import pytest

from freezer_rsyncv2.engine.restore_pass import SeenPaths
from freezer_rsyncv2.fs import entry as E
from freezer_rsyncv2.fs import walk as fswalk
from freezer_rsyncv2.fs.restore import RestoreTree
from tests.unit.fs import entrykit

MTIME = 1_234_567_890_123_456_789


def entry(path: bytes, kind: str = E.KIND_FILE, **kw: Any) -> E.Entry:
    return entrykit.entry(path, kind, **{"mtime_ns": MTIME, "atime_ns": MTIME, **kw})


def put(tree: RestoreTree, path: bytes, data: bytes = b"data") -> None:
    tree.reached(path)
    tree.write_file(entry(path, size=len(data)), [data], hashlib.sha256(data).digest())


def mkdir(tree: RestoreTree, path: bytes, **kw: Any) -> None:
    tree.reached(path)
    tree.make_dir(entry(path, E.KIND_DIR, **{"mode": 0o755, **kw}))


def pending(tree: RestoreTree) -> set[bytes]:
    return set(tree._dirs) | set(tree._parent_times)


@pytest.fixture
def target(tmp_path):
    return tmp_path / "restore"


def test_a_directory_is_finished_when_the_stream_leaves_it(target):
    with RestoreTree(target) as tree:
        mkdir(tree, b"a", mode=0o750)
        put(tree, b"a/f")
        mkdir(tree, b"a/s", mode=0o710)
        put(tree, b"a/s/g")
        assert pending(tree) == {b"a", b"a/s"}
        put(tree, b"a/z")      # left a/s, still in a
        assert pending(tree) == {b"a"}
        st = os.lstat(target / "a" / "s")
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o710, MTIME)
        put(tree, b"b")
        assert pending(tree) == set()
        st = os.lstat(target / "a")
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o750, MTIME)
    assert os.lstat(target / "a").st_mtime_ns == MTIME


def test_pending_directories_stay_a_chain_of_ancestors(target):
    """Whatever the number of directories, only those the stream is in wait."""
    with RestoreTree(target) as tree:
        most = 0
        for top in range(20):
            mkdir(tree, b"d%02d" % top)
            for sub in range(10):
                mkdir(tree, b"d%02d/s%d" % (top, sub))
                put(tree, b"d%02d/s%d/f" % (top, sub))
                most = max(most, len(pending(tree)))
        assert most == 2
    for top in range(20):
        assert os.lstat(target / ("d%02d" % top)).st_mtime_ns == MTIME
        assert os.lstat(target / ("d%02d" % top) / "s9").st_mtime_ns == MTIME


def test_a_read_only_directory_waits_for_finish(target):
    """A later record or level may still add to it: it is only set at finish()."""
    with RestoreTree(target) as tree:
        mkdir(tree, b"ro", mode=0o555)
        put(tree, b"ro/f")
        put(tree, b"z")
        assert pending(tree) == {b"ro"}
        put(tree, b"ro/g")     # out of order (a held-back file, say): still writable
        tree.reached(b"zz")
    st = os.lstat(target / "ro")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o555, MTIME)
    assert sorted(os.listdir(target / "ro")) == ["f", "g"]
    os.chmod(target / "ro", 0o755)


def test_coming_back_into_a_finished_directory_keeps_its_times(target):
    with RestoreTree(target) as tree:
        mkdir(tree, b"a")
        put(tree, b"a/f")
        put(tree, b"b")
        assert pending(tree) == set()
        put(tree, b"a/late")   # changes a's mtime; noted first
        tree.reached(b"a/zz/x")
        tree.remove(b"a/f")    # a DELETE record
        tree.reached(b"c")     # left a: its times go back now
        assert pending(tree) == set()
        assert os.lstat(target / "a").st_mtime_ns == MTIME
        put(tree, b"a/last")   # and once more, put back by finish()
    assert os.lstat(target / "a").st_mtime_ns == MTIME
    assert sorted(os.listdir(target / "a")) == ["last", "late"]


def test_without_reached_everything_waits_for_finish(target):
    with RestoreTree(target) as tree:
        for name in (b"a", b"b"):
            tree.make_dir(entry(name, E.KIND_DIR))
            tree.write_file(entry(name + b"/f", size=1), [b"x"], hashlib.sha256(b"x").digest())
        assert pending(tree) == {b"a", b"b"}
    assert os.lstat(target / "b").st_mtime_ns == MTIME


def test_a_left_directory_replaced_by_a_symlink_is_skipped(target, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    before = os.lstat(outside)
    with RestoreTree(target) as tree:
        mkdir(tree, b"a")
        mkdir(tree, b"a/s", mode=0o700)
        tree.reached(b"a")
        tree.remove(b"a")
        tree.make_symlink(entry(b"a", E.KIND_SYMLINK, link_target=str(outside).encode()))
        tree.reached(b"b")
    after = os.lstat(outside)
    assert (stat.S_IMODE(after.st_mode), after.st_mtime_ns) == (stat.S_IMODE(before.st_mode), before.st_mtime_ns)


# -- the walk's hardlink table ---------------------------------------------

def test_walk_forgets_a_hardlink_group_once_all_its_names_are_met(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for group in range(5):
        first = src / ("g%d-a" % group)
        first.write_bytes(b"x%d" % group)
        for other in ("b", "c"):
            os.link(first, src / ("g%d-%s" % (group, other)))
    walker = fswalk.Walker((), False, lambda p, m: None)
    names = sorted(os.listdir(bytes(src)))
    entries = {e.path: e for e in walker.entries(walker.found(bytes(src), os.lstat(src), names))}
    assert walker.links == {}
    for group in range(5):
        assert entries[b"g%d-a" % group].hardlink_to is None
        assert entries[b"g%d-b" % group].hardlink_to == b"g%d-a" % group
        assert entries[b"g%d-c" % group].hardlink_to == b"g%d-a" % group


def test_walk_keeps_a_group_whose_other_names_are_outside(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"x")
    os.link(src / "a", tmp_path / "elsewhere")
    os.link(src / "a", src / "b")
    walker = fswalk.Walker((), False, lambda p, m: None)
    entries = list(walker.entries(walker.found(bytes(src), os.lstat(src), [b"a", b"b"])))
    assert [e.hardlink_to for e in entries] == [None, b"a"]
    assert list(walker.links.values()) == [(b"a", 1)]     # one name not met


# -- one level's paths -----------------------------------------------------

class SmallSeen(SeenPaths):
    BLOCK = 4       # spill after a few paths


def test_seen_paths_in_order_hold_no_set():
    seen = SmallSeen()
    try:
        paths = [b"a", b"a/b", b"a/b/c", b"a/c", b"a.b", b"b"] + [b"c/%03d" % i for i in range(50)]
        assert all(seen.add(p) for p in paths)
        assert seen._late == set() and seen._sorted is None
        assert len(seen._buffer) < SmallSeen.BLOCK
        assert seen._spill is not None
    finally:
        seen.close()


def test_seen_paths_refuse_a_repeat_in_order():
    seen = SmallSeen()
    assert seen.add(b"a")
    assert not seen.add(b"a")


@pytest.mark.parametrize("block", [4, 8192])
def test_seen_paths_refuse_a_repeat_out_of_order(block):
    class Seen(SeenPaths):
        BLOCK = block

    seen = Seen()
    try:
        for i in range(40):
            assert seen.add(b"d/%03d" % i)
        assert seen.add(b"a")            # out of order: not seen before
        assert not seen.add(b"d/007")    # seen long ago
        assert seen.add(b"d/100")
        assert not seen.add(b"d/100")
        assert not seen.add(b"a")
        assert seen._spill is None       # loaded, closed
    finally:
        seen.close()


def test_seen_paths_tree_order_is_by_components():
    """``a/x`` comes before ``a.b`` in tree order although b'.' < b'/'."""
    seen = SeenPaths()
    assert seen.add(b"a") and seen.add(b"a/x") and seen.add(b"a.b")
    assert seen._sorted is None
