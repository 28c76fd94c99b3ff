"""`reader.check_file_padding`: a file image's padding, checked from a few verified blocks.

The boot image here has 300 blocks, so its tree has a level above the leaves: the
check reads the superblock, that level, one leaf block and the last data block,
each checked against the signed tree before its bytes are looked at.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundle_tool import container, reader, signing
from bundle_tool.container import ImageLayout
from bundle_tool.errors import BundleError
from bundle_tool.manifest import parse_manifest
from bundle_tool.writer import CreateOptions, create_bundle
from tests.bundle.bundles import BUILD_TIME, BytesReader, resign, write_image

BLOCK = 4096
BOOT_BLOCKS = 300
#: Superblock, the level above the leaves, one leaf block, one data block.
READ_AT_MOST = 4 * BLOCK


class CountingReader(BytesReader):
    """An in-memory bundle that counts the bytes read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.read_bytes = 0

    def read(self, offset: int, length: int) -> Iterator[bytes]:
        self.read_bytes += length
        return super().read(offset, length)


def make(tmp_path: Path, signer: signing.Signer, boot: bytes) -> bytes:
    rootfs = write_image(tmp_path / "rootfs.img", 40)
    fit = tmp_path / "boot.itb"
    fit.write_bytes(boot)
    opts = CreateOptions(
        rootfs, "1.0.0", "test-board", [signer], BUILD_TIME, extra_images=(("boot", fit),)
    )
    create_bundle(opts, tmp_path / "b.bundle")
    return (tmp_path / "b.bundle").read_bytes()


def parts(data: bytes) -> tuple[ImageLayout, ImageLayout]:
    header = container.parse_header(data)
    manifest = parse_manifest(data[64 : 64 + header.manifest_size])
    (rootfs, boot), _ = container.layout(header, manifest)
    return rootfs, boot


def unpadded(tmp_path: Path, signer: signing.Signer) -> bytes:
    """A bundle whose boot image is whole blocks of random bytes, signed again with a
    file_size 100 bytes short: its signed padding is not zeros."""
    data = make(tmp_path, signer, random.Random(9).randbytes(BOOT_BLOCKS * BLOCK))

    def shorten(manifest: dict) -> None:
        manifest["images"][1]["file_size"] = manifest["images"][1]["size"] - 100

    return resign(data, signer, shorten)


def test_zero_padding_passes_reading_a_few_blocks(tmp_path: Path, signer: signing.Signer) -> None:
    data = make(tmp_path, signer, random.Random(9).randbytes(BOOT_BLOCKS * BLOCK - 100))
    rootfs, boot = parts(data)
    assert boot.image.file_size == BOOT_BLOCKS * BLOCK - 100
    src = CountingReader(data)
    reader.check_file_padding(src, boot)
    assert 0 < src.read_bytes <= READ_AT_MOST
    reader.check_file_padding(src, rootfs)  # whole blocks: nothing to read
    assert src.read_bytes <= READ_AT_MOST


def test_padding_that_is_not_zeros_is_refused(tmp_path: Path, signer: signing.Signer) -> None:
    data = unpadded(tmp_path, signer)
    src = CountingReader(data)
    with pytest.raises(BundleError, match="its bytes after file_size 1228700 are not zeros"):
        reader.check_file_padding(src, parts(data)[1])
    assert src.read_bytes <= READ_AT_MOST


def test_zeros_put_over_the_signed_padding_are_refused(
    tmp_path: Path, signer: signing.Signer
) -> None:
    """The padding's bytes are looked at only once they match the signed tree."""
    data = bytearray(unpadded(tmp_path, signer))
    boot = parts(bytes(data))[1]
    end = boot.data_offset + boot.image.size
    data[end - 100 : end] = bytes(100)
    with pytest.raises(BundleError, match=rf"image data block {BOOT_BLOCKS - 1} .* hash tree"):
        reader.check_file_padding(BytesReader(bytes(data)), boot)


@pytest.mark.parametrize(("block", "what"), [(1, "of level 1"), (1 + 1 + 2, "stored hash tree")])
def test_a_changed_tree_block_is_refused(
    tmp_path: Path, signer: signing.Signer, block: int, what: str
) -> None:
    """The level above the leaves (area block 1), and the leaf block of the last data block
    (area block 2 + 2: the third of three), are checked before they are used."""
    data = bytearray(unpadded(tmp_path, signer))
    boot = parts(bytes(data))[1]
    data[boot.area_offset + block * BLOCK + 7] ^= 1
    with pytest.raises(BundleError, match=what):
        reader.check_file_padding(BytesReader(bytes(data)), boot)
