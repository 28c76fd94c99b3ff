"""The leaf summary: a few bytes per leaf block of a hash tree, to fetch less of it.

A delta install learns which groups of 128 data blocks changed from the level
above the leaves, but which blocks of such a group changed only from its leaf
block (4096 bytes). Where one or two blocks of most groups changed, fetching
those leaf blocks costs more than half as much as the changed data itself.

The summary holds, for each leaf block, the first 8 bytes of SHA-256 of each of
its eight 512-byte parts (16 leaf entries each): 64 bytes per 512 KiB of image.
A reader that knows what a leaf block would be had nothing changed (the
digests of the running slot's blocks) compares that block's part digests with
the summary, fetches only the parts that differ, and checks the block so put
together against the verified level above, as it would check a fetched one.
The summary is a hint, not a trust anchor: a wrong entry costs a fetch of the
whole leaf block, never a wrong block. See docs/bundle-format.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from construct import Array, Bytes

from .verity import BLOCK_SIZE, Geometry

PART_SIZE = 512  # bytes of a leaf block per part: 16 digests of data blocks
PARTS = BLOCK_SIZE // PART_SIZE
PART_DIGEST_SIZE = 8
#: One leaf block's entry: the truncated SHA-256 of each of its parts, in order.
ENTRY = Array(PARTS, Bytes(PART_DIGEST_SIZE))
ENTRY_SIZE = ENTRY.sizeof()


def summary_size(data_blocks: int) -> int:
    """Bytes of the summary of an image of `data_blocks` blocks (0: it has no leaf level)."""
    levels = Geometry.for_blocks(data_blocks).levels
    return levels[0] * ENTRY_SIZE if levels else 0


def part_digests(leaf_block: bytes | bytearray | memoryview) -> list[bytes]:
    """The truncated digest of each part of a 4096-byte leaf block."""
    if len(leaf_block) != BLOCK_SIZE:
        raise ValueError(f"a leaf block is {BLOCK_SIZE} bytes, not {len(leaf_block)}")
    view = memoryview(leaf_block)
    return [
        hashlib.sha256(view[k : k + PART_SIZE]).digest()[:PART_DIGEST_SIZE]
        for k in range(0, BLOCK_SIZE, PART_SIZE)
    ]


def entry(leaf_block: bytes | bytearray | memoryview) -> bytes:
    """The summary entry of one leaf block (what `ENTRY` builds: the part digests in order)."""
    return b"".join(part_digests(leaf_block))


def summarize(leaf_level: Iterable[bytes]) -> Iterator[bytes]:
    """The summary of a leaf level given in chunks of whole blocks, a chunk at a time."""
    for chunk in leaf_level:
        if len(chunk) % BLOCK_SIZE:
            raise ValueError("leaf level chunks must hold whole blocks")
        yield b"".join(entry(chunk[k : k + BLOCK_SIZE]) for k in range(0, len(chunk), BLOCK_SIZE))


def differing_parts(candidate: bytes | bytearray, raw_entry: bytes) -> list[int]:
    """The parts of `candidate` (a leaf block) whose digests are not those of `raw_entry`."""
    expected = ENTRY.parse(raw_entry)
    return [k for k, got in enumerate(part_digests(candidate)) if got != expected[k]]
