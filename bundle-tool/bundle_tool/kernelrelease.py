"""The release (`uname -r`) a Linux kernel image was built as, read from the image itself.

* An x86 bzImage points to its version string from its setup header (the
  `kernel_version` field at 0x20E, an offset from 0x200 once "HdrS" is at 0x202).
* Other images (an arm64 `Image`, also gzip-compressed) carry the kernel's banner,
  `Linux version RELEASE (...)`, which is looked for.

It is recorded in the slot's signed boot image (a FIT root property, a UKI's `.uname`
section) for `updater status`: for display, never for a decision.
"""

from __future__ import annotations

import re
import struct
import zlib

#: Longest release string taken (`uname -r` is far shorter).
MAX_RELEASE = 64
#: Bytes of a compressed image unpacked at most while looking for the banner.
MAX_UNPACKED = 128 << 20

_RELEASE = re.compile(rb"[0-9][0-9A-Za-z.+_~-]{0,%d}" % (MAX_RELEASE - 1))
_BANNER = b"Linux version "
#: Where a bzImage's setup header holds its `kernel_version` field.
_VERSION_POINTER = 0x20E


def kernel_release(image: bytes) -> str | None:
    """The release of the kernel in `image`, or None when it cannot be told."""
    if image[0x202:0x206] == b"HdrS" and len(image) >= _VERSION_POINTER + 2:
        (pointer,) = struct.unpack_from("<H", image, _VERSION_POINTER)
        if pointer:
            found = _RELEASE.match(image, 0x200 + pointer)
            if found:
                return found.group().decode()
    if image[:2] == b"\x1f\x8b":
        image = _gunzip(image)
    return _from_banner(image)


def _gunzip(data: bytes) -> bytes:
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, MAX_UNPACKED)
    except zlib.error:
        return b""


def _from_banner(image: bytes) -> str | None:
    at = image.find(_BANNER)
    while at >= 0:
        found = _RELEASE.match(image, at + len(_BANNER))
        if found:
            return found.group().decode()
        at = image.find(_BANNER, at + 1)  # a format string, "Linux version %s": the next
    return None
