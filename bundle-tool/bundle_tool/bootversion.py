"""The release version a slot's signed boot image records, read back for `updater status`.

* A FIT (`bootimage.build_fit`) carries it as the root-node property
  `VERSION_PROPERTY`, inside what the configuration signature covers.
* A UKI (`bootimage.build_uki`) carries it as `VERSION_ID=` in its `.osrel` section.

Only a few small ranges of the file are read (the headers, the FIT's root-node
properties, the `.osrel` section), through `read(offset, length)`; anything that is
not one of the two formats, or is malformed, gives None. This is for display: the
boot image's trust comes from the bootloader's signature check.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable

#: The FIT root-node property holding the release version.
VERSION_PROPERTY = "abupdate.version"

#: read(offset, length): up to `length` bytes of the boot image at `offset`.
Read = Callable[[int, int], bytes]

_FDT_MAGIC = 0xD00DFEED
_FDT_BEGIN_NODE, _FDT_END_NODE, _FDT_PROP, _FDT_NOP = 1, 2, 3, 4
_MAX_VALUE = 256
_MAX_ROOT_PROPERTIES = 64
_OSREL_VERSION = re.compile(r'^VERSION_ID="?([^"\n]*)"?$', re.MULTILINE)


def boot_image_version(read: Read) -> str | None:
    """The version a FIT or UKI records, or None (another file, or none recorded)."""
    head = read(0, 64)
    if len(head) >= 40 and struct.unpack_from(">I", head)[0] == _FDT_MAGIC:
        return _fit_version(read, head)
    if head[:2] == b"MZ" and len(head) == 64:
        return _uki_version(read, head)
    return None


def _text(raw: bytes) -> str | None:
    value = raw.split(b"\0", 1)[0]
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def _fit_version(read: Read, head: bytes) -> str | None:
    off_struct, off_strings = struct.unpack_from(">II", head, 8)
    pos = off_struct
    token = read(pos, 8)
    if len(token) < 8 or struct.unpack_from(">I", token)[0] != _FDT_BEGIN_NODE:
        return None
    pos += 8  # the root node's empty name, padded to 4 bytes
    for _ in range(_MAX_ROOT_PROPERTIES):
        raw = read(pos, 12)
        if len(raw) < 4:
            return None
        (kind,) = struct.unpack_from(">I", raw)
        if kind == _FDT_NOP:
            pos += 4
            continue
        if kind != _FDT_PROP or len(raw) < 12:
            return None  # the first subnode: the root's properties are over
        length, name_off = struct.unpack_from(">II", raw, 4)
        name = _text(read(off_strings + name_off, len(VERSION_PROPERTY) + 1))
        if name == VERSION_PROPERTY and length <= _MAX_VALUE:
            return _text(read(pos + 12, length))
        pos += 12 + length + (-length % 4)
    return None


def _uki_version(read: Read, head: bytes) -> str | None:
    (pe,) = struct.unpack_from("<I", head, 0x3C)
    coff = read(pe, 24)
    if len(coff) < 24 or coff[:4] != b"PE\0\0":
        return None
    sections, optional = struct.unpack_from("<H", coff, 6)[0], struct.unpack_from("<H", coff, 20)[0]
    table = read(pe + 24 + optional, 40 * min(sections, 96))
    for at in range(0, len(table) - 39, 40):
        name, vsize, _, raw_size, raw_at = struct.unpack_from("<8sIIII", table, at)
        if name.rstrip(b"\0") == b".osrel":
            text = read(raw_at, min(vsize or raw_size, raw_size, 4096)).decode("utf-8", "replace")
            found = _OSREL_VERSION.search(text)
            return found.group(1) if found else None
    return None
