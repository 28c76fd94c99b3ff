"""Where the running slot holds each block, by digest: for finding moved blocks.

The delta path copies a block from the running slot when the slot holds it at
the same offset. With `find_moved_blocks` (device config), it also looks for
each block it would otherwise download anywhere in the running slot: a file
that moved within an ext4 image, data shifted by an inserted block. For that,
the running slot is hashed once with the new image's salt (its own tree has
another salt), and `BlockIndex` maps each distinct digest to one block holding
it.

The index keeps 4 bytes of each digest and the block number in one 64-bit
entry of an open-addressing table, and never more than `MAX_CELLS` entries
(4 MiB), so memory stays flat whatever the slot's size. Up to 393216 blocks
(1.5 GiB) every block is indexed; beyond, every `stride`-th block, and the
caller finds the rest of a moved run from the block found in it (a moved file
is a run of blocks). A lookup gives a candidate, never a verdict: the caller
reads that block, hashes it and compares the full digest with the signed leaf
before writing it, so a prefix that two digests share costs a download, never
a wrong block.
"""

from __future__ import annotations

import functools
import hashlib
import os
from array import array
from collections.abc import Callable, Iterable

from bundle_tool import forked, verity
from bundle_tool.errors import BundleIOError

_KEY_BYTES = 4
_LOW = (1 << 32) - 1
#: Cells of the table at most (8 bytes each); at most 75% of them are filled.
MAX_CELLS = 1 << 19
#: Blocks hashed per piece of work while building.
CHUNK_BLOCKS = verity.CHUNK_BLOCKS


class BlockIndex:
    """Digest prefix -> a block holding that content, for a slot of `blocks` blocks.

    Blocks whose number is a multiple of `stride` are indexed: all of them
    (stride 1) while the table holds them within `max_cells`. Entries are
    `key << 32 | (block + 1)` (0 marks a free cell); the cell of a key is
    `key % size`, probing onwards. A digest already present keeps its first
    block: one place to copy from is enough.
    """

    def __init__(self, blocks: int, max_cells: int = MAX_CELLS) -> None:
        if blocks >= _LOW:
            raise ValueError(f"an index covers fewer than {_LOW} blocks")
        room = max_cells * 3 // 4  # at most 75% full
        self.stride = max(1, -(-blocks // room))
        indexed = -(-blocks // self.stride)
        self._size = min(max_cells, max(8, indexed * 4 // 3 + 1))
        self._table = array("Q", bytes(8 * self._size))
        self.blocks = 0  # distinct digests held

    @property
    def cells(self) -> int:
        """Cells of the table (8 bytes each): at most `max_cells`."""
        return self._size

    def add(self, first: int, digests: bytes) -> None:
        """Record that blocks first, first + 1, ... have these concatenated digests.

        Only the blocks whose number is a multiple of `stride` are kept.
        """
        table, size = self._table, self._size
        step = verity.DIGEST_SIZE
        for n in range(-first % self.stride, len(digests) // step, self.stride):
            key = int.from_bytes(digests[n * step : n * step + _KEY_BYTES], "little")
            cell = key % size
            while entry := table[cell]:
                if entry >> 32 == key:
                    break  # this content is known already
                cell = (cell + 1) % size
            else:
                if self.blocks + 1 >= size:
                    raise ValueError("block index is full")
                table[cell] = key << 32 | (first + n + 1)
                self.blocks += 1

    def find(self, digest: bytes) -> int | None:
        """A block whose digest may be `digest` (check it before use), or None."""
        key = int.from_bytes(digest[:_KEY_BYTES], "little")
        table, size = self._table, self._size
        cell = key % size
        while entry := table[cell]:
            if entry >> 32 == key:
                return (entry & _LOW) - 1
            cell = (cell + 1) % size
        return None


def build(
    path: str,
    salt: bytes,
    blocks: int,
    progress: Callable[[int], None] | None = None,
    workers: int = 2,
    *,
    max_cells: int = MAX_CELLS,
) -> BlockIndex:
    """Index the first `blocks` blocks of the slot at `path`, hashed with `salt`.

    Forked workers hash the slot where the page cache holds it (a medium error
    ends a worker, not this process); this process fills the index, which
    keeps every `stride`-th block of a slot too large for `max_cells`. `progress`
    is called with the number of blocks indexed so far.

    Raises:
        BundleIOError: The slot could not be read.
        OSError: The slot could not be opened.
    """
    index = BlockIndex(blocks, max_cells)
    spans = [(f, min(CHUNK_BLOCKS, blocks - f)) for f in range(0, blocks, CHUNK_BLOCKS)]
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        if os.lseek(fd, 0, os.SEEK_END) < blocks * verity.BLOCK_SIZE:
            raise BundleIOError(f"{path} holds fewer than {blocks} blocks")
        hash_span = functools.partial(verity.hash_mapped, fd, hashlib.sha256(salt))
        chunks: Iterable[bytes] = forked.ordered_map(hash_span, spans, workers)
        for (first, count), digests in zip(spans, chunks, strict=True):
            index.add(first, digests)
            if progress is not None:
                progress(first + count)
    return index
