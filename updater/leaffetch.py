"""Fetching the leaf blocks a delta install lacks: whole, or only the parts that changed.

Where the running slot's blocks of a group, hashed with the new salt, do not
give the group's signed leaf block, some of them changed, and the leaf block
says which. With a leaf summary in the bundle (see `bundle_tool.leafsummary`),
only the 512-byte parts of that leaf block whose digests differ from the
summary are fetched; the rest comes from the running slot's digests. The block
so put together is checked against the verified level above, as a fetched one
is; if it does not match (a wrong summary), the whole block is fetched.
"""

from __future__ import annotations

from collections.abc import Mapping

from bundle_tool import leafsummary, verity
from bundle_tool.container import ImageLayout
from bundle_tool.errors import BundleError

from .pieces import ExactReader, runs
from .source import BundleSource
from .tuning import InstallTuning

BLOCK = verity.BLOCK_SIZE
PART = leafsummary.PART_SIZE


class LeafFetcher:
    """Fetches checked leaf blocks from a bundle, using its leaf summary where it has one."""

    def __init__(
        self,
        source: BundleSource,
        part: ImageLayout,
        checker: verity.TreeChecker,
        window: int = InstallTuning.summary_window,
    ) -> None:
        """`window`: summary bytes fetched at a time (`InstallTuning.summary_window`)."""
        self.source = source
        self.checker = checker
        self.leaf_area = part.area_offset + checker.first_leaf * BLOCK
        self.summary_offset = part.summary_offset
        # Only worth it where bytes are costly: a local file gives whole blocks as fast.
        self.summary_size = part.image.leaf_summary_size if source.remote else 0
        self.window = window
        self._window = (0, b"")  # (offset within the summary, its bytes)
        self.patched = 0  # leaf blocks put together from their parts
        self.refetched = 0  # of those that did not match, fetched whole after all

    def fetch(self, wanted: Mapping[int, bytes | None]) -> dict[int, bytes]:
        """The leaf block of each group in `wanted`, checked against the tree.

        `wanted[j]` is what group j's leaf block would be had none of its blocks
        changed (from the running slot's digests), or None if unknown.

        Raises:
            BundleError: a leaf block fetched whole does not match the tree.
        """
        if not wanted:
            return {}
        whole: list[int] = []
        parts: dict[int, tuple[bytes, list[int]]] = {}  # j -> (candidate, parts to fetch)
        for j in sorted(wanted):
            candidate = wanted[j]
            differ = self._differing(j, candidate) if candidate is not None else []
            if candidate is not None and differ:
                parts[j] = (candidate, differ)
            else:
                whole.append(j)
        spans = [(self.leaf_area + j0 * BLOCK, n, BLOCK) for j0, n in runs(whole)]
        for j, (_, differ) in parts.items():
            spans += [(self.leaf_area + j * BLOCK + p * PART, n, PART) for p, n in runs(differ)]
        spans.sort()
        got = self._read(spans)
        out: dict[int, bytes] = {}
        for j in whole:
            out[j] = self.checker.check_leaf(j, got[self.leaf_area + j * BLOCK])
        failed: list[int] = []
        for j, (candidate, differ) in parts.items():
            block = bytearray(candidate)
            for p in differ:
                start = self.leaf_area + j * BLOCK + p * PART
                block[p * PART : (p + 1) * PART] = got[start]
            try:
                out[j] = self.checker.check_leaf(j, bytes(block))
                self.patched += 1
            except BundleError:
                failed.append(j)
        if failed:
            self.refetched += len(failed)
            out.update(self.fetch(dict.fromkeys(failed)))
        return out

    def _differing(self, j: int, candidate: bytes) -> list[int]:
        """The parts of group j's leaf block that differ from `candidate`, by the summary.

        Empty without a summary, and where the summary agrees with `candidate` (which
        then cannot be right, as it did not match the tree): fetch the block whole.
        """
        if not self.summary_size:
            return []
        return leafsummary.differing_parts(candidate, self._entry(j))

    def _entry(self, j: int) -> bytes:
        """Group j's summary entry, from the window of the summary that holds it."""
        at = j * leafsummary.ENTRY_SIZE
        start, data = self._window
        if not start <= at < start + len(data):
            start = at - at % self.window
            length = min(self.window, self.summary_size - start)
            data = self.source.read_exact(self.summary_offset + start, length)
            self._window = (start, data)
        return data[at - start : at - start + leafsummary.ENTRY_SIZE]

    def _read(self, pieces: list[tuple[int, int, int]]) -> dict[int, bytes]:
        """Each piece of the sorted (offset, count, size) runs, by its offset.

        Runs that touch, or lie at most the source's `merge_gap` apart, are read
        as one span (a server may merge touching ranges in its answer; a server
        without several ranges a request is spared requests), the gaps discarded.
        """
        gap = self.source.merge_gap
        spans: list[tuple[int, int, list[tuple[int, int, int]]]] = []  # start, end, pieces
        for at, n, size in pieces:
            end = at + n * size
            if spans and at - spans[-1][1] <= gap:
                start, _, members = spans[-1]
                spans[-1] = (start, end, members)
                members.append((at, n, size))
            else:
                spans.append((at, end, [(at, n, size)]))
        reader = ExactReader(self.source.read_spans([(a, e - a) for a, e, _ in spans]))
        out: dict[int, bytes] = {}
        for start, end, members in spans:
            data = reader.take(end - start)
            for at, n, size in members:
                for k in range(at - start, at - start + n * size, size):
                    out[start + k] = data[k : k + size]
        reader.finish()
        return out
