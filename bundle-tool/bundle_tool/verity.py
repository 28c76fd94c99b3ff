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

import bisect
import contextlib
import errno
import hashlib
import itertools
import mmap
import os
import tempfile
import uuid as uuid_mod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO

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

from bootctl import validators

from . import forked
from .errors import BundleError, BundleIOError, UsageError

BLOCK_SIZE = 4096
DIGEST_SIZE = 32
HASHES_PER_BLOCK = BLOCK_SIZE // DIGEST_SIZE
HASH_ALGORITHM = "sha256"
#: The salt rule of every layer; also the size of the superblock's salt field.
MAX_SALT_SIZE = validators.MAX_SALT_SIZE
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
    """Refuse salts the format does not allow (see `bootctl.validators.MIN_SALT_SIZE`)."""
    if not validators.MIN_SALT_SIZE <= len(salt) <= MAX_SALT_SIZE:
        raise UsageError(
            f"salt is {len(salt)} bytes; it must be {validators.MIN_SALT_SIZE} to "
            f"{MAX_SALT_SIZE} bytes (the boot environment needs a non-empty one)"
        )


def _digests(copy: Callable[[], hashlib._Hash], view: memoryview) -> bytes:
    # The hot loop of every tree: kept flat, with its names bound locally.
    out: list[bytes] = []
    append = out.append
    for start in range(0, len(view), BLOCK_SIZE):
        h = copy()
        h.update(view[start : start + BLOCK_SIZE])
        append(h.digest())
    return b"".join(out)


def digest_blocks(salt: bytes, data: bytes | bytearray | memoryview) -> bytes:
    """Concatenated sha256(salt || block) of each 4096-byte block of `data`."""
    return _digests(hashlib.sha256(salt).copy, memoryview(data))


SPOOL_IN_MEMORY = 16 << 20  # tree levels above this size go to a temporary file
CHUNK_BLOCKS = 1024  # data blocks hashed per work item (4 MiB)


@dataclass
class Tree:
    """A built hash tree: the root hash and a spool holding every level.

    The spool keeps memory flat whatever the image size; `area_chunks` yields
    the hash area as `veritysetup format` lays it out (superblock, then the
    levels top first).
    """

    root_hash: bytes
    salt: bytes
    data_blocks: int
    spool: IO[bytes]
    level_spans: tuple[tuple[int, int], ...]  # (offset, length) in the spool, leaf level first

    @property
    def uuid(self) -> bytes:
        return derive_uuid(self.root_hash)

    @property
    def area_size(self) -> int:
        return BLOCK_SIZE + sum(n for _, n in self.level_spans)

    def area_chunks(self, chunk: int = 1 << 20) -> Iterator[bytes]:
        """The hash area, in chunks of at most `chunk` bytes."""
        yield build_superblock(self.salt, self.data_blocks, self.uuid)
        for level in reversed(range(len(self.level_spans))):
            yield from self.level_chunks(level, chunk)

    def level_chunks(self, level: int, chunk: int = 1 << 20) -> Iterator[bytes]:
        """One level (0: the leaves), zero-padded to whole blocks, in chunks.

        Each chunk holds at most `chunk` bytes, a multiple of the block size.
        """
        offset, length = self.level_spans[level]
        left = length
        while left:
            self.spool.seek(offset + length - left)
            data = self.spool.read(min(chunk, left))
            if not data:
                raise BundleIOError("temporary hash tree file shrank")
            left -= len(data)
            yield data

    def area(self) -> bytes:
        """The whole hash area in memory (small trees and tests)."""
        return b"".join(self.area_chunks())

    def close(self) -> None:
        self.spool.close()

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _image_size(fd: int) -> int:
    """Size of a regular file or a block device."""
    return os.lseek(fd, 0, os.SEEK_END)


def hash_mapped(fd: int, base: hashlib._Hash, span: tuple[int, int]) -> bytes:
    """Leaf digests of a span of blocks of an open file, hashed where they are mapped.

    The blocks are hashed where the page cache holds them (a read-only mapping),
    not copied out first. The mapping lasts this call only, so what it adds to
    the resident set stays one span. A block that cannot be read (past the end
    of the file, a medium error) raises SIGBUS: callers check the file's size
    first, and where a medium may fail (a slot read back) call this in a forked
    worker, whose end the parent reports.

    Args:
        fd: the file (or block device), open for reading.
        base: sha256(salt), copied for each block.
        span: (first block, number of blocks).

    Returns:
        The concatenated 32-byte digests, one per block.
    """
    first, count = span
    with mmap.mmap(fd, count * BLOCK_SIZE, offset=first * BLOCK_SIZE, access=mmap.ACCESS_READ) as m:
        view = memoryview(m)
        try:
            return _digests(base.copy, view)
        finally:
            view.release()


#: Where the builder puts each chunk's blocks once they are hashed: store(first block,
#: data), for each run of blocks that are not all zeros (see `SpanHasher`).
Store = Callable[[int, memoryview], None]


def zero_block_digest(salt: bytes) -> bytes:
    """sha256(salt || 4096 zero bytes): the leaf digest of a block of zeros."""
    return digest_blocks(salt, bytes(BLOCK_SIZE))


def data_runs(fd: int, data_blocks: int) -> list[tuple[int, int]]:
    """The runs (first, count) of the first `data_blocks` blocks that the file holds data for.

    The blocks outside them lie in holes of a sparse file: they read as zeros and need
    not be read to be known. The filesystem says where its holes are (`SEEK_DATA` and
    `SEEK_HOLE`, as `cp` asks); a block partly in a hole counts as data, and a file or
    device that cannot tell is all data. One pass over the file (on tmpfs each call
    scans its pages up to the answer).
    """
    pos, end = 0, data_blocks * BLOCK_SIZE
    runs: list[tuple[int, int]] = []
    while pos < end:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            stop = os.lseek(fd, start, os.SEEK_HOLE)
        except OSError as e:
            if e.errno == errno.ENXIO:  # nothing but a hole up to the end of the file
                break
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return [(0, data_blocks)]
            raise
        if start >= end:
            break
        lo = start // BLOCK_SIZE
        hi = min(-(-stop // BLOCK_SIZE), data_blocks)
        if runs and runs[-1][0] + runs[-1][1] == lo:
            lo = runs.pop()[0]
        runs.append((lo, hi - lo))
        pos = hi * BLOCK_SIZE
    return runs


def clip_runs(runs: Sequence[tuple[int, int]], span: tuple[int, int]) -> list[tuple[int, int]]:
    """The parts of the sorted, disjoint `runs` (first, count) that lie within `span`."""
    first, count = span
    end = first + count
    i = max(0, bisect.bisect_right(runs, (first, end)) - 1)
    out = []
    for lo, n in runs[i:]:
        if lo >= end:
            break
        a, b = max(lo, first), min(lo + n, end)
        if a < b:
            out.append((a, b - a))
    return out


def nonzero_runs(digests: bytes, zero: bytes) -> Iterator[tuple[int, int]]:
    """The runs (first, count) of the entries of `digests` that are not `zero`."""
    n = len(digests) // DIGEST_SIZE
    pos = 0
    while pos < n:
        # The next entry equal to `zero` (a match found off an entry boundary is not one).
        at = digests.find(zero, pos * DIGEST_SIZE)
        while at >= 0 and at % DIGEST_SIZE:
            at = digests.find(zero, at + 1)
        stop = n if at < 0 else at // DIGEST_SIZE
        if stop > pos:
            yield pos, stop - pos
        pos = stop
        while pos < n and digests[pos * DIGEST_SIZE : (pos + 1) * DIGEST_SIZE] == zero:
            pos += 1


@dataclass(frozen=True)
class SpanHasher:
    """Leaf digests of spans of blocks of an image, as `hash_mapped`, but sparse-aware.

    Blocks outside `data` (holes of the file, see `data_runs`) are not read: their
    digest is `zero`'s. Then `store(first block, data)` gets each run of blocks of
    the span that are not zero blocks, straight from the mapping they were hashed
    in (the page cache, still warm); it must not keep `data`. A span is hashed
    where this is called: in a forked worker, `store` may only write to files.

    Attributes:
        fd: the image, open for reading.
        base: sha256(salt), copied for each block.
        zero: the zero block's digest under that salt (`zero_block_digest`).
        data: the runs of blocks that hold data (`data_runs`).
        store: where the blocks go (None: nowhere).
    """

    fd: int
    base: hashlib._Hash
    zero: bytes
    data: Sequence[tuple[int, int]]
    store: Store | None = None

    def __call__(self, span: tuple[int, int]) -> bytes:
        """The concatenated 32-byte digests of span (first block, number of blocks)."""
        first, count = span
        runs = clip_runs(self.data, span)
        zero = self.zero
        if not runs:
            return zero * count
        m = mmap.mmap(
            self.fd, count * BLOCK_SIZE, offset=first * BLOCK_SIZE, access=mmap.ACCESS_READ
        )
        view = memoryview(m)
        try:
            parts: list[bytes] = []
            done = first
            for lo, n in runs:
                at = (lo - first) * BLOCK_SIZE
                parts.append(zero * (lo - done))
                parts.append(_digests(self.base.copy, view[at : at + n * BLOCK_SIZE]))
                done = lo + n
            parts.append(zero * (first + count - done))
            digests = b"".join(parts)
            if self.store is not None:
                for lo, n in nonzero_runs(digests, zero):
                    self.store(first + lo, view[lo * BLOCK_SIZE : (lo + n) * BLOCK_SIZE])
            return digests
        finally:
            view.release()
            # A view `store` was given may outlive this call in a traceback; the mapping
            # then goes when that view does.
            with contextlib.suppress(BufferError):
                m.close()


def file_leaf_digests(
    path: str,
    salt: bytes,
    data_blocks: int,
    workers: int | None = None,
    *,
    observe: Callable[[bytes], None] | None = None,
    hashed: Callable[[int, int], None] | None = None,
    store: Store | None = None,
) -> Iterator[bytes]:
    """Leaf digests of the image's data blocks, in order, one chunk of blocks at a time.

    Worker processes (one per core) hash the chunks with a `SpanHasher`: holes of a
    sparse image are not read, and `store` (if given) gets the chunk's blocks that
    are not zeros where they were hashed, in the worker. `observe` sees every chunk
    of data in order (e.g. for a whole-image hash); it runs in this process while
    the workers hash. `hashed(first block, count)` is told of each chunk once its
    digests are in, before they are yielded.
    Raises BundleIOError if the file holds fewer than `data_blocks` blocks.
    """
    workers = workers or os.cpu_count() or 1
    spans = [
        (first, min(CHUNK_BLOCKS, data_blocks - first))
        for first in range(0, data_blocks, CHUNK_BLOCKS)
    ]
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        if _image_size(fd) < data_blocks * BLOCK_SIZE:
            raise BundleIOError(
                f"{path}: holds fewer than {data_blocks} blocks of {BLOCK_SIZE} bytes"
            )
        hash_one = SpanHasher(
            fd, hashlib.sha256(salt), zero_block_digest(salt), data_runs(fd, data_blocks), store
        )
        if workers <= 1 or data_blocks <= 4 * CHUNK_BLOCKS:
            digests: Iterator[bytes] = (hash_one(span) for span in spans)
        else:
            digests = forked.ordered_map(hash_one, spans, workers)
        for (first, count), chunk in zip(spans, digests, strict=True):
            if observe:
                observe(os.pread(fd, count * BLOCK_SIZE, first * BLOCK_SIZE))
            if hashed:
                hashed(first, count)
            yield chunk


def build_tree(
    path: str,
    data_blocks: int,
    salt: bytes,
    *,
    workers: int | None = None,
    observe: Callable[[bytes], None] | None = None,
    hashed: Callable[[int, int], None] | None = None,
    store: Store | None = None,
    spool_dir: str | None = None,
) -> Tree:
    """Build the hash tree of the first `data_blocks` blocks of the file at `path`.

    Args:
        path: the image file.
        data_blocks: number of 4096-byte data blocks (at least 1).
        salt: the dm-verity salt.
        workers: hashing processes (default: CPU count; small images use none).
        observe: called in order with every chunk of image data read.
        hashed: called in order with (first block, count) of each chunk hashed.
        store: given each run of blocks that are not zeros once hashed, in the
            worker that hashed them (see `SpanHasher`).
        spool_dir: where a large tree is spooled (default: the system temp dir).

    Returns:
        The tree. Close it when done to free its spool.
    """
    check_salt(salt)
    if data_blocks < 1:
        raise UsageError("an image must hold at least one 4096-byte block")
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY, dir=spool_dir)  # noqa: SIM115
    try:
        leaf_size = 0
        first_leaves = b""
        for digests in file_leaf_digests(
            path, salt, data_blocks, workers, observe=observe, hashed=hashed, store=store
        ):
            if not first_leaves:
                first_leaves = digests[:DIGEST_SIZE]
            spool.write(digests)
            leaf_size += len(digests)
        if data_blocks == 1:
            return Tree(first_leaves, salt, 1, spool, ())
        pad = (BLOCK_SIZE - leaf_size % BLOCK_SIZE) % BLOCK_SIZE
        spool.write(bytes(pad))
        spans = [(0, leaf_size + pad)]
        # Each upper level hashes the blocks of the level below, read back in chunks.
        while spans[-1][1] > BLOCK_SIZE:
            below_off, below_len = spans[-1]
            level_off = below_off + below_len
            written = 0
            for pos in range(0, below_len, 1 << 20):
                spool.seek(below_off + pos)
                digests = digest_blocks(salt, spool.read(min(1 << 20, below_len - pos)))
                spool.seek(level_off + written)
                spool.write(digests)
                written += len(digests)
            spool.seek(level_off + written)
            pad = (BLOCK_SIZE - written % BLOCK_SIZE) % BLOCK_SIZE
            spool.write(bytes(pad))
            spans.append((level_off, written + pad))
        spool.seek(spans[-1][0])
        root = digest_blocks(salt, spool.read(BLOCK_SIZE))
        return Tree(root, salt, data_blocks, spool, tuple(spans))
    except BaseException:
        spool.close()
        raise


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
        self._parents: bytes = root_hash if len(self.geometry.levels) == 1 else b""
        self._cached: tuple[int, bytes] = (-1, b"")

    def _digest(self, block: bytes | memoryview) -> bytes:
        h = self._base.copy()
        h.update(block)
        return h.digest()

    @property
    def first_leaf(self) -> int:
        """Index, in hash blocks from the start of the area, of the first leaf-level block."""
        return 1 + sum(self.geometry.levels[1:])

    def check_upper(self, blocks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
        """Check the superblock and every level above the leaves.

        `blocks` are the first `first_leaf` blocks of the hash area. Yields
        `(area_block_index, block)` for each block once it is verified, and
        keeps the digests leaf blocks are checked against.
        Raises BundleError naming the first block that does not match.
        """
        levels = self.geometry.levels
        it = iter(blocks)
        if next(it, None) != self._superblock:
            raise BundleError("hash tree superblock does not match the signed manifest")
        yield 0, self._superblock
        expected = self.root_hash  # digests of the blocks of the current level
        index = 1
        for level in range(len(levels) - 1, 0, -1):
            below = bytearray()
            for n in range(levels[level]):
                block = next(it, None)
                if block is None or len(block) != BLOCK_SIZE:
                    raise BundleError("hash tree is truncated")
                if self._digest(block) != expected[n * DIGEST_SIZE : (n + 1) * DIGEST_SIZE]:
                    raise BundleError(
                        f"hash tree block {n} of level {level} does not match the root hash"
                    )
                yield index, block
                index += 1
                below += block
            expected = bytes(below)
        self._parents = expected

    def check_area(self, blocks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
        """Check a whole hash area, given as a sequence of 4096-byte blocks.

        Yields `(area_block_index, block)` for every block once it is verified;
        leaf j is area block `first_leaf + j`. Raises BundleError naming the
        first block that does not match.
        """
        it = iter(blocks)
        yield from self.check_upper(itertools.islice(it, self.first_leaf))
        for j in range(self.geometry.levels[0] if self.geometry.levels else 0):
            block = next(it, None)
            if block is None or len(block) != BLOCK_SIZE:
                raise BundleError("hash tree is truncated")
            if self._digest(block) != self._parents[j * DIGEST_SIZE : (j + 1) * DIGEST_SIZE]:
                raise BundleError(f"hash tree block {j} of level 0 does not match the root hash")
            yield self.first_leaf + j, block
        if next(it, None) is not None:
            raise BundleError("hash tree has extra bytes")

    def check_leaf(self, index: int, block: bytes) -> bytes:
        """Check a leaf-level block that comes back from storage."""
        want = self._parents[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE]
        if len(want) != DIGEST_SIZE or self._digest(block) != want:
            raise BundleError(f"stored hash tree block {index} does not match the root hash")
        return block

    def leaf_digests(
        self, first_block: int, count: int, fetch_leaf: Callable[[int], bytes]
    ) -> bytes:
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
        return first_mismatch(first_block, digest_blocks(self.salt, data), expected)


def first_mismatch(first_block: int, got: bytes, expected: bytes) -> int | None:
    """Index of the first block whose digest in `got` differs from `expected`, or None.

    Both hold the digests of the blocks from `first_block` on, one after the other.
    """
    if got == expected:
        return None
    for i in range(0, max(len(got), len(expected)), DIGEST_SIZE):
        if got[i : i + DIGEST_SIZE] != expected[i : i + DIGEST_SIZE]:
            return first_block + i // DIGEST_SIZE
    return None  # pragma: no cover - unequal strings differ somewhere
