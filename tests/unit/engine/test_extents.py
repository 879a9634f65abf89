"""Where a file's data lies: aligned regions, zero-block runs."""

import random

import pytest

from freezer_rsyncv2.engine import extents


@pytest.mark.parametrize("ranges,size,block,expected", [
    ([], 100, 10, []),
    ([(0, 100)], 100, 10, [(0, 100)]),
    ([(5, 3)], 100, 10, [(0, 10)]),
    ([(5, 3), (12, 1)], 100, 10, [(0, 20)]),        # adjacent: merged
    ([(5, 3), (25, 1)], 100, 10, [(0, 10), (20, 10)]),
    ([(95, 5)], 98, 10, [(90, 8)]),                   # clipped to the size
    ([(0, 4096), (1 << 30, 4096)], 2 << 30, 65536,
     [(0, 65536), (1 << 30, 65536)]),
])
def test_aligned_regions(ranges, size, block, expected):
    assert extents.aligned_regions(ranges, size, block) == expected


def test_zero_block_runs_cover_the_data_in_order():
    r = random.Random(3)
    for block in (8, 700, 4096):
        for _ in range(50):
            blocks = [bytes(block) if r.random() < 0.5 else r.randbytes(block)
                      for _ in range(r.randrange(0, 12))]
            data = b"".join(blocks) + r.randbytes(r.randrange(0, block))
            runs = list(extents.zero_block_runs(data, block))
            assert b"".join(data[s:s + n] for _z, s, n in runs) == data
            pos = 0
            for is_zero, start, length in runs:
                assert start == pos and length > 0
                piece = data[start:start + length]
                if is_zero:
                    assert not any(piece) and length % block == 0
                pos += length
            # runs alternate: adjacent runs of one kind would be one run
            assert all(a[0] != b[0] for a, b in zip(runs, runs[1:]))


def test_a_short_last_block_of_zeros_is_data():
    assert list(extents.zero_block_runs(bytes(10), 8)) == [
        (True, 0, 8), (False, 8, 2)]


def test_min_zero_blocks():
    assert extents.min_zero_blocks(4096) == 256
    assert extents.min_zero_blocks(131072) == 8
    assert extents.min_zero_blocks(16 << 20) == 1
    assert extents.min_zero_blocks(700) == -(-(1 << 20) // 700)


MiB = 1 << 20
BLOCK = 4096


def test_file_pieces_reads_only_the_data_ranges():
    size = 4 * MiB
    asked = []

    def read(offset, length):
        asked.append((offset, length))
        yield b"x" * length
    pieces = list(extents.file_pieces(read, [(10, 5), (3 * MiB, 1)], size, BLOCK))
    assert asked == [(0, BLOCK), (3 * MiB, BLOCK)]
    assert pieces == [extents.Piece(b"x" * BLOCK), extents.Piece(zeros=3 * MiB - BLOCK),
                      extents.Piece(b"x" * BLOCK), extents.Piece(bytes(MiB - BLOCK))]    # short: data


def test_file_pieces_sends_short_zero_runs_as_data():
    data = b"d" * BLOCK + bytes(2 * BLOCK) + b"e" * BLOCK
    pieces = list(extents.file_pieces(lambda offset, length: [data], [(0, len(data))], len(data), BLOCK))
    assert pieces == [extents.Piece(data)]     # too small a file to scan for zero blocks
    big = b"d" * BLOCK + bytes(2 * BLOCK) + b"e" * (MiB - 3 * BLOCK)
    pieces = list(extents.file_pieces(lambda offset, length: [big], [(0, len(big))], len(big), BLOCK))
    assert pieces == [extents.Piece(b"d" * BLOCK), extents.Piece(bytes(2 * BLOCK)),
                      extents.Piece(b"e" * (MiB - 3 * BLOCK))]


def test_file_pieces_stop_at_a_short_read():
    pieces = list(extents.file_pieces(lambda offset, length: [b"x" * 100], [(0, 8 * MiB)], 8 * MiB, BLOCK))
    assert pieces == [extents.Piece(b"x" * 100)]
