"""The stream path: the hash area, then every data block in order, each checked, then written.

It reads the bundle once, in order, so it serves standard input, and a fresh
install from a file (faster there than looking for blocks to reuse).

A span whose signed leaf digests are all the zero block's (free space in a
filesystem image, `zeroblocks`) is not read from the bundle nor hashed: its
blocks are zeros, and zeros are written (a stream reads and drops its bytes).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from bundle_tool import verity
from bundle_tool.container import ImageLayout
from bundle_tool.errors import BundleError

from . import directio, readback
from .pieces import ExactReader
from .session import ImageWriter, WriteSession, refuse_mismatch
from .source import BundleSource, SequentialReader
from .zeroblocks import ZeroBlocks

BLOCK = verity.BLOCK_SIZE
#: The ring slot of a span of zero blocks: none (it is written from a buffer of zeros).
ZERO_SPAN = -1


class StreamWriter(ImageWriter):
    """Writes one image from a source read in order.

    Args:
        session: the install's write session (target, checker, hashing ring).
        source: the bundle's source.
        part: where the image lies in the bundle.
    """

    def __init__(self, session: WriteSession, source: BundleSource, part: ImageLayout) -> None:
        self.session = session
        self.source = source
        self.part = part
        self._data: SequentialReader | None = None

    def write_tree(self) -> None:
        """Check and write the hash area, each block against the level above.

        The data is read on its own after it, so that its chunks start on a data
        block and each span is taken whole from one chunk, without a copy.
        """
        s = self.session
        tree_size = s.vinfo.tree_size
        s.report("tree", 0, tree_size)
        tree = ExactReader(self.source.read(self.part.area_offset, tree_size))
        area = (tree.take(BLOCK) for _ in range(tree_size // BLOCK))
        for index, hash_block in s.checker.check_area(area):
            s.dev.pwrite(s.hash_offset + index * BLOCK, hash_block)
        tree.finish()
        s.report("tree", tree_size, tree_size)
        self._data = self.source.open_range(self.part.data_offset, self.part.image.size)

    def write_data(self, back: readback.RegionReadBack) -> None:
        """Check each data block before writing it; each flushed region is read back.

        Each span goes round the hashing ring (`hashing.SpanDigests`): read into a
        free slot (in one thread), hashed by the child, compared here with the
        signed leaves, written from the same slot (in another thread), and the
        slot is free again. So a span is read, another hashed and others written
        while this thread compares. Writes stay in order, and a flush waits for
        every write before it. A span of zero blocks takes no slot.
        """
        if self._data is None:
            raise ValueError("write the hash area first")
        _Ring(self.session, self._data, back, self.part.image.size).run()

    def close(self) -> None:
        if self._data is not None:
            self._data.close()
            self._data = None


class _Ring:
    """The state of one pass of the data through the hashing ring."""

    def __init__(
        self,
        session: WriteSession,
        data: SequentialReader,
        back: readback.RegionReadBack,
        image_size: int,
    ) -> None:
        self.s = session
        self.data = data
        self.back = back
        self.image_size = image_size
        self.blocks = session.vinfo.data_blocks
        self.span_blocks = session.tuning.span_blocks
        self.flush_every = session.tuning.flush_every
        self.free = deque(range(session.hasher.slots))
        #: Spans being read: first block, count, ring slot (or ZERO_SPAN), signed digests.
        self.reads: deque[tuple[int, int, int, bytes, Future[None]]] = deque()
        self.hashed: deque[tuple[int, int, int, bytes]] = deque()  # with the child, in order
        self.writes: deque[tuple[int, Future[None]]] = deque()  # slot, write
        self.next_block = 0
        self.zero_digest = ZeroBlocks.for_salt(session.vinfo.salt).digest
        self.zeros = directio.Zeros(self.span_blocks * BLOCK)

    def leaf(self, j: int) -> bytes:
        return self.s.dev.pread(self.s.leaf_offset(j), BLOCK)

    def reclaim(self, wait: int) -> None:
        """Free the slots of finished writes, after waiting for the oldest `wait`."""
        writes = self.writes
        while writes and (wait > 0 or writes[0][1].done()):
            slot, write = writes.popleft()
            write.result()
            if slot != ZERO_SPAN:
                self.free.append(slot)
            wait -= 1

    def expected(self, first: int, count: int) -> bytes:
        """The signed digests of blocks [first, first + count)."""
        try:
            return self.s.checker.leaf_digests(first, count, self.leaf)
        except BundleError as e:  # the leaf block was checked before it was written
            raise readback.medium_failed(self.s.dev, f"hash tree: {e}") from e

    def read_ahead(self, reader: ThreadPoolExecutor) -> None:
        self.reclaim(0)
        ahead = 2 * self.s.hasher.slots  # spans of zeros take no slot: bound them too
        while self.next_block < self.blocks and len(self.reads) < ahead:
            first = self.next_block
            count = min(self.span_blocks, self.blocks - first)
            expected = self.expected(first, count)
            if expected == self.zero_digest * count:
                skip = reader.submit(self.data.skip, count * BLOCK)
                self.reads.append((first, count, ZERO_SPAN, expected, skip))
            else:
                if not self.free:
                    if self.reads or self.hashed:
                        break  # a slot comes free as they are written
                    while not self.free:  # every slot is being written: wait for one
                        self.reclaim(1)
                slot = self.free.popleft()
                view = self.s.hasher.view(slot, count * BLOCK)
                read = reader.submit(self.data.take_into, view)
                self.reads.append((first, count, slot, expected, read))
            self.next_block += count

    def check_and_write(self, writer: ThreadPoolExecutor) -> None:
        s = self.s
        first, count, slot, expected = self.hashed.popleft()
        if slot == ZERO_SPAN:
            view = self.zeros.take(count * BLOCK)  # the signed digests say they are zeros
            s.zero += count * BLOCK
        else:
            refuse_mismatch(first, s.hasher.collect(), expected)
            view = s.hasher.view(slot, count * BLOCK)
        s.written.note(first, view)  # the slot's bytes stay as they are until written
        self.writes.append((slot, writer.submit(s.dev.pwrite, first * BLOCK, view)))
        s.unflushed += count * BLOCK
        if s.unflushed >= self.flush_every:
            self.reclaim(len(self.writes))
            s.flush(self.back, first + count)
        s.report("data", (first + count) * BLOCK, self.image_size)

    def run(self) -> None:
        reader = ThreadPoolExecutor(1, thread_name_prefix="abupdate-read")
        writer = ThreadPoolExecutor(1, thread_name_prefix="abupdate-write")
        hasher = self.s.hasher
        reads, hashed = self.reads, self.hashed
        try:
            self.read_ahead(reader)
            while reads or hashed:
                if reads:
                    first, count, slot, expected, pending = reads.popleft()
                    pending.result()
                    if slot != ZERO_SPAN:
                        hasher.submit(slot, count * BLOCK)
                    hashed.append((first, count, slot, expected))
                # One span stays with the child while this thread checks the one before.
                if len(hashed) > 1 or not reads:
                    self.check_and_write(writer)
                self.read_ahead(reader)
            self.reclaim(len(self.writes))
        finally:
            reader.shutdown(wait=False, cancel_futures=True)
            writer.shutdown(wait=True, cancel_futures=True)
            self.zeros.close()
