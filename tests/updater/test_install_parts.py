"""Pure pieces of the installer: exact-size reads from a stream, coalesced runs."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bundle_tool.errors import BundleError
from updater.install import ExactReader, runs


@given(
    data=st.binary(max_size=20000),
    cuts=st.lists(st.integers(0, 20000), max_size=12),
    sizes=st.lists(st.integers(0, 5000), max_size=30),
)
def test_exact_reader_returns_the_stream_in_pieces(
    data: bytes, cuts: list[int], sizes: list[int]
) -> None:
    bounds = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)], strict=True)]
    reader = ExactReader(chunks)
    pos = 0
    for n in sizes:
        if pos + n > len(data):
            with pytest.raises(BundleError, match="ends early"):
                reader.take(n)
            return
        assert reader.take(n) == data[pos : pos + n]
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
