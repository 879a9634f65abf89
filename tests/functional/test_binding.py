"""Every stream names its place; one moved or replayed from elsewhere is refused.

A fleet shares one pass file, so a level of another host's backup, of an
older chain or of another level decrypts fine: the place named in its BEGIN
record is what tells it apart.
"""

import os
import shutil

import pytest

from freezer_rsyncv2 import errors
from freezer_rsyncv2 import verify as verify_mod
from freezer_rsyncv2.stream import records
from tests.functional import treeutil
from tests.functional.conftest import backup, restore
from tests.hostile import streamkit as sk

pytestmark = pytest.mark.usefixtures("cheap_kdf")


@pytest.fixture(params=["encrypted", "plain"])
def engine_kw(request, tmp_path):
    if request.param == "plain":
        return {}
    passfile = tmp_path / "fleet.pass"
    passfile.write_text("one pass file for the whole fleet\n")
    return {"encrypt_key": str(passfile)}


def level_dir(container, name, chain_index, level):
    """The data directory of a level: chains by age, levels by number."""
    top = os.path.join(container, "data", "rsyncv2", name)
    chain = sorted(os.listdir(top))[chain_index]
    for entry in os.listdir(os.path.join(top, chain)):
        if entry.startswith("%d_" % level):
            return os.path.join(top, chain, entry)
    raise AssertionError("no level %d" % level)


def replace(container, src, dst, what):
    shutil.copyfile(os.path.join(src, what), os.path.join(dst, what))


def test_a_level_of_another_hosts_backup(make_engine, src, restore_dir,
                                         engine_kw):
    # same sizes on both hosts: the storage's own size check does not
    # tell the streams apart, the place does
    kw = dict(engine_kw, compression="none")
    treeutil.write(os.path.join(src, "file.txt"), b"host A's file")
    backup(make_engine(**kw), src, name="hosta_data")
    other = src + "-b"
    treeutil.write(os.path.join(other, "file.txt"), b"host B's file")
    backup(make_engine(**kw), other, name="hostb_data")
    c = make_engine.container
    replace(c, level_dir(c, "hostb_data", 0, 0),
            level_dir(c, "hosta_data", 0, 0), "data")
    dest = restore_dir()
    with pytest.raises(errors.IntegrityError, match="belongs elsewhere"):
        restore(make_engine(**kw), dest, name="hosta_data")
    assert not os.path.exists(os.path.join(dest, "file.txt"))


def test_a_level_of_an_older_chain(make_engine, src, restore_dir, engine_kw):
    engine_kw = dict(engine_kw, compression="none")   # same sizes: see above
    p = os.path.join(src, "f.txt")
    treeutil.write(p, b"chain 1, level 0")
    backup(make_engine(**engine_kw), src)
    treeutil.write(p, b"chain 1, level 1", mtime_ns=2 * 10**18)
    backup(make_engine(**engine_kw), src)
    treeutil.write(p, b"chain 2, level 0", mtime_ns=3 * 10**18)
    backup(make_engine(**engine_kw), src, incremental=False)
    treeutil.write(p, b"chain 2, level 1", mtime_ns=4 * 10**18)
    backup(make_engine(**engine_kw), src)
    c = make_engine.container
    for what in ("data", "engine_metadata"):
        replace(c, level_dir(c, "host_test", 0, 1),
                level_dir(c, "host_test", 1, 1), what)
    with pytest.raises(errors.IntegrityError, match="belongs elsewhere"):
        restore(make_engine(**engine_kw), restore_dir())
    with pytest.raises(errors.IntegrityError, match="belongs elsewhere"):
        verify_mod.verify(make_engine(**engine_kw), "host_test")
    # and the next backup refuses to build on it
    treeutil.write(p, b"chain 2, level 2", mtime_ns=5 * 10**18)
    with pytest.raises(errors.IntegrityError, match="belongs elsewhere"):
        backup(make_engine(**engine_kw), src)


def test_an_older_manifest_replayed_over_a_newer(make_engine, src,
                                                 restore_dir, engine_kw):
    p = os.path.join(src, "f.txt")
    for level in range(3):
        treeutil.write(p, b"level %d" % level, mtime_ns=(level + 1) * 10**18)
        treeutil.write(os.path.join(src, "new%d" % level), b"x")
        backup(make_engine(**engine_kw), src)
    c = make_engine.container
    replace(c, level_dir(c, "host_test", 0, 1),
            level_dir(c, "host_test", 0, 2), "engine_metadata")
    treeutil.write(p, b"level 3", mtime_ns=9 * 10**18)
    with pytest.raises(errors.IntegrityError, match="level 1.*level 2"):
        backup(make_engine(**engine_kw), src)
    with pytest.raises(errors.IntegrityError, match="belongs elsewhere"):
        verify_mod.verify(make_engine(**engine_kw), "host_test")
    # the data is intact: a restore still works
    dest = restore_dir()
    restore(make_engine(**engine_kw), dest)
    assert open(os.path.join(dest, "f.txt"), "rb").read() == b"level 2"


def test_a_version_3_stream_that_names_no_place(make_engine, src,
                                                restore_dir):
    treeutil.write(os.path.join(src, "f.txt"), b"real")
    backup(make_engine(), src)
    c = make_engine.container
    crafted = sk.encode(sk.file_records(b"f.txt", b"fake"),
                        dg="blake3-tree")
    with open(os.path.join(level_dir(c, "host_test", 0, 0), "data"),
              "wb") as f:
        f.write(crafted)
    with pytest.raises(errors.IntegrityError, match="does not name its"):
        restore(make_engine(), restore_dir())


def test_a_version_3_stream_with_a_flat_digest_is_refused(make_engine, src,
                                                          restore_dir):
    treeutil.write(os.path.join(src, "f.txt"), b"real")
    backup(make_engine(), src)
    c = make_engine.container
    d = level_dir(c, "host_test", 0, 0)
    level = os.path.basename(d)
    chain = os.path.basename(os.path.dirname(d))
    crafted = sk.encode(
        [[records.ENTRY, sk.entry_map(b"f.txt", "f", s=0, data="full")],
         [records.END_FILE, 0, b"\x00" * 32]], level=0, dg="sha256",
        name="host_test", chain=int(chain), time=int(level.split("_")[1]))
    with open(os.path.join(d, "data"), "wb") as f:
        f.write(crafted)
    with pytest.raises(errors.CorruptRecordError, match="file digest"):
        restore(make_engine(), restore_dir())
