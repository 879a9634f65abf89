"""Run a test's operation where file permissions bind, even when the tests run as root.

Root reads a file of mode 000 and lists a directory of mode 000 because it
holds CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, not because of its uid.
``run_unprivileged`` runs a function in a forked child that first drops
those two capabilities (capset(2); dropping needs no privilege), so the
kernel refuses it what it refuses any user, while every path the test made
stays reachable: the child keeps the uid that owns them.  Without root the
child simply has no capabilities to drop: the same code path either way.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import select
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
_CAPABILITY_VERSION_3 = 0x20080522      # two 32-bit words per set


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_permission_override() -> None:
    """Drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from this thread, for good.

    Capabilities are per thread: call it before the process starts threads
    (the threads it starts later inherit the reduced sets).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    header = _Header(_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget: " + os.strerror(ctypes.get_errno()))
    keep = ~((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH)) & 0xFFFFFFFF
    data[0].effective &= keep
    data[0].permitted &= keep
    data[0].inheritable &= keep
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset: " + os.strerror(ctypes.get_errno()))


def run_unprivileged(func: Callable[..., T], *args: Any, timeout: float = 120) -> T:
    """``func(*args)`` in a forked child without the permission override; its result.

    The result (or the child's traceback, as a test failure) comes back
    pickled through a pipe; nothing the child changes in memory reaches the
    caller.  A child still running after ``timeout`` seconds is killed and
    the test fails.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:        # the child: never returns into pytest
        try:
            os.close(read_fd)
            try:
                drop_permission_override()
                payload = pickle.dumps((True, func(*args)))
            except BaseException as exc:    # reported to the parent
                payload = pickle.dumps((False, "".join(traceback.format_exception(exc))))
            with os.fdopen(write_fd, "wb") as out:
                out.write(payload)
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    deadline = time.monotonic() + timeout
    with os.fdopen(read_fd, "rb", buffering=0) as answer:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([answer], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"the unprivileged child did not finish in {timeout} s (killed)")
            chunk = answer.read(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    payload = b"".join(chunks)
    _, status = os.waitpid(pid, 0)
    if not payload:
        pytest.fail(f"the unprivileged child died without an answer (wait status {status})")
    ok, value = pickle.loads(payload)
    if not ok:
        pytest.fail(f"in the unprivileged child:\n{value}")
    return value
