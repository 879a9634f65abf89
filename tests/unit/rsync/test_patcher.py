"""The patcher rebuilds files from ops and rejects every malformed op."""

from __future__ import annotations

from typing import Any

import pytest

from freezer_rsyncv2.errors import CorruptRecordError
from freezer_rsyncv2.rsync.matcher import COPY, LITERAL
from freezer_rsyncv2.rsync.patcher import copy_range, patch, plan

BASIS = bytes(range(256)) * 40  # 10240 bytes: blocks of 4096, 4096, 2048


def read(offset: int, length: int) -> bytes:
    return BASIS[offset : offset + length]


def run(ops: list[Any], block_len: int = 4096, basis_size: int = len(BASIS), reader: Any = read, **kw: Any) -> bytes:
    return b"".join(patch(ops, reader, block_len, basis_size, **kw))


def test_copy_range() -> None:
    assert copy_range(0, 1, 4096, 10240) == (0, 4096)
    assert copy_range(1, 2, 4096, 10240) == (4096, 6144)  # last block is short
    assert copy_range(2, 1, 4096, 10240) == (8192, 2048)
    assert copy_range(0, 3, 4096, 10240) == (0, 10240)
    assert copy_range(0, 1, 16, 16) == (0, 16)


@pytest.mark.parametrize(
    "args",
    [
        (3, 1, 4096, 10240),
        (0, 4, 4096, 10240),
        (-1, 1, 4096, 10240),
        (0, 0, 4096, 10240),
        (0, -2, 4096, 10240),
        (0, 10**30, 4096, 10240),
        (10**30, 1, 4096, 10240),
        (0, 1, 4096, 0),
        (0, True, 4096, 10240),
        (1.0, 1, 4096, 10240),
        (0, 1, 0, 10240),
        (0, 1, -4096, 10240),
        (0, 1, 4096, -1),
    ],
)
def test_copy_range_rejects(args: tuple) -> None:
    with pytest.raises(CorruptRecordError):
        copy_range(*args)


def test_patch_basic() -> None:
    ops = [(LITERAL, b"hello"), (COPY, 1, 2), (LITERAL, b"!"), (COPY, 0, 1)]
    assert run(ops) == b"hello" + BASIS[4096:] + b"!" + BASIS[:4096]
    assert run([[COPY, 0, 3]]) == BASIS  # lists (e.g. from a decoder) are fine
    assert run([]) == b""


def test_patch_pieces_are_bounded() -> None:
    pieces = list(patch([(COPY, 0, 3), (LITERAL, b"x" * 5000)], read, 4096, len(BASIS), max_piece=1000))
    assert all(isinstance(p, bytes) for p in pieces)
    assert [len(p) for p in pieces[:-1]] == [1000] * 10 + [240]
    assert pieces[-1] == b"x" * 5000  # literals pass through


def test_patch_reader_calls() -> None:
    calls = []

    def reader(offset: int, length: int) -> bytearray:
        calls.append((offset, length))
        return bytearray(BASIS[offset : offset + length])

    assert run([(COPY, 1, 2)], reader=reader, max_piece=4096) == BASIS[4096:]
    assert calls == [(4096, 4096), (8192, 2048)]


def test_patch_is_lazy_but_validates_arguments_eagerly() -> None:
    with pytest.raises(CorruptRecordError):
        patch([], read, 0, 10)
    with pytest.raises(CorruptRecordError):
        patch([], read, 16, -1)
    with pytest.raises(ValueError):
        patch([], read, 16, 10, max_piece=0)


@pytest.mark.parametrize(
    ("op", "words"),
    [
        ((3, b"x"), ["op #1", "unknown op type 3"]),
        ((-1, 0, 1), ["unknown op type -1"]),
        (("COPY", 0, 1), ["unknown op type 'COPY'"]),
        ((True, b"x"), ["unknown op type True"]),
        ((None,), ["unknown op type None"]),
        ((), ["op #1", "non-empty tuple"]),
        (5, ["op #1", "int"]),
        ({"a": 1}, ["dict"]),
        (b"\x00\x00\x01", ["bytes"]),
        ((COPY, 0), ["COPY op needs 3 fields"]),
        ((COPY, 0, 1, 2), ["COPY op needs 3 fields"]),
        ((COPY, -1, 1), ["first_block=-1", "count=1"]),
        ((COPY, 0, 0), ["count=0"]),
        ((COPY, 0, -5), ["count=-5"]),
        ((COPY, 0, 4), ["count=4", "3 blocks"]),
        ((COPY, 2, 2), ["first_block=2", "count=2"]),
        ((COPY, 3, 1), ["first_block=3"]),
        ((COPY, 0, 10**40), ["count=1" + "0" * 40]),
        ((COPY, 0, 1.0), ["int"]),
        ((COPY, "0", 1), ["int"]),
        ((COPY, 0, False), ["int"]),
        ((LITERAL,), ["LITERAL op needs 2 fields"]),
        ((LITERAL, b"a", b"b"), ["LITERAL op needs 2 fields"]),
        ((LITERAL, "text"), ["must be bytes", "str"]),
        ((LITERAL, bytearray(b"x")), ["bytearray"]),
        ((LITERAL, memoryview(b"")), ["empty LITERAL"]),
        ((LITERAL, 7), ["int"]),
        ((LITERAL, None), ["NoneType"]),
        ((LITERAL, b""), ["empty LITERAL"]),
    ],
)
def test_patch_rejects_bad_ops(op: Any, words: list[str]) -> None:
    with pytest.raises(CorruptRecordError) as info:
        run([(LITERAL, b"ok"), op, (LITERAL, b"never")])
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    "reader",
    [
        lambda o, n: BASIS[o : o + n - 1],  # short read
        lambda o, n: BASIS[o : o + n] + b"x",  # long read
        lambda o, n: b"",
        lambda o, n: None,
        lambda o, n: "x" * n,
        lambda o, n: list(BASIS[o : o + n]),
    ],
)
def test_patch_rejects_bad_basis_reads(reader: Any) -> None:
    with pytest.raises(CorruptRecordError, match="basis read"):
        run([(COPY, 0, 2)], reader=reader)


def test_patch_against_empty_basis() -> None:
    assert run([(LITERAL, b"abc")], basis_size=0) == b"abc"
    with pytest.raises(CorruptRecordError, match="0 blocks"):
        run([(COPY, 0, 1)], basis_size=0)


def test_plan_is_patch_without_reading() -> None:
    ops = [(LITERAL, b"head"), (COPY, 1, 2), (LITERAL, b"mid"), (COPY, 0, 1)]
    items = list(plan(ops, 4096, len(BASIS)))
    assert items == [b"head", (4096, 6144), b"mid", (0, 4096)]
    rebuilt = b"".join(i if isinstance(i, bytes) else BASIS[i[0]:i[0] + i[1]] for i in items)
    assert rebuilt == run(ops)


def test_plan_validates_like_patch() -> None:
    with pytest.raises(CorruptRecordError, match="op #1"):
        list(plan([(LITERAL, b"ok"), (COPY, 0, 99)], 4096, len(BASIS)))
    with pytest.raises(CorruptRecordError):
        plan([], 0, 10)


def test_literal_views_pass_through_uncopied() -> None:
    """A decoder hands LITERAL data over as views of its frames."""
    data = memoryview(b"0123456789")
    out = list(plan([(LITERAL, data[2:5]), (LITERAL, data)], 4, 0))
    assert out[0].obj is data.obj and bytes(out[0]) == b"234"
    assert b"".join(patch([(LITERAL, data[2:5])], lambda o, n: b"", 4, 0)) == b"234"
