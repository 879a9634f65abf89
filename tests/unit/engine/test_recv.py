"""restore_level's pipe reader: the bytes recv_bytes() would give, in bounded pieces."""

from __future__ import annotations

import multiprocessing
import os
import threading

import pytest

from freezer_rsyncv2 import errors
from freezer_rsyncv2.engine import rsyncv2


def received(messages, duplex=False):
    read, write = multiprocessing.Pipe(duplex=duplex)

    def send():
        for m in messages:
            write.send_bytes(m)
        write.close()

    t = threading.Thread(target=send)
    t.start()
    try:
        pieces = list(rsyncv2._recv_all(read))
    finally:
        t.join()
        read.close()
    return pieces


@pytest.mark.parametrize("duplex", [False, True], ids=["pipe", "socketpair"])
def test_raw_reader_gives_the_sent_bytes(duplex):
    messages = [b"", b"a", os.urandom(70000), os.urandom(rsyncv2._RECV_PIECE + 5),
                os.urandom(3 * rsyncv2._RECV_PIECE)]
    pieces = received(messages, duplex)
    assert b"".join(pieces) == b"".join(messages)
    assert max(len(p) for p in pieces) <= rsyncv2._RECV_PIECE


def test_stream_cut_inside_a_message_is_truncation():
    read, write = multiprocessing.Pipe(duplex=False)
    os.write(write.fileno(), (100).to_bytes(4, "big") + b"only this")
    write.close()
    with pytest.raises(errors.TruncatedError):
        list(rsyncv2._recv_all(read))
    read.close()


def test_other_pipe_objects_use_recv_bytes():
    class FakePipe:
        def __init__(self, items):
            self.items = list(items)

        def recv_bytes(self):
            if not self.items:
                raise EOFError
            return self.items.pop(0)

    assert list(rsyncv2._recv_all(FakePipe([b"x", b"yz"]))) == [b"x", b"yz"]
