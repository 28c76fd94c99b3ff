"""The kernel release read from a kernel image (bzImage header, or the banner)."""

from __future__ import annotations

import gzip
import struct

import pytest

from bundle_tool.kernelrelease import kernel_release

BANNER = b"Linux version 6.1.0-57-arm64 (debian-kernel@lists.debian.org) #1 SMP Debian\n"


def bzimage(version: bytes) -> bytes:
    """A bzImage's setup header: "HdrS" at 0x202, kernel_version at 0x20E (from 0x200)."""
    image = bytearray(0x1000)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x20E, 0x600)
    image[0x800 : 0x800 + len(version)] = version
    return bytes(image)


def test_a_bzimage_points_to_its_version() -> None:
    image = bzimage(b"6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP\0")
    assert kernel_release(image) == "6.1.0-57-amd64"


def test_an_image_carries_its_banner_also_compressed() -> None:
    image = b"\0" * 4096 + b"Linux version %s (%s)\0" + b"\1" * 100 + BANNER
    assert kernel_release(image) == "6.1.0-57-arm64"  # the format string is passed over
    assert kernel_release(gzip.compress(image)) == "6.1.0-57-arm64"


@pytest.mark.parametrize(
    "image",
    [
        b"",
        b"\0" * 8192,
        b"Linux version \xff\xfe",
        bzimage(b"\0"),
        bzimage(b"6.1.0")[:0x20F],  # a setup header cut short of its version pointer
        b"\x1f\x8bgarbage",
    ],
)
def test_an_image_that_does_not_tell_gives_none(image: bytes) -> None:
    assert kernel_release(image) is None
