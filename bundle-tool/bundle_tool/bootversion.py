"""The release and kernel versions a slot's signed boot image records, for `updater status`.

* A FIT (`bootimage.build_fit`) carries them as the root-node properties
  `VERSION_PROPERTY` and `KERNEL_PROPERTY`, inside what the configuration signature covers.
* A UKI (`bootimage.build_uki`) carries the release as `VERSION_ID=` in its `.osrel`
  section and the kernel's release (`uname -r`) in its `.uname` section, as systemd's
  `ukify` does.

Only a few small ranges of the file are read (the headers, the FIT's root-node
properties, the `.osrel` section), through `read(offset, length)`; anything that is
not one of the two formats, or is malformed, gives None. This is for display: the
boot image's trust comes from the bootloader's signature check.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

#: The FIT root-node property holding the release version.
VERSION_PROPERTY = "abupdate.version"
#: The FIT root-node property holding the kernel's release (`uname -r`).
KERNEL_PROPERTY = "abupdate.kernel"

#: read(offset, length): up to `length` bytes of the boot image at `offset`.
Read = Callable[[int, int], bytes]

_FDT_MAGIC = 0xD00DFEED
_FDT_BEGIN_NODE, _FDT_END_NODE, _FDT_PROP, _FDT_NOP = 1, 2, 3, 4
_MAX_VALUE = 256
_MAX_ROOT_PROPERTIES = 64
_OSREL_VERSION = re.compile(r'^VERSION_ID="?([^"\n]*)"?$', re.MULTILINE)


@dataclass(frozen=True)
class BootImageInfo:
    """What a boot image records of itself (None: not recorded).

    Attributes:
        version: The release's version.
        kernel: The kernel's release (`uname -r`).
    """

    version: str | None = None
    kernel: str | None = None


def boot_image_info(read: Read) -> BootImageInfo:
    """What a FIT or UKI records (all None for another file, or one that records nothing)."""
    head = read(0, 64)
    if len(head) >= 40 and struct.unpack_from(">I", head)[0] == _FDT_MAGIC:
        found = _fit_properties(read, head, (VERSION_PROPERTY, KERNEL_PROPERTY))
        return BootImageInfo(found.get(VERSION_PROPERTY), found.get(KERNEL_PROPERTY))
    if head[:2] == b"MZ" and len(head) == 64:
        sections = _uki_sections(read, head, (b".osrel", b".uname"))
        osrel = sections.get(b".osrel")
        version = _OSREL_VERSION.search(osrel) if osrel is not None else None
        kernel = sections.get(b".uname")
        return BootImageInfo(
            version.group(1) if version else None,
            _text(kernel.strip().encode()) if kernel else None,
        )
    return BootImageInfo()


def _text(raw: bytes) -> str | None:
    value = raw.split(b"\0", 1)[0]
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def _fit_properties(read: Read, head: bytes, names: tuple[str, ...]) -> dict[str, str]:
    """The root node's properties of these names (printable ASCII ones only)."""
    off_struct, off_strings = struct.unpack_from(">II", head, 8)
    found: dict[str, str] = {}
    pos = off_struct
    token = read(pos, 8)
    if len(token) < 8 or struct.unpack_from(">I", token)[0] != _FDT_BEGIN_NODE:
        return found
    longest = max(len(n) for n in names) + 1
    pos += 8  # the root node's empty name, padded to 4 bytes
    for _ in range(_MAX_ROOT_PROPERTIES):
        raw = read(pos, 12)
        if len(raw) < 4:
            break
        (kind,) = struct.unpack_from(">I", raw)
        if kind == _FDT_NOP:
            pos += 4
            continue
        if kind != _FDT_PROP or len(raw) < 12:
            break  # the first subnode: the root's properties are over
        length, name_off = struct.unpack_from(">II", raw, 4)
        name = _text(read(off_strings + name_off, longest))
        if name in names and length <= _MAX_VALUE:
            value = _text(read(pos + 12, length))
            if value is not None:
                found[name] = value
        pos += 12 + length + (-length % 4)
    return found


def _uki_sections(read: Read, head: bytes, names: tuple[bytes, ...]) -> dict[bytes, str]:
    """The text of the PE sections of these names (at most 4 KiB each)."""
    found: dict[bytes, str] = {}
    (pe,) = struct.unpack_from("<I", head, 0x3C)
    coff = read(pe, 24)
    if len(coff) < 24 or coff[:4] != b"PE\0\0":
        return found
    sections, optional = struct.unpack_from("<H", coff, 6)[0], struct.unpack_from("<H", coff, 20)[0]
    table = read(pe + 24 + optional, 40 * min(sections, 96))
    for at in range(0, len(table) - 39, 40):
        name, vsize, _, raw_size, raw_at = struct.unpack_from("<8sIIII", table, at)
        if name.rstrip(b"\0") in names:
            data = read(raw_at, min(vsize or raw_size, raw_size, 4096))
            found[name.rstrip(b"\0")] = data.decode("utf-8", "replace")
    return found
