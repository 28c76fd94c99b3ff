"""Reading a bundle from any byte source: the head, then the streamed payload.

The trust decisions are the pure functions of `container`, `verity` and
`signing`; this module only moves bytes to them. The updater uses the same
functions, so `bundle-tool verify` checks exactly what a device checks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Protocol

from cryptography import x509

from . import leafsummary, verity
from .container import HEADER_SIZE, ImageLayout, VerifiedHead, parse_header, verify_head
from .errors import BundleError
from .filereader import FileReader
from .keyring import Keyring
from .progress import Progress, ProgressCallback


class RangeReader(Protocol):
    """The part of a byte source the reader needs (see `updater.source.BundleSource`)."""

    def read(self, offset: int, length: int) -> Iterator[bytes]: ...

    def size(self) -> int | None: ...


SPAN_BLOCKS = 256  # data blocks checked per step (1 MiB)


def rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Regroup a stream of chunks into pieces of exactly `size` bytes (the last may be short)."""
    buf = bytearray()
    for chunk in chunks:
        if not buf and len(chunk) == size:
            yield chunk
            continue
        buf += chunk
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


def read_head(
    source: RangeReader,
    keyring: Keyring | Sequence[x509.Certificate],
    *,
    at: datetime,
    threshold: int = 1,
) -> VerifiedHead:
    """Read the header, manifest and signatures, and check them.

    Only the fixed-size header is parsed before the signature check; its sizes
    are bounded, so at most about 2 MiB is read here whatever the input.

    A source of known size must be exactly the bundle's size, except a block
    device (`FileReader.block_device`), which only has to hold it: a device is a
    whole number of sectors, and its bytes after the bundle's end are ignored.
    """
    first = b"".join(source.read(0, HEADER_SIZE))
    header = parse_header(first)
    rest = b"".join(source.read(HEADER_SIZE, header.head_size - HEADER_SIZE))
    head = verify_head(first + rest, keyring, at=at, threshold=threshold)
    size = source.size()
    if size is not None and size < head.total_size:
        raise BundleError(
            f"bundle is truncated: {size} bytes, the manifest accounts for {head.total_size}"
        )
    block_device = isinstance(source, FileReader) and source.block_device
    if size is not None and size > head.total_size and not block_device:
        raise BundleError(
            f"bundle has {size - head.total_size} bytes the manifest does not account for"
        )
    return head


class CheckedImage:
    """One image whose hash area was read and checked; its data is then checked span by span.

    Leaf-level tree blocks are kept in memory (size / 128): this serves the host-side
    check and the installer's file images (boot images, small). The leaf summary,
    only a hint, is not read here: `check_summary` (what `bundle-tool verify` does)
    checks it against the leaf level. The installer streams block images the same
    way but keeps their leaves on the slot.
    """

    def __init__(self, source: RangeReader, part: ImageLayout) -> None:
        self.source = source
        self.part = part
        vinfo = part.image.verity
        self.checker = verity.TreeChecker(vinfo.root_hash, vinfo.salt, vinfo.data_blocks)
        area = rechunk(source.read(part.area_offset, vinfo.tree_size), verity.BLOCK_SIZE)
        first = self.checker.first_leaf
        leaves = {i - first: block for i, block in self.checker.check_area(area) if i >= first}
        self._leaves = [leaves[j] for j in sorted(leaves)]

    def check_summary(self) -> None:
        """Refuse a leaf summary that is not the one the (checked) leaf level gives.

        Read it before `data` (a stream only goes forward).
        """
        size = self.part.image.leaf_summary_size
        if not size:
            return
        got = b"".join(self.source.read(self.part.summary_offset, size))
        if got != b"".join(leafsummary.summarize(self._leaves)):
            raise BundleError("the leaf summary does not match the hash tree")

    def check_data_padding(self) -> None:
        """Refuse padding before the data that is not zeros (`Image.data_padding`).

        Read it after the summary and before `data`. The padding is not signed and
        no reader uses it; it is checked so that a bundle has one form only.
        """
        size = self.part.image.data_padding
        if size and any(b"".join(self.source.read(self.part.data_offset - size, size))):
            raise BundleError(
                f"{self.part.image.slot_class} image: the padding before its data is not zeros"
            )

    def bad_block(self, block: int, span: bytes | memoryview) -> int | None:
        """The first data block of `span` (from data block `block` on) the tree refuses, or None."""
        count = len(span) // verity.BLOCK_SIZE
        expected = self.checker.leaf_digests(block, count, self._leaves.__getitem__)
        return self.checker.bad_block(block, span, expected)

    def data(self, progress: ProgressCallback | None = None) -> Iterator[bytes]:
        """The image data in spans, each yielded once every block of it is checked.

        The whole-image sha256 is checked after the last span: use the data only
        once the iterator is exhausted. A file image's padding (its bytes after
        `file_size`) must be zeros, as the format says, or its span is not yielded.

        Raises:
            BundleError: a block does not match the tree, the padding is not zeros,
                or the whole-image sha256 does not match.
        """
        part = self.part
        # Bundles made with --image-sha256 (and older ones) carry it; the tree binds every
        # byte either way.
        sha = hashlib.sha256() if part.image.sha256 is not None else None
        block = 0
        for span in rechunk(
            self.source.read(part.data_offset, part.image.size), SPAN_BLOCKS * verity.BLOCK_SIZE
        ):
            _refuse_bad_block(part, self.bad_block(block, span))
            _check_padding(part, block * verity.BLOCK_SIZE, span)
            if sha is not None:
                sha.update(span)
            block += len(span) // verity.BLOCK_SIZE
            if progress:
                progress(Progress("verifying", block * verity.BLOCK_SIZE, part.image.size))
            yield span
        if sha is not None and sha.digest() != part.image.sha256:
            raise BundleError("image sha256 does not match the manifest")


def _refuse_bad_block(part: ImageLayout, bad: int | None) -> None:
    """Refuse data block `bad` of the image (None: every block matched its leaf digest)."""
    if bad is not None:
        offset = part.data_offset + bad * verity.BLOCK_SIZE
        raise BundleError(
            f"image data block {bad} (bundle offset {offset}) does not match the hash tree"
        )


def check_file_padding(source: RangeReader, part: ImageLayout) -> None:
    """Refuse a file image whose padding (its bytes after `file_size`) is not zeros.

    What `CheckedImage.data` refuses at the image's last span, found from a
    random-access source before any of the image is used: only the blocks that
    hold the padding are read, with the levels of the hash area above the leaves
    (checked from the root hash down) and the one leaf block that covers them;
    each block is checked against the signed tree before its bytes are looked at.
    At most a few blocks besides the upper levels (as `TreeChecker` keeps them) are
    held whatever the image's size.

    Raises:
        BundleError: a tree or data block does not match the signed tree, or the
            padding is not zeros.
    """
    image = part.image
    if image.length == image.size:
        return
    block_size = verity.BLOCK_SIZE
    vinfo = image.verity
    checker = verity.TreeChecker(vinfo.root_hash, vinfo.salt, vinfo.data_blocks)
    upper = source.read(part.area_offset, checker.first_leaf * block_size)
    for _ in checker.check_upper(rechunk(upper, block_size)):
        pass

    def leaf(j: int) -> bytes:
        offset = part.area_offset + (checker.first_leaf + j) * block_size
        return b"".join(source.read(offset, block_size))

    first = image.length // block_size  # the padding lies in the blocks from this one on
    count = vinfo.data_blocks - first
    expected = checker.leaf_digests(first, count, leaf)
    span = b"".join(source.read(part.data_offset + first * block_size, count * block_size))
    _refuse_bad_block(part, checker.bad_block(first, span, expected))
    _check_padding(part, first * block_size, span)


def _check_padding(part: ImageLayout, start: int, span: bytes) -> None:
    """The bytes of `span` (from image byte `start`) after a file image's length must be zeros."""
    pad = max(0, part.image.length - start)
    if pad < len(span) and span.count(0, pad) != len(span) - pad:
        raise BundleError(
            f"{part.image.slot_class} image: its bytes after file_size {part.image.length} "
            "are not zeros (the padding of a file image)"
        )


def check_image(
    source: RangeReader,
    part: ImageLayout,
    progress: ProgressCallback | None = None,
) -> None:
    """Stream one image's hash area, leaf summary and data and check every block."""
    checked = CheckedImage(source, part)
    checked.check_summary()
    checked.check_data_padding()
    for _ in checked.data(progress):
        pass


def check_payload(
    source: RangeReader, head: VerifiedHead, progress: ProgressCallback | None = None
) -> None:
    """Check every payload byte of a bundle whose head was verified."""
    for part in head.images:
        check_image(source, part, progress)
    for art in head.artifacts:
        sha = hashlib.sha256()
        for chunk in source.read(art.offset, art.artifact.size):
            sha.update(chunk)
        if sha.digest() != art.artifact.sha256:
            raise BundleError(f"artifact {art.artifact.name} does not match its sha256")
