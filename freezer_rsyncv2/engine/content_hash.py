"""One file's content hashes: the whole-file digest and the signature the next level matches against.

Both are fed the file in order, data and runs of zeros alike.  A big file's
hashes run on helper threads (the hashers release the GIL, so they use other
cores) while the caller reads and matches; a small file is hashed inline,
where a hand-off would cost more than it saves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from freezer_rsyncv2 import digests
from freezer_rsyncv2.engine import extents
from freezer_rsyncv2.rsync import signature as rsig


class Runner(Protocol):
    """Runs calls in the order submitted (``threads.OrderedWorker`` on a helper thread, or ``INLINE``)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> None: ...

    def wait(self) -> None: ...

    def discard(self) -> None: ...


class Inline:
    """A ``Runner`` that makes each call at once, in the caller's thread."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        fn(*args)

    def wait(self) -> None:
        """Nothing is ever pending."""

    def discard(self) -> None:
        """Nothing is ever pending."""


INLINE = Inline()


class ContentHasher:
    """The whole-file digest (``digests.DEFAULT``, blake3-tree) and the block signature of one file.

    Feed it with ``update`` and ``zeros`` in file order, then call ``finish``
    once; ``discard`` drops what is still pending (a file abandoned mid-way).
    """

    def __init__(self, block_len: int, digest_runner: Runner = INLINE, signature_runner: Runner = INLINE,
                 sign: bool = True) -> None:
        """``sign`` false: the digest only (``finish`` gives no signature)."""
        self._digest = digests.new(digests.DEFAULT)
        self._builder = rsig.SignatureBuilder(block_len, extents.min_zero_blocks(block_len)) if sign else None
        self._digest_runner = digest_runner
        self._signature_runner = signature_runner

    def update(self, data: bytes) -> None:
        """The next data bytes of the file."""
        self._digest_runner.submit(self._digest.update, data)
        if self._builder is not None:
            self._signature_runner.submit(self._builder.update, data)

    def zeros(self, length: int) -> None:
        """The next ``length`` bytes of the file are zeros (a hole or zero blocks)."""
        self._digest_runner.submit(self._digest.zeros, length)
        if self._builder is not None:
            self._signature_runner.submit(self._builder.zeros, length)

    def finish(self) -> tuple[bytes, rsig.Signature | None]:
        """The digest and the signature of all that was fed; raises a helper thread's error."""
        self._digest_runner.wait()
        self._signature_runner.wait()
        return self._digest.digest(), None if self._builder is None else self._builder.finish()

    def discard(self) -> None:
        """Drop pending work (nothing, after ``finish``)."""
        self._digest_runner.discard()
        self._signature_runner.discard()
