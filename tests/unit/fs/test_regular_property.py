"""Property: a staged file patched in place equals the plan's output."""

from __future__ import annotations

import os

import blake3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freezer_rsyncv2.fs import entry as E
from freezer_rsyncv2.fs import regular
from freezer_rsyncv2.fs.filedata import TMP_PREFIX
from freezer_rsyncv2.fs.restore import RestoreTree

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def entry(size: int) -> E.Entry:
    return E.Entry(path=b"f", kind=E.KIND_FILE, mode=0o600, uid=os.getuid(),
                   gid=os.getgid(), uname=None, gname=None, size=size,
                   mtime_ns=10**18, atime_ns=10**18, ctime_ns=0, ino=0,
                   dev=0, nlink=1)


@st.composite
def plans(draw):
    """An old file and a plan over it: ranges at their own offset (in
    place) or moved, and literals, in output order."""
    old = draw(st.binary(min_size=1, max_size=3000))
    plan, pos = [], 0
    while pos < len(old) and len(plan) < 12:
        kind = draw(st.sampled_from(["same", "moved", "literal"]))
        length = draw(st.integers(1, max(1, len(old) - pos)))
        if kind == "same":
            plan.append((pos, length))
        elif kind == "moved":
            start = draw(st.integers(0, len(old) - 1))
            plan.append((start, min(length, len(old) - start)))
        else:
            plan.append(draw(st.binary(min_size=1, max_size=length)))
        pos += plan[-1][1] if isinstance(plan[-1], tuple) else len(plan[-1])
    if draw(st.booleans()):
        plan.append(draw(st.binary(min_size=1, max_size=50)))   # grows
    return old, plan


def expected(old: bytes, plan: list) -> bytes:
    return b"".join(old[p[0]:p[0] + p[1]] if isinstance(p, tuple) else p
                    for p in plan)


@SETTINGS
@given(case=plans(), limit=st.sampled_from([0, 10, 1 << 20]))
def test_patched_staged_file_is_the_plans_output(tmp_path, monkeypatch,
                                                 case, limit):
    monkeypatch.setattr(regular, "STAGE_MIN", 1)
    monkeypatch.setattr(regular, "IN_PLACE_BUFFER", limit)
    old, plan = case
    new = expected(old, plan)
    root = tmp_path / os.urandom(6).hex()
    with RestoreTree(str(root)) as tree:
        tree.write_file(entry(len(old)), [old], blake3.blake3(old).digest(),
                        "blake3")
        with tree.open_basis(b"f") as basis:
            tree.patch_file(entry(len(new)), b"f", basis.fileno(), iter(plan),
                            lambda: blake3.blake3(new).digest(), "blake3")
    assert (root / "f").read_bytes() == new
    assert not any(n.encode().startswith(TMP_PREFIX)
                   for n in os.listdir(root))
