"""Helpers for functional tests: describe a tree so two trees compare exactly."""

from __future__ import annotations

import hashlib
import json
import os
import stat


def _xattrs(path: bytes) -> dict:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False)
            for n in names if n.startswith("user.")}


def snapshot(root: str, times: bool = True) -> dict:
    """path -> description: kind, mode, mtime (ns), owner, content digest,
    symlink target, xattrs and the hardlink group (first path of the inode)."""
    out = {}
    groups: dict[tuple[int, int], bytes] = {}
    root_b = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(root_b):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root_b)
            st = os.lstat(full)
            desc = {"fmt": stat.S_IFMT(st.st_mode),
                    "mode": stat.S_IMODE(st.st_mode),
                    "uid": st.st_uid, "gid": st.st_gid}
            if times and not stat.S_ISLNK(st.st_mode):
                desc["mtime"] = st.st_mtime_ns
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(full, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                desc["sha256"] = h.hexdigest()
                desc["size"] = st.st_size
                key = (st.st_dev, st.st_ino)
                desc["group"] = groups.setdefault(key, rel)
            elif stat.S_ISLNK(st.st_mode):
                desc["target"] = os.readlink(full)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                desc["rdev"] = st.st_rdev
            desc["xattrs"] = _xattrs(full)
            out[rel] = desc
    return out


def assert_same_tree(expected: dict, actual: dict) -> None:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    assert not missing, "missing after restore: %r" % missing
    assert not extra, "unexpected after restore: %r" % extra
    for path in sorted(expected):
        assert expected[path] == actual[path], (
            "%r differs:\n  expected %r\n  restored %r"
            % (path, expected[path], actual[path]))


def write(path: str, data: bytes, mtime_ns: int | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def stored_bytes(container: str, level: int) -> int:
    """Bytes a level occupies in a local container (data, manifest, metadata)."""
    total = 0
    for dirpath, _dirs, files in os.walk(container):
        if os.path.basename(dirpath).startswith("%d_" % level):
            total += sum(os.path.getsize(os.path.join(dirpath, f))
                         for f in files)
    return total


def level_meta(container: str, level: int) -> dict:
    """The Freezer metadata (JSON) of ``level`` in a local container holding one chain."""
    for root, _dirs, files in os.walk(os.path.join(container, "metadata")):
        if os.path.basename(root).startswith(f"{level}_"):
            with open(os.path.join(root, "metadata")) as f:
                return json.load(f)
    raise AssertionError(f"no level {level}")
