"""A backup pass compares what it finds with the entry below as its map, unchecked.

``entrymap.change_map`` and ``entrymap.same_values`` read the map a chain
leaves (``manifest.Prior.fields``) with an Entry's defaults for the keys it
lacks, and give what the checked entry would give; ``Prior.signed`` says
whether the entry has a signature from the map when it can.
"""

import dataclasses
import random

import pytest

from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2.fs import entry as fsentry
from freezer_rsyncv2.fs import walk as fswalk
from freezer_rsyncv2.stream import entrymap, records

STAT_KEYS = ("m", "u", "g", "un", "gn", "mt", "l", "rd", "h", "x")


def entry(rng, **kw):
    kind = rng.choice((fsentry.KIND_FILE, fsentry.KIND_DIR, fsentry.KIND_SYMLINK, fsentry.KIND_CHR))
    fields = dict(path=b"p/q", kind=kind, mode=rng.choice((0o644, 0o755, 0)), uid=rng.choice((0, 1000)),
                  gid=rng.choice((0, 1000)), uname=rng.choice((None, "root", "u")),
                  gname=rng.choice((None, "root", "g")), size=rng.choice((0, 5, 4096)),
                  mtime_ns=rng.choice((0, 1_700_000_000_123_456_789)), atime_ns=rng.choice((0, 17)),
                  ctime_ns=rng.choice((0, 18)), ino=rng.choice((0, 42)), dev=rng.choice((0, 7)),
                  nlink=rng.choice((0, 1, 2)), rdev=rng.choice((0, 259)) if kind == fsentry.KIND_CHR else 0,
                  link_target=rng.choice((b"t", b"u")) if kind == fsentry.KIND_SYMLINK else None,
                  xattrs=rng.choice(({}, {b"user.a": b"1"}, {b"user.a": b"2"})))
    fields.update(kw)
    return fsentry.Entry(**fields)


def varied(rng, e):
    """``e`` with a few fields changed (some back to their defaults)."""
    changes = {}
    for attr in rng.sample(("mode", "uid", "uname", "gname", "size", "mtime_ns", "atime_ns", "ctime_ns",
                            "ino", "nlink", "rdev", "link_target", "xattrs"), rng.randint(0, 3)):
        value = getattr(entry(rng, kind=e.kind), attr)
        changes[attr] = value
    return dataclasses.replace(e, **changes)


def test_a_change_map_over_the_map_below_restores_the_entry():
    rng = random.Random(3)
    made = 0
    for _ in range(3000):
        below = entry(rng)
        now = varied(rng, below)
        m = entrymap.change_map(now, entrymap.entry_map(below))
        if m is None:       # a field cleared (a change entry cannot say so)
            cleared = [k for k, v in entrymap.entry_map(below).items() if k not in entrymap.entry_map(now)]
            assert cleared or now.xattrs != below.xattrs and not now.xattrs
            continue
        made += 1
        plain = b"".join([records.begin({"level": 1}), records.pack([records.MANIFEST, m]), records.end({})])
        (rec,) = list(records.decode([plain], {"version": 4}))[1:-1]
        assert entrymap.merge_changes(below, rec[1], rec[2]["dm"]) == now
        assert set(m) - {"p", "k", "dm"} == {k for k, v in entrymap.entry_map(now).items()
                                             if entrymap.entry_map(below).get(k) != v} - {"p", "k"}
    assert made > 1000


def test_a_map_lacking_a_key_stands_for_the_entry_default():
    rng = random.Random(4)
    same = entrymap.same_values(STAT_KEYS)
    for _ in range(2000):
        below = entry(rng)
        now = varied(rng, below)
        expected = all(getattr(now, a) == getattr(below, a) for a in (
            "mode", "uid", "gid", "uname", "gname", "mtime_ns", "link_target", "rdev", "hardlink_to", "xattrs"))
        assert same(now, entrymap.entry_map(below)) == expected
    e = entry(rng, kind=fsentry.KIND_FILE, rdev=0, uname=None, xattrs={})
    assert same(e, {"m": e.mode, "u": e.uid, "g": e.gid, "gn": e.gname, "mt": e.mtime_ns})
    assert not same(e, {"m": e.mode, "u": e.uid, "g": e.gid, "gn": e.gname, "mt": e.mtime_ns, "rd": 1})
    assert not same(e, {"m": str(e.mode), "u": e.uid, "g": e.gid, "gn": e.gname, "mt": e.mtime_ns})


def prior(m, below=None, whole_chain=True):
    return mf.Prior(fswalk.sort_key(m["p"]), (records.MANIFEST, m, True, []), below, whole_chain)


FILE = {"p": b"f", "k": "f", "m": 0o644, "u": 0, "g": 0, "s": 8192, "mt": 1, "at": 1, "dg": b"d" * 32}


@pytest.mark.parametrize("sg,whole_chain,signed,resolved", [
    (entrymap.SIG_FULL, True, True, False),
    (entrymap.SIG_DELTA, True, True, False),
    (entrymap.SIG_DELTA, False, False, True),      # over a level not at hand: no signature
    (entrymap.SIG_NONE, True, False, True),
])
def test_signed_is_said_by_the_map_when_it_can(monkeypatch, sg, whole_chain, signed, resolved):
    m = {**FILE, "sg": sg, "B": 4096} if sg != entrymap.SIG_NONE else {**FILE, "s": 100, "sg": sg, "da": "full"}
    calls = []
    real = mf.Prior.resolve
    monkeypatch.setattr(mf.Prior, "resolve", lambda self: calls.append(self.path) or real(self))
    assert prior(m, whole_chain=whole_chain).signed() is signed
    assert bool(calls) is resolved


def test_a_stat_only_entry_is_resolved_for_its_signature():
    """Version 3: an entry without ``sg`` keeps the content, and so the signature, below it."""
    base = prior({**FILE, "sg": entrymap.SIG_NONE, "s": 100, "da": "full"})
    top = mf.Prior(fswalk.sort_key(b"f"), (records.MANIFEST, {**FILE, "s": 100, "mt": 2}, False, []), base, True)
    assert top.signed() is False
    assert top.resolve().entry.mtime_ns == 2
