"""dm-verity hash trees, byte-compatible with `veritysetup format` (format 1).

The hash area this module builds is what `veritysetup format --hash-offset=N`
writes at offset N: a 512-byte superblock padded to one hash block, then the
tree with the top level first and the leaf level (one digest per data block)
last. Digests are sha256(salt || block); the root hash is the digest of the
single top-level block. See docs/bundle-format.md.

Building is done by `build_tree` (host side, from a file, in parallel);
checking is done by `TreeChecker` (device side, streaming, in small memory).
"""

from __future__ import annotations

import hashlib
import os
import uuid as uuid_mod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from construct import (
    Bytes,
    Const,
    ConstructError,
    Int16ul,
    Int32ul,
    Int64ul,
    PaddedString,
    Padding,
    Struct,
)

from .errors import BundleError, UsageError

BLOCK_SIZE = 4096
DIGEST_SIZE = 32
HASHES_PER_BLOCK = BLOCK_SIZE // DIGEST_SIZE
HASH_ALGORITHM = "sha256"
MAX_SALT_SIZE = 256
SUPERBLOCK_SIZE = 512

#: The dm-verity superblock, as cryptsetup's `struct verity_sb` lays it out.
SUPERBLOCK = Struct(
    "signature" / Const(b"verity\x00\x00"),
    "version" / Const(1, Int32ul),
    "hash_type" / Const(1, Int32ul),
    "uuid" / Bytes(16),
    "algorithm" / PaddedString(32, "ascii"),
    "data_block_size" / Int32ul,
    "hash_block_size" / Int32ul,
    "data_blocks" / Int64ul,
    "salt_size" / Int16ul,
    Padding(6),
    "salt" / Bytes(MAX_SALT_SIZE),
    Padding(168),
)
assert SUPERBLOCK.sizeof() == SUPERBLOCK_SIZE


def level_blocks(data_blocks: int) -> list[int]:
    """Number of hash blocks in each tree level, leaf level first.

    An image of one data block has no tree: its root hash is the digest of
    that block.
    """
    levels: list[int] = []
    n = data_blocks
    while n > 1:
        n = -(-n // HASHES_PER_BLOCK)
        levels.append(n)
    return levels


@dataclass(frozen=True)
class Geometry:
    """Where each tree level lies within the hash area (offsets in bytes)."""

    data_blocks: int
    levels: tuple[int, ...]  # hash blocks per level, leaf level first

    @classmethod
    def for_blocks(cls, data_blocks: int) -> Geometry:
        return cls(data_blocks, tuple(level_blocks(data_blocks)))

    @property
    def tree_blocks(self) -> int:
        return sum(self.levels)

    @property
    def area_size(self) -> int:
        """Bytes of the hash area: superblock block plus all tree levels."""
        return BLOCK_SIZE * (1 + self.tree_blocks)

    def level_offset(self, level: int) -> int:
        """Byte offset of `level` (0 = leaves) within the hash area."""
        above = sum(self.levels[level + 1 :])
        return BLOCK_SIZE * (1 + above)


def derive_uuid(root_hash: bytes) -> bytes:
    """The superblock UUID, derived from the root hash so builds are reproducible."""
    digest = hashlib.sha256(b"abupdate verity uuid\x00" + root_hash).digest()
    return uuid_mod.UUID(bytes=digest[:16], version=4).bytes


def build_superblock(salt: bytes, data_blocks: int, uuid: bytes) -> bytes:
    """The 4096-byte first block of the hash area (superblock plus zero padding)."""
    raw: bytes = SUPERBLOCK.build(
        {
            "uuid": uuid,
            "algorithm": HASH_ALGORITHM,
            "data_block_size": BLOCK_SIZE,
            "hash_block_size": BLOCK_SIZE,
            "data_blocks": data_blocks,
            "salt_size": len(salt),
            "salt": salt.ljust(MAX_SALT_SIZE, b"\x00"),
        }
    )
    return raw.ljust(BLOCK_SIZE, b"\x00")


def parse_superblock(block: bytes) -> tuple[bytes, int, bytes]:
    """Return (salt, data_blocks, uuid) of a hash area's first block."""
    try:
        sb = SUPERBLOCK.parse(block[:SUPERBLOCK_SIZE])
    except ConstructError as e:
        raise BundleError(f"not a dm-verity superblock: {e}") from e
    if sb.algorithm != HASH_ALGORITHM or sb.salt_size > MAX_SALT_SIZE:
        raise BundleError("unsupported dm-verity superblock parameters")
    return bytes(sb.salt[: sb.salt_size]), int(sb.data_blocks), bytes(sb.uuid)


def check_salt(salt: bytes) -> None:
    """Refuse salts that dm-verity cannot take."""
    if len(salt) > MAX_SALT_SIZE:
        raise UsageError(f"salt is {len(salt)} bytes; dm-verity allows at most {MAX_SALT_SIZE}")


def digest_blocks(salt: bytes, data: bytes | memoryview) -> bytes:
    """Concatenated sha256(salt || block) of each 4096-byte block of `data`."""
    base = hashlib.sha256(salt)
    view = memoryview(data)
    out = bytearray()
    for start in range(0, len(view), BLOCK_SIZE):
        h = base.copy()
        h.update(view[start : start + BLOCK_SIZE])
        out += h.digest()
    return bytes(out)


def pack_level(digests: bytes) -> bytes:
    """Pad a level's digests to whole hash blocks."""
    rem = len(digests) % BLOCK_SIZE
    return digests + b"\x00" * ((BLOCK_SIZE - rem) % BLOCK_SIZE)


@dataclass(frozen=True)
class Tree:
    """A built hash tree: the root hash and the whole hash area (superblock first)."""

    root_hash: bytes
    salt: bytes
    data_blocks: int
    area: bytes

    @property
    def uuid(self) -> bytes:
        return derive_uuid(self.root_hash)


CHUNK_BLOCKS = 256  # data blocks hashed per task (1 MiB)


def _leaf_digests(
    read: Callable[[int, int], bytes],
    salt: bytes,
    data_blocks: int,
    workers: int,
    progress: Callable[[int], None] | None,
) -> Iterator[bytes]:
    """Leaf digests of the data blocks, in order, hashed by a pool of threads.

    `hashlib` releases the GIL for large updates, so threads scale across cores.
    At most `2 * workers` chunks are in flight, which keeps memory flat.
    """

    def task(first: int) -> bytes:
        count = min(CHUNK_BLOCKS, data_blocks - first)
        data = read(first * BLOCK_SIZE, count * BLOCK_SIZE)
        return digest_blocks(salt, data)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: list[Future[bytes]] = []
        for first in range(0, data_blocks, CHUNK_BLOCKS):
            pending.append(pool.submit(task, first))
            if len(pending) >= 2 * workers:
                done = pending.pop(0).result()
                if progress:
                    progress(len(done) // DIGEST_SIZE * BLOCK_SIZE)
                yield done
        for fut in pending:
            done = fut.result()
            if progress:
                progress(len(done) // DIGEST_SIZE * BLOCK_SIZE)
            yield done


def build_tree(
    read: Callable[[int, int], bytes],
    data_blocks: int,
    salt: bytes,
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Tree:
    """Build the hash area for `data_blocks` blocks that `read(offset, length)` returns.

    Args:
        read: returns exactly `length` bytes of the image at `offset`.
        data_blocks: number of 4096-byte data blocks (at least 1).
        salt: the dm-verity salt.
        workers: hashing threads (default: CPU count).
        progress: called with the number of image bytes hashed since the last call.

    Returns:
        The tree; its `area` is what `veritysetup format` writes to the hash device.
    """
    check_salt(salt)
    if data_blocks < 1:
        raise UsageError("an image must hold at least one 4096-byte block")
    workers = workers or os.cpu_count() or 1
    leaves = b"".join(_leaf_digests(read, salt, data_blocks, workers, progress))
    levels = [pack_level(leaves)]
    while len(levels[-1]) > BLOCK_SIZE:
        levels.append(pack_level(digest_blocks(salt, levels[-1])))
    if data_blocks == 1:
        root = leaves[:DIGEST_SIZE]
        levels = []
    else:
        root = digest_blocks(salt, levels[-1])
    area = build_superblock(salt, data_blocks, derive_uuid(root)) + b"".join(reversed(levels))
    return Tree(root, salt, data_blocks, area)


class TreeChecker:
    """Checks a hash area as it streams by, then data blocks against it.

    Feed the hash area (superblock first, exactly as built) with `feed_area`;
    every block is checked against the level above before it is passed on, the
    top block against the signed root hash. Only the levels above the leaves
    are kept in memory (about 1/16384 of the image size); leaf blocks are
    handed to the caller, who stores them (in memory, or on the slot) and gives
    them back through `leaf_block` when data blocks are checked. Leaf blocks
    coming back are checked again, so the store need not be trusted.
    """

    def __init__(self, root_hash: bytes, salt: bytes, data_blocks: int) -> None:
        self.root_hash = root_hash
        self.salt = salt
        self.geometry = Geometry.for_blocks(data_blocks)
        self._base = hashlib.sha256(salt)
        self._superblock = build_superblock(salt, data_blocks, derive_uuid(root_hash))
        # Digests of the level above the leaves (or the root when the leaf
        # level is the top), against which leaf blocks are checked.
        self._parents: bytes = b""
        self._cached: tuple[int, bytes] = (-1, b"")

    def _digest(self, block: bytes | memoryview) -> bytes:
        h = self._base.copy()
        h.update(block)
        return h.digest()

    def check_area(self, blocks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
        """Check the hash area, given as a sequence of 4096-byte blocks.

        Yields `(leaf_index, block)` for every verified leaf-level block, in order.
        Raises BundleError naming the first block that does not match.
        """
        levels = self.geometry.levels
        it = iter(blocks)
        first = next(it, None)
        if first != self._superblock:
            raise BundleError("hash tree superblock does not match the signed manifest")
        if not levels:
            self._parents = b""
            return
        expected: bytes = self.root_hash  # digests of the blocks of the current level
        for level in range(len(levels) - 1, -1, -1):
            if level == 0:
                self._parents = expected
            below = bytearray()
            for index in range(levels[level]):
                block = next(it, None)
                if block is None or len(block) != BLOCK_SIZE:
                    raise BundleError("hash tree is truncated")
                want = expected[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE]
                if self._digest(block) != want:
                    raise BundleError(
                        f"hash tree block {index} of level {level} does not match the root hash"
                    )
                if level == 0:
                    yield index, block
                else:
                    below += block
            expected = bytes(below)
        if next(it, None) is not None:
            raise BundleError("hash tree has extra bytes")

    def check_leaf(self, index: int, block: bytes) -> bytes:
        """Check a leaf-level block that comes back from storage."""
        want = self._parents[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE]
        if len(want) != DIGEST_SIZE or self._digest(block) != want:
            raise BundleError(f"stored hash tree block {index} does not match the root hash")
        return block

    def leaf_digests(self, first_block: int, count: int, fetch_leaf: Callable[[int], bytes]) -> bytes:
        """The expected digests of data blocks [first_block, first_block + count).

        `fetch_leaf(j)` returns leaf-level block j from the caller's store; it is
        checked before use and the last one is cached.
        """
        if not self.geometry.levels:
            if (first_block, count) != (0, 1):
                raise BundleError("data block index out of range")
            return self.root_hash
        out = bytearray()
        block = first_block
        end = first_block + count
        while block < end:
            j = block // HASHES_PER_BLOCK
            if self._cached[0] != j:
                self._cached = (j, self.check_leaf(j, fetch_leaf(j)))
            leaf = self._cached[1]
            stop = min(end, (j + 1) * HASHES_PER_BLOCK)
            lo = (block - j * HASHES_PER_BLOCK) * DIGEST_SIZE
            out += leaf[lo : lo + (stop - block) * DIGEST_SIZE]
            block = stop
        return bytes(out)

    def bad_block(self, first_block: int, data: bytes | memoryview, expected: bytes) -> int | None:
        """Index of the first block of `data` whose digest differs from `expected`, or None."""
        got = digest_blocks(self.salt, data)
        if got == expected:
            return None
        for i in range(0, len(got), DIGEST_SIZE):
            if got[i : i + DIGEST_SIZE] != expected[i : i + DIGEST_SIZE]:
                return first_block + i // DIGEST_SIZE
        return None  # pragma: no cover - unequal strings differ somewhere
