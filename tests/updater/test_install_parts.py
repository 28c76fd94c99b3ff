"""Pieces of the installer: exact-size reads from a stream, coalesced runs, read-ahead."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bundle_tool.errors import BundleError
from updater.deltawrite import prefetched
from updater.errors import TransportError
from updater.pieces import ExactReader, paired_runs, runs


@pytest.mark.parametrize("into", [False, True], ids=["take", "take_into"])
@given(
    data=st.binary(max_size=20000),
    cuts=st.lists(st.integers(0, 20000), max_size=12),
    sizes=st.lists(st.integers(0, 5000), max_size=30),
)
def test_exact_reader_returns_the_stream_in_pieces(
    into: bool, data: bytes, cuts: list[int], sizes: list[int]
) -> None:
    bounds = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True)]
    reader = ExactReader(chunks)

    def take(n: int) -> bytes:
        if not into:
            return reader.take(n)
        buffer = bytearray(b"\xee" * n)  # filled across chunks
        reader.take_into(memoryview(buffer))
        return bytes(buffer)

    pos = 0
    for n in sizes:
        if pos + n > len(data):
            with pytest.raises(BundleError, match="ends early"):
                take(n)
            return
        assert take(n) == data[pos : pos + n]
        pos += n


@given(st.lists(st.integers(0, 500), unique=True).map(sorted), st.integers(0, 10))
def test_runs_cover_every_index_once_and_bridge_small_gaps(indices: list[int], gap: int) -> None:
    spans = list(runs(indices, gap))
    covered = [i for first, count in spans for i in range(first, first + count)]
    assert set(indices) <= set(covered)
    assert covered == sorted(set(covered))  # no overlap, in order
    for (a, n), (b, _) in itertools.pairwise(spans):
        assert b - (a + n) > gap  # runs closer than the gap would have been merged
    assert not set(covered) - set(indices) or gap > 0


def test_paired_runs_join_pairs_that_both_go_up_by_one() -> None:
    pairs = [(1, 10), (2, 11), (3, 12), (4, 40), (6, 41), (7, 42), (8, 43), (9, 44)]
    assert list(paired_runs(pairs, 3)) == [(1, 10, 3), (4, 40, 1), (6, 41, 3), (9, 44, 1)]
    assert list(paired_runs([], 3)) == []


def test_prefetched_reads_ahead_in_its_thread_and_keeps_the_order() -> None:
    threads: list[str] = []

    def chunks() -> Iterator[bytes]:
        for n in range(20):
            threads.append(threading.current_thread().name)
            yield bytes([n]) * (n + 1)

    with ThreadPoolExecutor(1, thread_name_prefix="fetch") as pool:
        assert list(prefetched(chunks(), pool, 4)) == [bytes([n]) * (n + 1) for n in range(20)]
    assert len(threads) == 20 and all(t.startswith("fetch") for t in threads)


def test_prefetched_carries_an_error_and_closes_the_source_when_stopped() -> None:
    closed = threading.Event()

    def failing() -> Iterator[bytes]:
        yield b"a"
        raise TransportError("connection reset")

    def endless() -> Iterator[bytes]:
        try:
            while True:
                yield b"x"
        finally:
            closed.set()

    with ThreadPoolExecutor(1) as pool:
        got = prefetched(failing(), pool, 4)
        assert next(got) == b"a"
        with pytest.raises(TransportError, match="connection reset"):
            next(got)
        stream = prefetched(endless(), pool, 4)
        assert next(stream) == b"x"
        stream.close()  # waits for the reads in flight, then closes the source
        assert closed.is_set()
