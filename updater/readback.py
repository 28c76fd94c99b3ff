"""Reading a written slot back from the medium and checking it again (install step 5).

A medium can accept a write and store something else (failing flash, a bad
cable, a lying cache). So once a slot is written and flushed, every block is
read again from the medium (with direct I/O, or else after its page cache was
dropped) and compared with what was put there before the slot may boot.

Trust was settled before the write (each block was checked against the signed
tree), so this compares a fast digest of each extent as read back with the one
taken as it was written (`writelog`): one cryptographic pass per install, not
two. Only where an extent does not match are its blocks hashed against the
signed tree, to name the first bad block.

`RegionReadBack` does it while the install goes on: each time the installer has
flushed another region of data (it writes regions in order, in the stream and
the delta path alike), two forked children read that region's extents back,
half each, while this process writes the next region. At the end the stored
hash area is checked here against the root hash. The children run at a lower
priority than the writing: where the CPU is the limit, they take what the
writing leaves and catch up at the end.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterator

from bundle_tool import forked, verity
from bundle_tool.errors import BundleError, BundleIOError
from bundle_tool.manifest import VerityInfo

from . import writelog
from .directio import AlignedReader
from .errors import DeviceError
from .slotdev import SlotDevice
from .writelog import Extent, WriteLog

BLOCK = verity.BLOCK_SIZE


def medium_failed(dev: SlotDevice, where: str) -> DeviceError:
    return DeviceError(
        f"slot {dev.path} does not read back as written ({where}): the medium may be failing"
    )


def _check_stored_area(dev: SlotDevice, vinfo: VerityInfo, hash_offset: int) -> None:
    """Check the hash area stored on `dev`, block by block, against the root hash."""
    checker = verity.TreeChecker(vinfo.root_hash, vinfo.salt, vinfo.data_blocks)
    area = (dev.pread(hash_offset + i * BLOCK, BLOCK) for i in range(vinfo.tree_size // BLOCK))
    try:
        for _ in checker.check_area(area):
            pass
    except BundleError as e:
        raise DeviceError(f"hash tree on slot {dev.path} does not read back: {e}") from e


def _bad_block(fd: int, checker: verity.TreeChecker, hash_offset: int, extent: Extent) -> str:
    """Why an extent that does not read back as written fails: its first bad block."""

    def leaf(j: int) -> bytes:
        return os.pread(fd, BLOCK, hash_offset + (checker.first_leaf + j) * BLOCK)

    try:
        expected = checker.leaf_digests(extent.first, extent.count, leaf)
    except BundleError as e:
        return f"hash tree: {e}"
    base = hashlib.sha256(checker.salt)
    got = verity.hash_mapped(fd, base, (extent.first, extent.count))
    bad = verity.first_mismatch(extent.first, got, expected)
    if bad is not None:
        return f"block {bad}"
    return f"blocks {extent.first} to {extent.end - 1}"  # changed since, yet as signed


def _read_digest(reader: AlignedReader, name: str, extent: Extent) -> bytes:
    """The read-back digest of an extent as the medium returns it (not the page cache)."""
    try:
        return writelog.digest_pieces(reader.chunks(extent.first * BLOCK, extent.count * BLOCK))
    except EOFError as e:
        raise BundleIOError(f"{name} ends before block {extent.end}") from e
    except OSError as e:
        raise BundleIOError(
            f"reading {name} in blocks {extent.first} to {extent.end - 1} failed: {e.strerror}"
        ) from e


def _check_region(
    name: str, path: str, checker: verity.TreeChecker, hash_offset: int, request: bytes
) -> bytes:
    """In the child: read extents back and compare them; b"" if they match, else why not.

    `path` opens the very file the parent wrote (`SlotDevice.reopen_path`);
    `name` is the slot's name in messages. The extents are read with direct I/O
    where the file system allows it, so from the medium whatever the page cache
    holds; elsewhere through the page cache, which the parent dropped after the flush.
    """
    extents = list(writelog.decode_extents(request))
    if not extents:
        return b""
    end = max(e.end for e in extents)
    with AlignedReader(path) as reader:
        if os.lseek(reader.fd, 0, os.SEEK_END) < end * BLOCK:
            raise BundleIOError(f"{name} ends before block {end}")
        for extent in extents:
            if _read_digest(reader, name, extent) != extent.digest:
                with open(path, "rb", buffering=0) as f:  # buffered reads: any alignment
                    return _bad_block(f.fileno(), checker, hash_offset, extent).encode()
    return b""


def split_extents(extents: list[Extent], parts: int) -> list[list[Extent]]:
    """`extents` in up to `parts` runs of whole extents, of about the same number of blocks."""
    total = sum(e.count for e in extents)
    share = -(-total // parts) if parts else total
    out: list[list[Extent]] = [[]]
    held = 0
    for e in extents:
        if held >= share and len(out) < parts:
            out.append([])
            held = 0
        out[-1].append(e)
        held += e.count
    return [part for part in out if part]


class RegionReadBack:
    """Reads a slot back region by region while the install goes on writing it.

    Create it once the hash area is written (from `checker`, whose upper levels
    are verified, and the `log` the writers note their extents in); call
    `flushed` after each flush, and `finish` after the last.
    Use as a context manager: leaving it stops the children.
    """

    CHILDREN = 2  # each region's extents are split between them
    #: The children yield the CPU to the writing: they may lag, and catch up at the end.
    NICE = 10

    def __init__(
        self, dev: SlotDevice, checker: verity.TreeChecker, vinfo: VerityInfo, log: WriteLog
    ) -> None:
        self.dev = dev
        self.vinfo = vinfo
        self.log = log
        self.hash_offset = vinfo.data_blocks * BLOCK
        self._workers: list[forked.Worker] = []
        check = functools.partial(
            _check_region, dev.path, dev.reopen_path, checker, self.hash_offset
        )
        try:
            for _ in range(self.CHILDREN):
                self._workers.append(forked.Worker(check, nice=self.NICE))
        except OSError as e:
            self.close()
            raise DeviceError(f"cannot start the read-back process: {e.strerror}") from e

    @property
    def pids(self) -> tuple[int, ...]:
        """The children's process ids (0 for one that ended and was reaped)."""
        return tuple(worker.pid for worker in self._workers)

    def flushed(self, upto_block: int) -> None:
        """Data blocks below `upto_block` (and the hash area) are flushed: check them.

        Raises DeviceError as soon as an earlier region is known not to match.
        """
        self.dev.drop_cache()
        try:
            extents = self.log.take(upto_block)
        except ValueError as e:
            raise DeviceError(f"slot {self.dev.path} cannot be read back whole: {e}") from e
        parts = split_extents(extents, len(self._workers))
        for worker, part in zip(self._workers, parts, strict=False):
            try:
                worker.send(writelog.encode_extents(part))
            except BundleIOError as e:
                # The child is gone: its last answers say why, or else how it ended.
                self._take(worker.finish)
                raise DeviceError(f"reading slot {self.dev.path} back failed: {e}") from e
        for worker in self._workers:
            self._take(worker.ready)

    def finish(self) -> None:
        """After the final flush: check the last region, wait for all, check the hash area.

        Raises:
            DeviceError: a block or the hash area does not match, or reading failed.
        """
        self.flushed(self.vinfo.data_blocks)
        if self.log.covered != self.vinfo.data_blocks:
            raise DeviceError(
                f"slot {self.dev.path} cannot be read back whole: blocks from "
                f"{self.log.covered} were not noted as written"
            )
        for worker in self._workers:
            self._take(worker.finish)
        _check_stored_area(self.dev, self.vinfo, self.hash_offset)

    def _take(self, answers: Callable[[], Iterator[bytes]]) -> None:
        try:
            for answer in answers():
                if answer:
                    raise medium_failed(self.dev, answer.decode("utf-8", "replace"))
        except BundleIOError as e:
            raise DeviceError(f"reading slot {self.dev.path} back failed: {e}") from e

    def close(self) -> None:
        for worker in self._workers:
            worker.close()

    def __enter__(self) -> RegionReadBack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
