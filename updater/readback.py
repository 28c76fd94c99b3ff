"""Reading a written slot back from the medium and checking it again (install step 5).

A medium can accept a write and store something else (failing flash, a bad
cable, a lying cache). So once a slot is written and flushed, its page cache is
dropped and every block is read again and checked against the signed tree
before the slot may boot.

`RegionReadBack` does it while the install goes on: each time the installer has
flushed another region of data (it writes regions in order, in the stream and
the delta path alike), two forked children read that region back, half each in
whole 4 MiB chunks, and check it against the stored leaf level, each leaf block
checked against the verified level above it, while this process writes the next
region. At the end the stored hash area is checked here. The read-back then
costs little more than the last regions, shared by two processes, and a failing
medium is found early. The children run at a lower priority than the writing:
where the CPU is the limit, they take what the writing leaves and catch up at
the end.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterator

from bundle_tool import forked, verity
from bundle_tool.errors import BundleError, BundleIOError
from bundle_tool.manifest import VerityInfo

from .errors import DeviceError
from .slotdev import SlotDevice

BLOCK = verity.BLOCK_SIZE
_REQUEST_BYTES = 8


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


def _check_region(
    path: str, checker: verity.TreeChecker, hash_offset: int, request: bytes
) -> bytes:
    """In the child: read data blocks back and check them; b"" if they match, else why not.

    The blocks are hashed where the page cache holds them once read (see
    `verity.hash_mapped`). A read the medium fails kills this child with
    SIGBUS, and the parent reports it.
    """
    first = int.from_bytes(request[:_REQUEST_BYTES], "little")
    end = first + int.from_bytes(request[_REQUEST_BYTES:], "little")
    base = hashlib.sha256(checker.salt)
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        if os.lseek(fd, 0, os.SEEK_END) < end * BLOCK:
            raise BundleIOError(f"{path} ends before block {end}")

        def leaf(j: int) -> bytes:
            return os.pread(fd, BLOCK, hash_offset + (checker.first_leaf + j) * BLOCK)

        for start in range(first, end, verity.CHUNK_BLOCKS):
            count = min(verity.CHUNK_BLOCKS, end - start)
            try:
                expected = checker.leaf_digests(start, count, leaf)
            except BundleError as e:
                return f"hash tree: {e}".encode()
            got = verity.hash_mapped(fd, base, (start, count))
            bad = verity.first_mismatch(start, got, expected)
            if bad is not None:
                return f"block {bad}".encode()
    return b""


class RegionReadBack:
    """Reads a slot back region by region while the install goes on writing it.

    Create it once the hash area is written (from `checker`, whose upper levels
    are verified); call `flushed` after each flush, and `finish` after the last.
    Use as a context manager: leaving it stops the children.
    """

    CHILDREN = 2  # each region is split between them, in whole 4 MiB chunks
    #: The children yield the CPU to the writing: they may lag, and catch up at the end.
    NICE = 10

    def __init__(self, dev: SlotDevice, checker: verity.TreeChecker, vinfo: VerityInfo) -> None:
        self.dev = dev
        self.vinfo = vinfo
        self.hash_offset = vinfo.data_blocks * BLOCK
        self.sent = 0  # data blocks handed to the children so far
        self._workers: list[forked.Worker] = []
        check = functools.partial(_check_region, dev.path, checker, self.hash_offset)
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
        count = upto_block - self.sent
        if count > 0:
            # Whole read-back chunks each: a child maps its part from its first block,
            # and a mapping must start on a page (up to 64 KiB on some kernels).
            chunks = -(-count // verity.CHUNK_BLOCKS)
            share = -(-chunks // len(self._workers)) * verity.CHUNK_BLOCKS
            for k, worker in enumerate(self._workers):
                first = self.sent + k * share
                n = min(share, upto_block - first)
                if n <= 0:
                    break
                try:
                    worker.send(
                        first.to_bytes(_REQUEST_BYTES, "little")
                        + n.to_bytes(_REQUEST_BYTES, "little")
                    )
                except BundleIOError as e:
                    # The child is gone: its last answers say why, or else how it ended.
                    self._take(worker.finish)
                    raise DeviceError(f"reading slot {self.dev.path} back failed: {e}") from e
            self.sent = upto_block
        for worker in self._workers:
            self._take(worker.ready)

    def finish(self) -> None:
        """After the final flush: check the last region, wait for all, check the hash area.

        Raises:
            DeviceError: a block or the hash area does not match, or reading failed.
        """
        self.flushed(self.vinfo.data_blocks)
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
