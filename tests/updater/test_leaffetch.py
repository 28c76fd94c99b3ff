"""Fetching leaf blocks for a delta install: only the changed parts, checked, or whole."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from bundle_tool import keygen, leafsummary, verity
from bundle_tool.container import ImageLayout
from bundle_tool.errors import BundleError
from tests.updater.device import SALT, image_bytes, make_device
from updater.filesource import FileSource
from updater.install import Installer
from updater.leaffetch import LeafFetcher
from updater.source import BundleSource
from updater.tuning import InstallTuning

GROUPS = 4
OLD = image_bytes(3 * 128 + 100, seed=1)  # the last group has 100 blocks
# Group 0: block 37 (part 2); group 1: blocks 5 and 120 (parts 0 and 7); group 2 as
# it was; group 3: block 64 (part 4).
CHANGED = {37: 2, 128 + 5: 0, 128 + 120: 7, 3 * 128 + 64: 4}


def new_image() -> bytes:
    out = bytearray(OLD)
    for b in CHANGED:
        out[b * 4096 : (b + 1) * 4096] = image_bytes(1, seed=b)
    return bytes(out)


class MemorySource(BundleSource):
    """A bundle in memory that counts like a network source answering several ranges."""

    remote = True
    MERGE_GAP = 0

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data
        self.requests: list[list[tuple[int, int]]] = []

    def read(self, offset: int, length: int) -> Iterator[bytes]:
        self.bytes_fetched += length
        yield self.data[offset : offset + length]

    def read_spans(self, spans: Sequence[tuple[int, int]]) -> Iterator[bytes]:
        self.requests.append(list(spans))
        return super().read_spans(spans)

    def read_exact(self, offset: int, length: int) -> bytes:
        self.requests.append([(offset, length)])
        return super().read_exact(offset, length)

    def size(self) -> int:
        return len(self.data)


class Case:
    def __init__(self, tmp_path: Path, pki: keygen.DevPki, leaf_summary: bool = True) -> None:
        device = make_device(tmp_path / "dev", pki, OLD)
        path = device.bundle(new_image(), leaf_summary=leaf_summary)
        self.raw = bytearray(path.read_bytes())
        with FileSource(str(path)) as src:
            self.part: ImageLayout = Installer(device.config()).check(src).images[0]
        vinfo = self.part.image.verity
        self.checker = verity.TreeChecker(vinfo.root_hash, vinfo.salt, vinfo.data_blocks)
        first = self.checker.first_leaf
        upper = self.part.area_offset
        for _ in self.checker.check_upper(
            bytes(self.raw[upper + i * 4096 : upper + (i + 1) * 4096]) for i in range(first)
        ):
            pass
        self.leaf_area = upper + first * 4096

    def leaf(self, j: int) -> bytes:
        return bytes(self.raw[self.leaf_area + j * 4096 : self.leaf_area + (j + 1) * 4096])

    def fetcher(
        self, source: BundleSource | None = None, tuning: InstallTuning | None = None
    ) -> tuple[LeafFetcher, MemorySource]:
        src = MemorySource(bytes(self.raw))
        window = (tuning or InstallTuning()).summary_window
        fetcher = LeafFetcher(source or src, self.part, self.checker, window)
        return fetcher, src


def unchanged(j: int) -> bytes:
    """Group j's leaf block as the running slot (the old image) gives it."""
    data = OLD[j * 128 * 4096 : (j + 1) * 128 * 4096]
    return verity.digest_blocks(SALT, data).ljust(4096, b"\0")


def test_only_the_changed_parts_are_fetched(tmp_path: Path, pki: keygen.DevPki) -> None:
    case = Case(tmp_path, pki)
    fetcher, src = case.fetcher()
    got = fetcher.fetch({j: unchanged(j) for j in (0, 1, 3)})
    assert got == {j: case.leaf(j) for j in (0, 1, 3)}
    assert (fetcher.patched, fetcher.refetched) == (3, 0)
    # The summary (4 entries of 64 bytes) in one request, then 4 parts of 512 bytes.
    assert src.bytes_fetched == GROUPS * 64 + 4 * 512
    assert src.requests[0] == [(case.part.summary_offset, GROUPS * 64)]
    parts = sorted((case.leaf_area + (b // 128) * 4096 + p * 512, 512) for b, p in CHANGED.items())
    assert src.requests[1] == parts


def test_without_a_candidate_the_block_is_fetched_whole(tmp_path: Path, pki: keygen.DevPki) -> None:
    case = Case(tmp_path, pki)
    fetcher, src = case.fetcher()
    assert fetcher.fetch({0: None, 1: None}) == {0: case.leaf(0), 1: case.leaf(1)}
    assert src.requests == [[(case.leaf_area, 2 * 4096)]]
    assert fetcher.patched == 0


def test_pieces_that_touch_or_lie_close_are_read_as_one_span(
    tmp_path: Path, pki: keygen.DevPki
) -> None:
    case = Case(tmp_path, pki)
    fetcher, src = case.fetcher()
    # Block 0 whole and part 0 of block 1 touch: one range (a server may merge them).
    assert fetcher.fetch({0: None, 1: unchanged(1)}) == {0: case.leaf(0), 1: case.leaf(1)}
    assert src.requests[-1] == [
        (case.leaf_area, 4096 + 512),
        (case.leaf_area + 4096 + 7 * 512, 512),
    ]
    # A server without several ranges a request: gaps up to merge_gap are read through.
    slow = MemorySource(bytes(case.raw))
    slow.MERGE_GAP = 32 << 10
    fetcher, _ = case.fetcher(slow)
    got = fetcher.fetch({j: unchanged(j) for j in (0, 1, 3)})
    assert got == {j: case.leaf(j) for j in (0, 1, 3)}
    first = case.leaf_area + 2 * 512  # block 0, part 2
    last = case.leaf_area + 3 * 4096 + 5 * 512  # block 3, end of part 4
    assert slow.requests[-1] == [(first, last - first)]


def test_a_lying_summary_costs_a_whole_block_never_a_wrong_one(
    tmp_path: Path, pki: keygen.DevPki
) -> None:
    case = Case(tmp_path, pki)
    at = case.part.summary_offset
    entry = bytearray(case.raw[at : at + 64])
    unchanged_parts = leafsummary.ENTRY.parse(leafsummary.entry(unchanged(0)))
    entry[2 * 8 : 3 * 8] = unchanged_parts[2]  # part 2, which changed, said not to
    entry[5 * 8 : 6 * 8] = b"\xff" * 8  # part 5, which did not, said to
    case.raw[at : at + 64] = entry
    fetcher, src = case.fetcher()
    assert fetcher.fetch({0: unchanged(0)}) == {0: case.leaf(0)}
    assert (fetcher.patched, fetcher.refetched) == (0, 1)
    assert src.bytes_fetched == GROUPS * 64 + 512 + 4096


def test_a_summary_that_agrees_with_the_candidate_means_a_whole_block(
    tmp_path: Path, pki: keygen.DevPki
) -> None:
    case = Case(tmp_path, pki)
    at = case.part.summary_offset
    case.raw[at : at + 64] = leafsummary.entry(unchanged(0))
    fetcher, src = case.fetcher()
    assert fetcher.fetch({0: unchanged(0)}) == {0: case.leaf(0)}
    assert src.requests[1] == [(case.leaf_area, 4096)]


def test_a_bad_leaf_block_in_the_bundle_is_refused_where_used(
    tmp_path: Path, pki: keygen.DevPki
) -> None:
    case = Case(tmp_path, pki)
    good = case.leaf(1)
    case.raw[case.leaf_area + 4096 + 600] ^= 1  # leaf block 1, part 1: not fetched
    fetcher, _ = case.fetcher()
    assert fetcher.fetch({1: unchanged(1)}) == {1: good}
    case.raw[case.leaf_area + 4096 + 100] ^= 1  # part 0: fetched, so is the whole block
    fetcher, _ = case.fetcher()
    with pytest.raises(BundleError, match="hash tree block 1 does not match"):
        fetcher.fetch({1: unchanged(1)})


def test_without_a_summary_or_from_a_local_file_blocks_come_whole(
    tmp_path: Path, pki: keygen.DevPki
) -> None:
    bare = Case(tmp_path / "bare", pki, leaf_summary=False)
    fetcher, src = bare.fetcher()
    assert fetcher.fetch({0: unchanged(0)}) == {0: bare.leaf(0)}
    assert src.requests == [[(bare.leaf_area, 4096)]]

    case = Case(tmp_path / "local", pki)
    local = MemorySource(bytes(case.raw))
    local.remote = False
    fetcher, _ = case.fetcher(local)
    assert fetcher.fetch({0: unchanged(0)}) == {0: case.leaf(0)}
    assert local.requests == [[(case.leaf_area, 4096)]]


def test_summary_windows_are_fetched_once_each(tmp_path: Path, pki: keygen.DevPki) -> None:
    case = Case(tmp_path, pki)
    fetcher, src = case.fetcher(tuning=InstallTuning(summary_window=192))  # 3 entries: 3 + 1
    for j in (0, 1, 3, 2):
        assert fetcher.fetch({j: unchanged(j)}) == {j: case.leaf(j)}
    start, end = case.part.summary_offset, case.part.data_offset
    summary = [r for r in src.requests if start <= r[0][0] < end]
    assert summary == [[(start, 192)], [(start + 192, 64)], [(start, 192)]]
    with pytest.raises(ValueError, match="whole entries"):
        InstallTuning(summary_window=100)
