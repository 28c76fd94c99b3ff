"""The delta path: keep, copy or fetch each block, in batches of leaf groups.

For each batch, the writer surveys the groups (the leaf blocks the target holds,
the digests of the blocks the target and the running slot hold at the same
place, the leaf blocks it must fetch), then `plan_batch`, a pure function over
those digests, says which blocks are kept, copied or fetched, and the writer
carries that out. Needs a random-access source.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import (
    Callable,
    Collection,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from bundle_tool import verity
from bundle_tool.container import ImageLayout
from bundle_tool.errors import BundleError, BundleIOError
from bundle_tool.manifest import VerityInfo

from . import blockindex, directio, leaffetch, readback
from .errors import DeviceError
from .movedblocks import copy_moved
from .pieces import ExactReader, paired_runs, runs
from .session import ImageWriter, WriteSession
from .slotdev import FileSlot, SlotDevice
from .source import BundleSource
from .tuning import InstallTuning
from .zeroblocks import ZeroBlocks

BLOCK = verity.BLOCK_SIZE
GROUP = verity.HASHES_PER_BLOCK  # data blocks covered by one leaf block
DIGEST = verity.DIGEST_SIZE


def prefetched(
    chunks: Iterable[bytes], pool: ThreadPoolExecutor, depth: int
) -> Generator[bytes, None, None]:
    """The chunks, with up to `depth` of them read ahead in `pool`'s one thread.

    A network source then receives and decrypts (without the GIL) while the
    caller checks and writes what came before.
    """
    it = iter(chunks)
    pending: deque[Future[bytes | None]] = deque()
    try:
        while True:
            while len(pending) < depth:
                pending.append(pool.submit(next, it, None))
            chunk = pending.popleft().result()
            if chunk is None:
                return
            yield chunk
    finally:
        for f in pending:
            f.cancel()
        futures.wait(pending)
        if isinstance(it, Generator):
            it.close()


def group_pieces(first: int, count: int) -> Iterator[tuple[int, int, int]]:
    """Split blocks [first, first + count) at leaf-group bounds: (group, index in it, count)."""
    block, end = first, first + count
    while block < end:
        j, i = divmod(block, GROUP)
        n = min(end - block, GROUP - i)
        yield j, i, n
        block += n


def pack_leaf(digests: bytes) -> bytes:
    """A leaf-level hash block from the digests of up to 128 data blocks."""
    return digests.ljust(BLOCK, b"\x00")


def expected_digests(leaves: Mapping[int, bytes]) -> Callable[[int, int], bytes]:
    """The signed digests of `count` blocks from `first`, from the leaf blocks by group."""

    def expected(first: int, count: int) -> bytes:
        return b"".join(
            leaves[j][i * DIGEST : (i + n) * DIGEST] for j, i, n in group_pieces(first, count)
        )

    return expected


def holds_tree(dev: SlotDevice, vinfo: VerityInfo) -> bool:
    """Whether `dev` holds this image's hash area above the leaves, where it belongs.

    The tree is written before the data, so this is the mark of an earlier
    install of the same image into this slot, interrupted or not: the delta path
    then keeps the blocks it flushed instead of writing them again.
    """
    probe = verity.TreeChecker(vinfo.root_hash, vinfo.salt, vinfo.data_blocks)
    offset = vinfo.data_blocks * BLOCK
    try:
        for _ in probe.check_upper(
            dev.pread(offset + i * BLOCK, BLOCK) for i in range(probe.first_leaf)
        ):
            pass
    except (BundleError, DeviceError):
        return False
    return True


# --- the batch plan, pure --------------------------------------------------------------------


@dataclass(frozen=True)
class GroupDigests:
    """One leaf group as the survey found it, before any of its data blocks is written.

    Attributes:
        group: the group's number (its leaf block's index in the leaf level).
        first: its first data block.
        count: its data blocks (128, fewer in the last group).
        leaf: its signed leaf block (checked against the tree).
        target: the digests (with the new salt) of the blocks the target holds
            there, or None where they were not read.
        active: the same of the running slot, or None.
    """

    group: int
    first: int
    count: int
    leaf: bytes
    target: bytes | None
    active: bytes | None


@dataclass(frozen=True)
class BatchPlan:
    """What to do with each data block of a batch.

    Attributes:
        kept: blocks the target holds already.
        copy: blocks to copy from the running slot, at the same place.
        fetch: blocks to fetch from the source.
        copied_groups: the groups from which at least one block is copied.
        zero: blocks of zeros (by their signed digest), written without a fetch.
        warm_groups: the groups in which the running slot holds at least one wanted
            block (copied, or a zero block it holds too): it is related to the image.
    """

    kept: int
    copy: tuple[int, ...]
    fetch: tuple[int, ...]
    copied_groups: frozenset[int]
    zero: tuple[int, ...] = ()
    warm_groups: frozenset[int] = frozenset()


def same_digest(digests: bytes, leaf: bytes, i: int) -> bool:
    """Whether the i-th digest of `digests` is the i-th one of the leaf block `leaf`."""
    return digests[i * DIGEST : (i + 1) * DIGEST] == leaf[i * DIGEST : (i + 1) * DIGEST]


def plan_batch(groups: Iterable[GroupDigests], zero: ZeroBlocks | None = None) -> BatchPlan:
    """Keep each block whose digest on the target is its signed one, else write zeros
    where its signed digest is a zero block's (with `zero`), else copy it from the
    running slot where that holds it, else fetch it."""
    kept = 0
    copy: list[int] = []
    fetch: list[int] = []
    zeros: list[int] = []
    copied: set[int] = set()
    warm: set[int] = set()
    for g in groups:
        first, count, want, t, a = g.first, g.count, g.leaf, g.target, g.active
        copies = len(copy)
        if t is None and a is None and (zero is None or zero.digest not in want):
            fetch.extend(range(first, first + count))  # a fresh install, no zero block
            continue
        for i in range(count):
            if t is not None and same_digest(t, want, i):
                kept += 1
            elif zero is not None and zero.is_zero(want, i):
                zeros.append(first + i)
                if a is not None and same_digest(a, want, i):
                    warm.add(g.group)
            elif a is not None and same_digest(a, want, i):
                copy.append(first + i)
            else:
                fetch.append(first + i)
        if len(copy) > copies:
            copied.add(g.group)
    return BatchPlan(
        kept, tuple(copy), tuple(fetch), frozenset(copied), tuple(zeros), frozenset(copied | warm)
    )


# --- how hard the running slot is looked at, pure ----------------------------------------------
#
# `cold` counts the groups in a row whose probe found nothing to copy in the running
# slot. Past `cold_groups`, it is only probed every `cold_groups`-th group (a fresh
# install of an unrelated image then costs no extra hashing), and batches grow.


def probes(tuning: InstallTuning, cold: int, group: int) -> bool:
    """Whether group `group` is looked for in the running slot."""
    return cold < tuning.cold_groups or group % tuning.cold_groups == 0


def batch_groups(tuning: InstallTuning, cold: int) -> int:
    """Groups in the next batch: while the running slot holds nothing (a fresh install),
    nearly every block is fetched, and larger batches mean fewer, longer requests."""
    return tuning.batch_groups * (tuning.cold_batches if cold >= tuning.cold_groups else 1)


def cooled(cold: int, probed: Iterable[int], warm_groups: Collection[int]) -> int:
    """`cold` after the probes of a batch, in order: one that found nothing cools, a warm
    group (a copy, even of one block, or a zero block the running slot holds too) warms
    up again."""
    for j in probed:
        cold = 0 if j in warm_groups else cold + 1
    return cold


# --- carrying it out ------------------------------------------------------------------------


def open_active(path: str) -> SlotDevice | None:
    """The running slot, for reading only (the installer never writes it); None if it
    cannot be opened: everything is fetched then."""
    try:
        return FileSlot(path, writable=False)
    except DeviceError:
        return None


def _digests_of(group: tuple[bytes, bytes] | None) -> bytes | None:
    return None if group is None else group[1]


class DeltaWriter(ImageWriter):
    """Writes one image from a random-access source, reusing what the slots hold.

    Args:
        session: the install's write session.
        source: the bundle's source (random access).
        part: where the image lies in the bundle.
        active_device: the running slot's device to copy blocks from, if any.
    """

    def __init__(
        self,
        session: WriteSession,
        source: BundleSource,
        part: ImageLayout,
        active_device: str | None,
    ) -> None:
        self.s = session
        self.source = source
        self.part = part
        self.tuning = session.tuning
        self.active = open_active(active_device) if active_device is not None else None
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="abupdate-fetch")
        self.zeros = directio.Zeros(self.tuning.span_blocks * BLOCK)
        self.cold = 0  # see probes()
        self.moved: blockindex.BlockIndex | None = None  # see index_active
        self.leaf_fetcher = leaffetch.LeafFetcher(
            source, part, session.checker, session.tuning.summary_window
        )
        self.zero = ZeroBlocks.for_salt(session.vinfo.salt)

    def index_active(self, blocks: int) -> None:
        """Index the running slot's first `blocks` blocks, to copy blocks that moved.

        Reported as the "index" phase. A slot that cannot be read whole is indexed
        as far as it goes, or not at all: blocks are then fetched instead.
        """
        if self.active is None:
            return
        path = self.active.path
        try:
            with open(path, "rb", buffering=0) as f:
                blocks = min(blocks, os.lseek(f.fileno(), 0, os.SEEK_END) // BLOCK)

            def report(done: int) -> None:
                self.s.report("index", done * BLOCK, blocks * BLOCK)

            report(0)
            self.moved = blockindex.build(
                path, self.s.vinfo.salt, blocks, report, max_cells=self.tuning.index_cells
            )
        except (OSError, BundleIOError):
            self.moved = None

    def write_tree(self) -> None:
        """Fetch, check and write the superblock and the tree levels above the leaves.

        Reported as the "tree" phase over those blocks: the leaf blocks come with
        the data, batch by batch.
        """
        s = self.s
        first_leaf = s.checker.first_leaf
        upper = first_leaf * BLOCK
        s.report("tree", 0, upper)
        blocks = ExactReader(self.source.read(self.part.area_offset, upper))
        for index, block in s.checker.check_upper(blocks.take(BLOCK) for _ in range(first_leaf)):
            s.dev.pwrite(s.hash_offset + index * BLOCK, block)
        s.report("tree", upper, upper)

    def write_data(self, back: readback.RegionReadBack) -> None:
        """Keep, copy or fetch every data block (and its leaf block), batch after batch."""
        s = self.s
        blocks = s.vinfo.data_blocks
        groups = -(-blocks // GROUP)
        first = 0
        try:
            while first < groups:
                size = batch_groups(self.tuning, self.cold)
                self.batch(range(first, min(groups, first + size)))
                first += size
                end = min(blocks, first * GROUP)
                if s.unflushed >= self.tuning.flush_every:
                    # Batches are written in order: every block before `end` is in place.
                    s.flush(back, end)
                s.report("data", end * BLOCK, self.part.image.size)
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def batch(self, groups: range) -> None:
        """Survey the groups, plan the batch, carry the plan out."""
        leaves, survey, active_data, probed = self.survey(groups)
        plan = plan_batch(survey, self.zero)
        self.cold = cooled(self.cold, probed, plan.warm_groups)
        for j in probed:
            if j not in plan.copied_groups:
                active_data.pop(j, None)  # nothing to copy from it: let it go
        self.apply(plan, leaves, active_data)

    def group_span(self, j: int) -> tuple[int, int]:
        first = j * GROUP
        return first, min(GROUP, self.s.vinfo.data_blocks - first)

    def read_group(self, dev: SlotDevice | None, j: int) -> tuple[bytes, bytes] | None:
        """Group j's blocks as they are on `dev`, and their digests (with the new salt).

        A block whose digest matches its leaf entry may be written from these very
        bytes: they are what was checked.
        """
        if dev is None:
            return None
        first, count = self.group_span(j)
        data = dev.pread(first * BLOCK, count * BLOCK)
        if len(data) < count * BLOCK:
            return None  # a plain file that ends before this group holds none of it
        return data, self.s.digests(data)

    def survey_target(self, j: int, leaf: bytes) -> bytes | None:
        """The digests of group j's blocks on the target; those it keeps are noted as in place.

        A block is kept where its digest there is its signed one (see `plan_batch`).
        """
        group = self.read_group(self.s.dev, j)
        if group is None:
            return None
        data, digests = group
        first, count = self.group_span(j)
        same = [i for i in range(count) if same_digest(digests, leaf, i)]
        with memoryview(data) as view:
            for i0, k in runs(same):
                self.s.written.note(first + i0, view[i0 * BLOCK : (i0 + k) * BLOCK])
        return digests

    def leaf_ok(self, j: int, block: bytes) -> bool:
        try:
            self.s.checker.check_leaf(j, block)
        except BundleError:
            return False
        return True

    def survey(
        self, groups: range
    ) -> tuple[dict[int, bytes], list[GroupDigests], dict[int, bytes], list[int]]:
        """What the target and the running slot hold of each group; the leaf blocks.

        Leaf blocks the target lacks are taken from the running slot where its
        blocks give them, else fetched; each is checked and written to the target.

        Returns:
            The leaf blocks by group, the groups' digests, the running slot's bytes
            of the groups probed (to copy without reading them again), and the
            groups probed, in order.
        """
        s = self.s
        has_leaves = bool(s.checker.geometry.levels)
        leaves: dict[int, bytes] = {}
        on_target: dict[int, bytes | None] = {}
        on_active: dict[int, bytes | None] = {}
        active_data: dict[int, bytes] = {}
        probed: list[int] = []  # groups looked for on the running slot
        # What a changed group's leaf block would be had none of its blocks changed.
        unchanged: dict[int, bytes] = {}
        for j in groups:
            _, count = self.group_span(j)
            if not has_leaves:
                # One data block: its digest is the root hash itself.
                leaves[j] = pack_leaf(s.vinfo.root_hash)
                on_target[j] = self.survey_target(j, leaves[j])
            elif self.leaf_ok(j, stored := s.dev.pread(s.leaf_offset(j), BLOCK)):
                leaves[j] = stored
                on_target[j] = self.survey_target(j, stored)
            else:
                # Without a valid leaf on the target, an interrupted earlier install
                # never reached this group's data: do not bother hashing the target.
                on_target[j] = None
            if j in leaves and on_target[j] == leaves[j][: count * DIGEST]:
                on_active[j] = None  # the target already holds the whole group
                continue
            if j not in leaves and self.leaf_ok(j, zero_leaf := self.zero.leaf(count)):
                leaves[j] = zero_leaf  # a group of zero blocks: nothing to fetch or copy
                s.dev.pwrite(s.leaf_offset(j), zero_leaf)
                on_active[j] = None
                continue
            if probes(self.tuning, self.cold, j):
                probed.append(j)
                group = self.read_group(self.active, j)
            else:
                group = None
            on_active[j] = _digests_of(group)
            if group is not None:
                active_data[j] = group[0]
            if j not in leaves and on_active[j] is not None:
                candidate = pack_leaf(on_active[j] or b"")
                if self.leaf_ok(j, candidate):
                    leaves[j] = candidate
                    s.dev.pwrite(s.leaf_offset(j), candidate)
                    self.cold = 0  # the running slot holds this group: probe the next ones
                else:
                    unchanged[j] = candidate
            if j not in leaves and j not in unchanged:
                # Nothing to go by: a group with some zero blocks gives most of its
                # leaf block (see leaffetch).
                unchanged[j] = self.zero.leaf(count)
        missing = {j: unchanged.get(j) for j in groups if j not in leaves}
        for j, block in sorted(self.leaf_fetcher.fetch(missing).items()):
            s.dev.pwrite(s.leaf_offset(j), block)
            leaves[j] = block
        digests = [
            GroupDigests(j, *self.group_span(j), leaves[j], on_target[j], on_active[j])
            for j in groups
        ]
        return leaves, digests, active_data, probed

    def apply(
        self, plan: BatchPlan, leaves: Mapping[int, bytes], active_data: Mapping[int, bytes]
    ) -> None:
        """Copy, look for moved blocks, fetch: every block of the batch ends up written."""
        s = self.s
        s.reused += plan.kept * BLOCK
        for b0, n in runs(plan.copy):
            # Written from the bytes whose digests matched their leaf entries above.
            for j, i, count in group_pieces(b0, n):
                piece = memoryview(active_data[j])[i * BLOCK : (i + count) * BLOCK]
                s.write(j * GROUP + i, piece)
            s.reused += n * BLOCK
            s.unflushed += n * BLOCK
        self.write_zeros(plan.zero)
        expected = expected_digests(leaves)
        fetch: tuple[int, ...] | list[int] = plan.fetch
        if self.moved is not None:
            fetch = copy_moved(
                plan.fetch, expected, self.moved, lambda g: self.copy_guesses(g, expected)
            )
        wanted = list(runs(fetch, self.source.merge_gap // BLOCK))
        spans = [(self.part.data_offset + b0 * BLOCK, n * BLOCK) for b0, n in wanted]
        span_blocks = self.tuning.span_blocks
        # Fetched together (as few requests as the source allows), checked and written
        # a span at a time (flat memory). Closed before the next batch: the read-ahead
        # thread is done with these answers when the next batch's requests start.
        ahead = prefetched(self.source.read_spans(spans), self.pool, self.tuning.pipeline_depth)
        with contextlib.closing(ahead):
            stream = ExactReader(ahead)
            for b0, n in wanted:
                for first in range(b0, b0 + n, span_blocks):
                    count = min(span_blocks, b0 + n - first)
                    data = stream.take(count * BLOCK)
                    s.write_checked(first, data, expected(first, count))
                s.unflushed += n * BLOCK
            stream.finish()

    def write_zeros(self, blocks: Sequence[int]) -> None:
        """Write the zero blocks, a span at a time (their signed digests say they are zeros)."""
        s = self.s
        span = self.tuning.span_blocks
        for b0, n in runs(blocks):
            for first in range(b0, b0 + n, span):
                count = min(span, b0 + n - first)
                s.write(first, self.zeros.take(count * BLOCK))
            s.unflushed += n * BLOCK
            s.zero += n * BLOCK

    def copy_guesses(
        self, guesses: list[tuple[int, int]], expected: Callable[[int, int], bytes]
    ) -> set[int]:
        """Copy each (block, running slot's block) pair whose running block matches; which did."""
        if self.active is None:
            return set()
        s = self.s
        copied: set[int] = set()
        for b0, c0, asked in paired_runs(guesses, self.tuning.span_blocks):
            data = memoryview(self.active.pread(c0 * BLOCK, asked * BLOCK))
            n = len(data) // BLOCK  # fewer where the slot ends early
            got = s.digests(data[: n * BLOCK])
            want = expected(b0, n)
            same = [i for i in range(n) if same_digest(got, want, i)]
            for i0, k in runs(same):
                s.write(b0 + i0, data[i0 * BLOCK : (i0 + k) * BLOCK])
                copied.update(range(b0 + i0, b0 + i0 + k))
        s.reused += len(copied) * BLOCK
        s.unflushed += len(copied) * BLOCK
        return copied

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.active is not None:
            self.active.close()
        self.zeros.close()
