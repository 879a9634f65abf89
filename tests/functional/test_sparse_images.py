"""VM disk images: huge sparse files, in-place rewrites, fixed 4 KiB blocks.

The files are sparse, so tens of GiB (or a TiB) cost only their data here;
contents are compared by their data ranges and holes, never read whole.
"""

import os
import random

import numpy as np

from freezer_rsyncv2 import digests
from freezer_rsyncv2 import verify as verify_mod
from freezer_rsyncv2.fs import filehash
from tests.functional import treeutil
from tests.functional.conftest import backup, restore

MiB = 1 << 20
GiB = 1 << 30


def rnd(n, seed):
    return random.Random(seed).randbytes(n)


def make_image(path, size, extents, seed=0):
    """A sparse file of ``size`` bytes with random data at ``extents``."""
    with open(path, "wb") as f:
        f.truncate(size)
        for i, (offset, length) in enumerate(extents):
            os.pwrite(f.fileno(), rnd(length, seed * 1000 + i), offset)


def rewrite(path, offset, data, mtime_ns):
    with open(path, "r+b") as f:
        os.pwrite(f.fileno(), data, offset)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def content_digest(path):
    """The file's blake3-tree digest and size, reading only its data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return filehash.hash_fd(fd, digests.BLAKE3_TREE)
    finally:
        os.close(fd)


def allocated(path):
    return os.stat(path).st_blocks * 512


def level_bytes(container, level, name):
    """Bytes of one stored object (``data`` or ``engine_metadata``) of a level."""
    total = 0
    for root, _dirs, files in os.walk(os.path.join(container, "data")):
        if os.path.basename(root).startswith("%d_" % level) and name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total


def test_40gib_sparse_image_three_levels_in_place(make_engine, src,
                                                  restore_dir):
    image = os.path.join(src, "disk.img")
    extents = [(0, MiB), (5 * GiB, 2 * MiB), (17 * GiB + 4096, 64 * 1024),
               (39 * GiB, MiB)]
    make_image(image, 40 * GiB, extents, seed=1)
    states = []
    engine = make_engine()
    assert backup(engine, src) == 0
    assert engine.last_summary.bytes_read < 8 * MiB
    assert engine.last_summary.manifest_bytes < 64 * 1024
    states.append(content_digest(image))
    # level 1: rewrite inside data, write into a hole
    rewrite(image, 5 * GiB + 4096, rnd(MiB, 11), 1_700_000_100 * 10**9)
    rewrite(image, 20 * GiB, rnd(MiB, 12), 1_700_000_100 * 10**9)
    engine = make_engine()
    assert backup(engine, src) == 1
    assert engine.last_summary.literal_bytes <= 2 * MiB + 256 * 1024
    assert level_bytes(make_engine.container, 1, "data") < 3 * MiB
    assert level_bytes(make_engine.container, 1, "engine_metadata") \
        < 32 * 1024
    states.append(content_digest(image))
    # level 2: zeros over a data extent, a 4 KiB write, a write at the end
    rewrite(image, 0, bytes(MiB), 1_700_000_200 * 10**9)
    rewrite(image, 39 * GiB + 8192, rnd(4096, 13), 1_700_000_200 * 10**9)
    rewrite(image, 40 * GiB - 100, rnd(100, 14), 1_700_000_200 * 10**9)
    engine = make_engine()
    assert backup(engine, src) == 2
    assert level_bytes(make_engine.container, 2, "data") < 2 * MiB
    states.append(content_digest(image))

    dest = restore_dir()
    restore(make_engine(), dest)
    out = os.path.join(dest, "disk.img")
    assert content_digest(out) == states[2]
    assert os.path.getsize(out) == 40 * GiB
    assert allocated(out) < 16 * MiB        # still sparse
    assert os.stat(out).st_mtime_ns == os.stat(image).st_mtime_ns

    report = verify_mod.verify(make_engine(), "host_test")
    assert report.levels == [0, 1, 2]


def test_earlier_level_of_sparse_image_restores(make_engine, src,
                                                restore_dir, clock):
    image = os.path.join(src, "disk.img")
    make_image(image, 8 * GiB, [(GiB, MiB), (3 * GiB, MiB)], seed=2)
    backup(make_engine(), src)
    first = content_digest(image)
    stamp = clock.last
    rewrite(image, GiB + 100, rnd(70000, 21), 1_700_000_100 * 10**9)
    backup(make_engine(), src)
    dest = restore_dir()
    restore(make_engine(), dest, date=stamp)
    assert content_digest(os.path.join(dest, "disk.img")) == first


def test_1tib_image_level_manifest_under_1mib(make_engine, src, restore_dir):
    image = os.path.join(src, "big.img")
    extents = [(i * 64 * GiB, 2 * MiB) for i in range(16)]
    make_image(image, 1 << 40, extents, seed=3)
    backup(make_engine(compression="none"), src)
    for i in range(16):     # 16 MiB changed, scattered
        rewrite(image, i * 61 * GiB + MiB, rnd(MiB, 30 + i),
                1_700_000_100 * 10**9)
    engine = make_engine(compression="none")
    assert backup(engine, src) == 1
    manifest = level_bytes(make_engine.container, 1, "engine_metadata")
    assert manifest < MiB, manifest
    assert level_bytes(make_engine.container, 0, "engine_metadata") < MiB
    dest = restore_dir()
    restore(make_engine(), dest)
    out = os.path.join(dest, "big.img")
    assert content_digest(out) == content_digest(image)
    assert allocated(out) < 128 * MiB


def test_fixed_4k_blocks_on_1gib_file_three_levels(make_engine, src,
                                                   restore_dir):
    path = os.path.join(src, "vol.raw")
    gen = np.random.default_rng(4)
    data = bytearray(gen.integers(1, 256, GiB, dtype=np.uint8).tobytes())
    treeutil.write(path, bytes(data))
    engine = make_engine(compression="none", rsync_block_size=4096)
    assert backup(engine, src) == 0
    # the whole signature: 262,144 blocks of 20 bytes, more than one record
    assert level_bytes(make_engine.container, 0, "engine_metadata") > 5 * MiB
    for level, seed in ((1, 41), (2, 42)):
        edits = random.Random(seed)
        for _ in range(20):
            at = edits.randrange(0, GiB - 8192)
            data[at:at + 5000] = rnd(5000, edits.random())
        if level == 2:
            data[100:100] = b"inserted near the start"     # data moves
        treeutil.write(path, bytes(data), mtime_ns=(1_700_000_000 + level)
                       * 10**9)
        engine = make_engine(compression="none", rsync_block_size=4096)
        assert backup(engine, src) == level
        assert engine.last_summary.literal_bytes < 2 * MiB
        assert level_bytes(make_engine.container, level, "data") < 3 * MiB
        if level == 1:
            # in-place edits: only the changed blocks' signature entries
            assert level_bytes(make_engine.container, level,
                               "engine_metadata") < 64 * 1024
    dest = restore_dir()
    restore(make_engine(), dest)
    with open(os.path.join(dest, "vol.raw"), "rb") as f:
        assert f.read() == bytes(data)
    report = verify_mod.verify(make_engine(rsync_block_size=4096),
                               "host_test")
    assert report.levels == [0, 1, 2]
