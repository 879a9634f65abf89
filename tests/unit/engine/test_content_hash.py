"""One file's content hashes, inline or on helper threads."""

import os

from freezer_rsyncv2 import threads
from freezer_rsyncv2.engine import content_hash

MiB = 1 << 20
BLOCK = 4096


def signature_fields(sig):
    blocks = None if sig.blocks is None else sig.blocks.tolist()
    return sig.block_len, sig.file_size, sig.weak.tolist(), sig.strong, blocks


def test_hashing_on_helper_threads_gives_the_inline_result():
    data = os.urandom(MiB + 5)
    workers = threads.OrderedWorker("test-digest"), threads.OrderedWorker("test-signature")
    try:
        hasher = content_hash.ContentHasher(BLOCK, *workers)
        hasher.update(data[:MiB])
        hasher.zeros(2 * MiB)
        hasher.update(data[MiB:])
        threaded = hasher.finish()
    finally:
        for w in workers:
            w.close()
    hasher = content_hash.ContentHasher(BLOCK)
    hasher.update(data[:MiB] + bytes(2 * MiB) + data[MiB:])
    inline = hasher.finish()
    assert threaded[0] == inline[0] and signature_fields(threaded[1]) == signature_fields(inline[1])
