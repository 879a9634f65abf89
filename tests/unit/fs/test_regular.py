"""Big files staged across the levels of one restore, patched in place."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from freezer_rsyncv2.errors import IntegrityError, UnsafePathError
from freezer_rsyncv2.fs import entry as E
from freezer_rsyncv2.fs import regular
from freezer_rsyncv2.fs.filedata import TMP_PREFIX
from freezer_rsyncv2.fs.restore import RestoreTree

STAGE = 64 << 10


@pytest.fixture(autouse=True)
def small_stage(monkeypatch):
    monkeypatch.setattr(regular, "STAGE_MIN", STAGE)


def entry(path: bytes, size: int, mode: int = 0o644, kind: str = E.KIND_FILE,
          **kw) -> E.Entry:
    fields = dict(path=path, kind=kind, mode=mode, uid=os.getuid(),
                  gid=os.getgid(), uname=None, gname=None, size=size,
                  mtime_ns=10**18, atime_ns=10**18, ctime_ns=0, ino=0, dev=0,
                  nlink=1)
    fields.update(kw)
    return E.Entry(**fields)


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def names(root) -> list[str]:
    return sorted(os.listdir(root))


def temps(root) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        out += [f for f in files if f.encode().startswith(TMP_PREFIX)]
    return out


def put(tree: RestoreTree, path: bytes, data: bytes) -> None:
    tree.write_file(entry(path, len(data)), [data], sha(data))


def patch(tree: RestoreTree, path: bytes, plan: list, new: bytes,
          digest: bytes | None = None) -> int:
    with tree.open_basis(path) as basis:
        return tree.patch_file(entry(path, len(new)), path, basis.fileno(),
                               plan, lambda: digest or sha(new))


# -- identity_prefix ------------------------------------------------------

def test_identity_prefix_reads_a_whole_in_place_plan():
    plan = [(0, 10), b"abc", (13, 7), b"z"]
    head, rest = regular.identity_prefix(plan, limit=4)
    assert head == plan and rest is None


def test_identity_prefix_stops_at_a_moved_range():
    plan = [(0, 10), b"abc", (10, 5), (99, 1)]
    head, rest = regular.identity_prefix(iter(plan), limit=100)
    assert head == plan[:3]
    assert list(rest) == [(99, 1)]


def test_identity_prefix_stops_past_the_literal_limit():
    plan = [b"aaaa", b"bbbb", (8, 2)]
    head, rest = regular.identity_prefix(iter(plan), limit=6)
    assert head == plan[:2]
    assert list(rest) == [(8, 2)]


def test_small_files_are_renamed_at_once_big_ones_at_finish(tmp_path):
    root = tmp_path / "out"
    tree = RestoreTree(str(root))
    small, big = os.urandom(100), os.urandom(STAGE)
    put(tree, b"small", small)
    put(tree, b"big", big)
    assert (root / "small").read_bytes() == small
    assert not (root / "big").exists()
    assert len(temps(root)) == 1
    tree.finish()
    tree.close()
    assert (root / "big").read_bytes() == big
    assert stat.S_IMODE((root / "big").stat().st_mode) == 0o644
    assert (root / "big").stat().st_mtime_ns == 10**18
    assert temps(root) == []


def test_in_place_patch_writes_only_the_literals(tmp_path):
    root = tmp_path / "out"
    old = os.urandom(4 * STAGE)
    new = bytearray(old)
    new[1000:1100] = b"x" * 100
    new += b"tail"
    with RestoreTree(str(root)) as tree:
        put(tree, b"f", old)
        tree.level = 1
        plan = [(0, 1000), b"x" * 100, (1100, len(old) - 1100), b"tail"]
        assert patch(tree, b"f", plan, bytes(new)) == 104
        assert not (root / "f").exists()
    assert (root / "f").read_bytes() == bytes(new)
    assert temps(root) == []


def test_in_place_patch_that_shrinks(tmp_path):
    root = tmp_path / "out"
    old = os.urandom(2 * STAGE)
    new = old[:STAGE] + b"end"
    with RestoreTree(str(root)) as tree:
        put(tree, b"f", old)
        patch(tree, b"f", [(0, STAGE), b"end"], new)
    assert (root / "f").read_bytes() == new


def test_moved_ranges_go_to_a_new_temporary_file(tmp_path):
    root = tmp_path / "out"
    old = os.urandom(2 * STAGE)
    new = b"ins" + old          # everything moved by 3 bytes
    with RestoreTree(str(root)) as tree:
        put(tree, b"f", old)
        first = temps(root)
        patch(tree, b"f", [b"ins", (0, len(old))], new)
        assert len(temps(root)) == 1 and temps(root) != first
    assert (root / "f").read_bytes() == new


def test_wrong_digest_after_in_place_patch_names_the_levels(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    (root / "f").write_bytes(b"the good old file")
    old = os.urandom(2 * STAGE)
    new = b"y" + old[1:]
    tree = RestoreTree(str(root))
    put(tree, b"f", old)
    tree.level = 3
    patch(tree, b"f", [b"y", (1, len(old) - 1)], new, digest=sha(b"other"))
    with pytest.raises(IntegrityError, match=r"'f': sha256 digest mismatch "
                       r"after level 3 patched it in place"):
        tree.finish()
    tree.close()
    assert (root / "f").read_bytes() == b"the good old file"
    assert temps(root) == []


def test_failed_restore_removes_staged_files(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    (root / "f").write_bytes(b"keep me")
    with pytest.raises(RuntimeError):
        with RestoreTree(str(root)) as tree:
            put(tree, b"f", os.urandom(STAGE))
            put(tree, b"d/g", os.urandom(STAGE))
            raise RuntimeError("level 2 failed")
    assert (root / "f").read_bytes() == b"keep me"
    assert not (root / "d" / "g").exists()
    assert temps(root) == []


def test_failed_in_place_patch_drops_the_staged_file(tmp_path):
    root = tmp_path / "out"
    old = os.urandom(2 * STAGE)
    tree = RestoreTree(str(root))
    put(tree, b"f", old)
    with pytest.raises(IntegrityError, match="expected"):
        # the plan writes fewer bytes than the entry says
        with tree.open_basis(b"f") as basis:
            tree.patch_file(entry(b"f", len(old) + 5), b"f", basis.fileno(),
                            [(0, len(old))], lambda: sha(old))
    tree.finish()
    tree.close()
    assert names(root) == []


def test_removing_a_staged_file_or_its_directory(tmp_path):
    root = tmp_path / "out"
    with RestoreTree(str(root)) as tree:
        tree.make_dir(entry(b"d", 0, mode=0o755, kind=E.KIND_DIR))
        put(tree, b"d/a", os.urandom(STAGE))
        put(tree, b"b", os.urandom(STAGE))
        tree.remove(b"b")
        tree.remove(b"d")
        assert temps(root) == []
    assert names(root) == []


def test_a_symlink_replacing_a_staged_file(tmp_path):
    root = tmp_path / "out"
    with RestoreTree(str(root)) as tree:
        put(tree, b"f", os.urandom(STAGE))
        tree.make_symlink(entry(b"f", 0, kind=E.KIND_SYMLINK,
                                link_target=b"elsewhere"))
    assert os.readlink(root / "f") == "elsewhere"
    assert temps(root) == []


def test_metadata_change_of_a_staged_file(tmp_path):
    root = tmp_path / "out"
    data = os.urandom(STAGE)
    with RestoreTree(str(root)) as tree:
        put(tree, b"f", data)
        tree.set_meta(entry(b"f", len(data), mode=0o600, mtime_ns=5 * 10**17))
    st = (root / "f").stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_mtime_ns == 5 * 10**17
    assert (root / "f").read_bytes() == data


def test_hardlink_to_a_staged_file(tmp_path):
    root = tmp_path / "out"
    data = os.urandom(STAGE)
    with RestoreTree(str(root)) as tree:
        put(tree, b"f", data)
        tree.make_hardlink(entry(b"g", 0, kind=E.KIND_HARDLINK,
                                 hardlink_to=b"f"))
        assert (root / "f").read_bytes() == data    # finalized for the link
    assert os.path.samefile(root / "f", root / "g")


def test_staged_file_whose_directory_was_swapped(tmp_path):
    """A staged file's directory replaced behind the tree's back: the
    final rename reports it, nothing is followed."""
    root = tmp_path / "out"
    outside = tmp_path / "outside"
    outside.mkdir()
    tree = RestoreTree(str(root))
    put(tree, b"d/f", os.urandom(STAGE))
    os.rename(root / "d", tmp_path / "moved")
    os.symlink(outside, root / "d")
    with pytest.raises(UnsafePathError, match="symlink"):
        tree.finish()
    tree.close()
    assert list(outside.iterdir()) == []
