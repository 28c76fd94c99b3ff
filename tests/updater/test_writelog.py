"""The write log and how the read-back shares it out: pure logic."""

from __future__ import annotations

import pytest

from updater import writelog
from updater.readback import split_extents
from updater.writelog import Extent, WriteLog

BLOCK = 4096


def test_extents_are_taken_in_block_order_below_the_flush() -> None:
    log = WriteLog()
    log.note(4, b"b" * 2 * BLOCK)
    log.note(0, b"a" * 4 * BLOCK)
    log.note(6, b"c" * BLOCK)
    taken = log.take(6)
    assert [(e.first, e.count) for e in taken] == [(0, 4), (4, 2)]
    assert taken[0].digest == writelog.digest(b"a" * 4 * BLOCK) != taken[1].digest
    assert log.covered == 6
    assert [(e.first, e.count) for e in log.take(7)] == [(6, 1)]


def test_a_gap_is_refused_an_overlap_is_not() -> None:
    log = WriteLog()
    log.note(0, b"a" * BLOCK)
    log.note(2, b"a" * BLOCK)
    with pytest.raises(ValueError, match="block 1 was not noted before an extent from block 2"):
        log.take(3)
    twice = WriteLog()
    twice.note(0, b"a" * 2 * BLOCK)
    twice.note(1, b"a" * BLOCK)  # written again, inside a longer download
    assert [(e.first, e.count) for e in twice.take(3)] == [(0, 2), (1, 1)]
    assert twice.covered == 2


def test_a_part_block_is_refused() -> None:
    with pytest.raises(ValueError, match="not whole blocks"):
        WriteLog().note(0, b"a" * 100)


def test_extents_travel_as_32_bytes_each() -> None:
    extents = [Extent(0, 3, bytes(range(16))), Extent(3, 1 << 40, b"\xff" * 16)]
    data = writelog.encode_extents(extents)
    assert len(data) == 2 * writelog.EXTENT_SIZE == 64
    assert list(writelog.decode_extents(data)) == extents
    with pytest.raises(ValueError, match="not whole extents"):
        list(writelog.decode_extents(data[:-1]))


def test_a_region_is_split_in_whole_extents_of_about_equal_blocks() -> None:
    extents = [Extent(i * 10, 10, b"\0" * 16) for i in range(5)]
    parts = split_extents(extents, 2)
    assert [len(p) for p in parts] == [3, 2]
    assert [e for p in parts for e in p] == extents
    assert split_extents(extents[:1], 2) == [extents[:1]]
    assert split_extents([], 2) == []
