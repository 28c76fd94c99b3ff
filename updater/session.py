"""One install's writing: the target slot, its checks, the log of what was written, progress.

A `WriteSession` lives while one image is written into its slot (install steps 4
and 5); the stream and the delta writer receive it. The `Installer` outlives
it: it is the device's service (status, floor, checks) and makes one session
per install.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from bundle_tool import verity
from bundle_tool.errors import BundleError
from bundle_tool.manifest import VerityInfo
from bundle_tool.progress import Progress, ProgressCallback

from . import hashing
from .readback import RegionReadBack
from .slotdev import SlotDevice
from .source import BundleSource
from .tuning import InstallTuning
from .writelog import WriteLog

BLOCK = verity.BLOCK_SIZE
DIGEST = verity.DIGEST_SIZE


def refuse_mismatch(first: int, got: bytes, expected: bytes) -> None:
    """Refuse blocks from `first` whose digests `got` are not those `expected`."""
    bad = verity.first_mismatch(first, got, expected)
    if bad is not None:
        raise BundleError(
            f"image block {bad} (image offset {bad * BLOCK}) does not match the signed "
            "hash tree; it was not written"
        )


class WriteSession:
    """What the writers of one image share: where it goes, how blocks are checked, what was done.

    Creating it forks the hashing child (`hashing.SpanDigests`): do it before any
    thread of the install starts. Use as a context manager: leaving it stops the child.

    Args:
        dev: the target slot, open for writing.
        vinfo: the image's signed dm-verity parameters.
        source: where the bundle comes from (its `bytes_fetched` goes into reports).
        tuning: how the work is cut up.
        progress: called with Progress reports.
    """

    def __init__(
        self,
        dev: SlotDevice,
        vinfo: VerityInfo,
        source: BundleSource,
        tuning: InstallTuning,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.dev = dev
        self.vinfo = vinfo
        self.source = source
        self.tuning = tuning
        self.progress = progress
        self.checker = verity.TreeChecker(vinfo.root_hash, vinfo.salt, vinfo.data_blocks)
        #: Where the hash area starts on the slot (right after the data).
        self.hash_offset = vinfo.data_blocks * BLOCK
        #: Image bytes kept on the target or copied from the running slot so far.
        self.reused = 0
        #: Image bytes written as zeros, their signed digests the zero block's, not fetched.
        self.zero = 0
        #: Bytes written since the last flush.
        self.unflushed = 0
        self.hasher = hashing.SpanDigests(vinfo.salt, tuning.span_blocks * BLOCK, tuning.ring_slots)
        #: What the writers put in place, for the read-back to compare with the medium.
        self.written = WriteLog()

    def report(self, phase: str, done: int, total: int) -> None:
        if self.progress:
            self.progress(Progress(phase, done, total, self.source.bytes_fetched, self.reused))

    def leaf_offset(self, j: int) -> int:
        """Where leaf block j (of data blocks 128 j ...) lies on the slot."""
        return self.hash_offset + (self.checker.first_leaf + j) * BLOCK

    def digests(self, data: bytes | memoryview) -> bytes:
        """sha256(salt || block) of each block of `data`, computed by the hashing child."""
        return self.hasher.digests(data)

    def write(self, first: int, data: bytes | memoryview) -> None:
        """Write checked blocks from block `first`, noted for the read-back."""
        self.written.note(first, data)
        self.dev.pwrite(first * BLOCK, data)

    def write_checked(self, first: int, data: bytes, expected: bytes) -> None:
        """Check blocks [first, first + len(data)/4096) against `expected`, then write them.

        Each span is written from the hashing ring's first slot, where it was
        checked (aligned memory: written around the page cache).
        """
        hasher = self.hasher
        span = hasher.span_bytes
        with memoryview(data) as whole:
            for start in range(0, len(whole), span):
                piece = whole[start : start + span]
                at = first + start // BLOCK
                with hasher.view(0, len(piece)) as slot:
                    slot[:] = piece
                hasher.submit(0, len(piece))
                digests = expected[start // BLOCK * DIGEST : (start + len(piece)) // BLOCK * DIGEST]
                refuse_mismatch(at, hasher.collect(), digests)
                with hasher.view(0, len(piece)) as slot:
                    self.write(at, slot)

    def flush(self, back: RegionReadBack, upto_block: int) -> None:
        """Make every write so far durable; the data below `upto_block` is read back."""
        self.dev.flush()
        self.unflushed = 0
        back.flushed(upto_block)

    def close(self) -> None:
        self.hasher.close()

    def __enter__(self) -> WriteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ImageWriter(ABC):
    """Writes one image into its slot: the hash area first, then the data.

    Use as a context manager: leaving it releases what the writer opened.
    """

    @abstractmethod
    def write_tree(self) -> None:
        """Check and write the hash area (what the data is checked against)."""

    @abstractmethod
    def write_data(self, back: RegionReadBack) -> None:
        """Check and write every data block, in order; `back` reads each flushed region back."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the writer opened."""

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
