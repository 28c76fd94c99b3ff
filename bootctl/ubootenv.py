"""U-Boot environment codec (single and redundant) and `fw_env.config` parser, pure.

Byte layout, as U-Boot's `env/common.c` and libubootenv read and write it:

* single copy of size S: u32 CRC-32 (little-endian) over bytes [4, S), then the data;
* redundant copy of size S: u32 CRC-32 over bytes [5, S), u8 flags, then the data.

The data is `name=value\\0` entries, an empty entry (`\\0`) ending the list, then padding to S
(the padding is inside the CRC). Of two valid redundant copies the one with the higher flags
wins, except that 0 is newer than 255; equal flags pick the first copy.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import crcmod.predefined
from construct import Int8ul, Int32ul, Struct

from bootctl import validators
from bootctl.errors import ConfigError, EnvCorruptError, EnvError, EnvOverflowError, EnvSizeError

__all__ = [
    "REDUNDANT_HEADER",
    "SINGLE_HEADER",
    "EnvCopy",
    "EnvLocation",
    "crc32",
    "decode_redundant",
    "decode_single",
    "decode_vars",
    "encode_redundant",
    "encode_single",
    "encode_vars",
    "next_flags",
    "parse_fw_env_config",
    "select_copy",
]

#: Header of a single-copy environment.
SINGLE_HEADER = Struct("crc" / Int32ul)
#: Header of one copy of a redundant environment.
REDUNDANT_HEADER = Struct("crc" / Int32ul, "flags" / Int8ul)

_crc32 = crcmod.predefined.mkCrcFun("crc-32")
_MIN_SIZE = 16
_MAX_SIZE = 64 * 1024 * 1024
_FIELD_NAMES = ("offset", "size", "sector size", "sector count")


def crc32(data: bytes) -> int:
    """CRC-32 with the zlib polynomial, as U-Boot computes it over the environment data."""
    return int(_crc32(data))


# ---------------------------------------------------------------------------------------------
# fw_env.config


@dataclass(frozen=True)
class EnvLocation:
    """One line of `fw_env.config`: where one copy of the environment lives.

    Attributes:
        device: Block device, MTD device or plain file.
        offset: Byte offset of the copy in `device`.
        size: Size of the copy in bytes.
        sector_size: Erase sector size (MTD only), if given.
        sectors: Number of sectors (MTD only), if given.
    """

    device: str
    offset: int
    size: int
    sector_size: int | None = None
    sectors: int | None = None


def _parse_number(text: str, what: str, lineno: int) -> int:
    value = validators.parse_uint(text)
    if value is None:
        raise ConfigError(
            f"fw_env.config line {lineno}: {what} {text!r} "
            "is not a number (decimal, or hex with 0x)"
        )
    return value


def parse_fw_env_config(lines: Iterable[str]) -> tuple[EnvLocation, ...]:
    """Parse `fw_env.config` text: `device offset size [sector_size [sectors]]` per line.

    Blank lines and `#` comments are skipped. One line is a single environment, two lines a
    redundant one (both copies must have the same size).

    Args:
        lines: The file's lines (or the board config's `env.fw_env_config` list).

    Returns:
        One or two locations.

    Raises:
        ConfigError: A line is malformed, or there are zero or more than two lines.
    """
    locations: list[EnvLocation] = []
    for lineno, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            fields = shlex.split(line)
        except ValueError as e:
            raise ConfigError(f"fw_env.config line {lineno}: {e}") from e
        if not 3 <= len(fields) <= 5:
            raise ConfigError(
                f"fw_env.config line {lineno}: expected 'device offset size [sector_size "
                f"[sectors]]', got {len(fields)} fields"
            )
        numbers = [
            _parse_number(f, w, lineno) for f, w in zip(fields[1:], _FIELD_NAMES, strict=False)
        ]
        size = numbers[1]
        if not _MIN_SIZE <= size <= _MAX_SIZE:
            raise ConfigError(f"fw_env.config line {lineno}: size {size:#x} is out of range")
        locations.append(
            EnvLocation(
                device=fields[0],
                offset=numbers[0],
                size=size,
                sector_size=numbers[2] if len(numbers) > 2 else None,
                sectors=numbers[3] if len(numbers) > 3 else None,
            )
        )
    if not 1 <= len(locations) <= 2:
        raise ConfigError(f"fw_env.config must have 1 or 2 entries, found {len(locations)}")
    if len(locations) == 2 and locations[0].size != locations[1].size:
        raise ConfigError(
            "fw_env.config: both copies of a redundant environment need the same size"
        )
    return tuple(locations)


# ---------------------------------------------------------------------------------------------
# variables <-> data area


def _check_name(name: str) -> None:
    if not name or "=" in name or "\0" in name or any(c.isspace() for c in name):
        raise EnvError(f"invalid environment variable name {name!r}")


def encode_vars(env: Mapping[str, str], data_size: int, pad: int = 0x00) -> bytes:
    """Encode variables as the environment data area, sorted by name as U-Boot exports them.

    Args:
        env: Variables.
        data_size: Size of the data area (environment size minus header).
        pad: Padding byte (U-Boot writes 0x00, `mkenvimage` 0xFF).

    Returns:
        Exactly `data_size` bytes.

    Raises:
        EnvError: A name or value cannot be stored (empty, `=` in a name, NUL byte).
        EnvOverflowError: The variables do not fit.
    """
    out = bytearray()
    for name in sorted(env):
        value = env[name]
        _check_name(name)
        if "\0" in value:
            raise EnvError(f"value of {name} contains a NUL byte")
        out += name.encode("utf-8", "surrogateescape") + b"="
        out += value.encode("utf-8", "surrogateescape") + b"\0"
    out += b"\0"
    if len(out) > data_size:
        raise EnvOverflowError(
            f"environment needs {len(out)} bytes but only {data_size} are available"
        )
    return bytes(out) + bytes([pad]) * (data_size - len(out))


def decode_vars(data: bytes) -> dict[str, str]:
    """Decode the environment data area into variables.

    Entries without `=` are skipped, as U-Boot's import does; a later duplicate wins.

    Args:
        data: The data area (after the header).

    Returns:
        The variables.

    Raises:
        EnvCorruptError: The list is not terminated by an empty entry.
    """
    env: dict[str, str] = {}
    pos = 0
    while True:
        end = data.find(b"\0", pos)
        if end < 0:
            raise EnvCorruptError("environment data is not terminated")
        if end == pos:
            return env
        entry = data[pos:end].decode("utf-8", "surrogateescape")
        name, sep, value = entry.partition("=")
        if sep and name:
            env[name] = value
        pos = end + 1


# ---------------------------------------------------------------------------------------------
# single copy


def encode_single(env: Mapping[str, str], size: int, pad: int = 0x00) -> bytes:
    """Build a single-copy environment image of `size` bytes.

    Raises:
        EnvError: See `encode_vars`.
    """
    data = encode_vars(env, size - SINGLE_HEADER.sizeof(), pad)
    return bytes(SINGLE_HEADER.build({"crc": crc32(data)})) + data


def decode_single(blob: bytes, size: int | None = None) -> dict[str, str]:
    """Decode a single-copy environment image.

    Args:
        blob: The image.
        size: Expected size; a different `len(blob)` is an error.

    Returns:
        The variables.

    Raises:
        EnvSizeError: `blob` does not have the expected size.
        EnvCorruptError: The CRC does not match.
    """
    if size is not None and len(blob) != size:
        raise EnvSizeError(f"environment is {len(blob)} bytes, configured size is {size}")
    if len(blob) < _MIN_SIZE:
        raise EnvSizeError(f"environment of {len(blob)} bytes is too small")
    header = SINGLE_HEADER.parse(blob)
    data = blob[SINGLE_HEADER.sizeof() :]
    if crc32(data) != header.crc:
        raise EnvCorruptError("environment CRC mismatch")
    return decode_vars(data)


# ---------------------------------------------------------------------------------------------
# redundant copies


@dataclass(frozen=True)
class EnvCopy:
    """One valid copy of a redundant environment.

    Attributes:
        flags: The copy's serial number (wraps 255 -> 0).
        env: Its variables.
    """

    flags: int
    env: dict[str, str]


def encode_redundant(env: Mapping[str, str], size: int, flags: int, pad: int = 0x00) -> bytes:
    """Build one copy of a redundant environment.

    Args:
        env: Variables.
        size: Size of the copy.
        flags: Serial number, 0..255.
        pad: Padding byte.

    Returns:
        `size` bytes.

    Raises:
        EnvError: See `encode_vars`, or `flags` out of range.
    """
    if not 0 <= flags <= 255:
        raise EnvError(f"flags {flags} out of range 0..255")
    data = encode_vars(env, size - REDUNDANT_HEADER.sizeof(), pad)
    return bytes(REDUNDANT_HEADER.build({"crc": crc32(data), "flags": flags})) + data


def decode_redundant(blob: bytes, size: int | None = None) -> EnvCopy | None:
    """Decode one copy of a redundant environment.

    Args:
        blob: The copy's bytes.
        size: Expected size; a different `len(blob)` is an error.

    Returns:
        The copy, or None if its CRC does not match or its data is unterminated.

    Raises:
        EnvSizeError: `blob` does not have the expected size.
    """
    if size is not None and len(blob) != size:
        raise EnvSizeError(f"environment copy is {len(blob)} bytes, configured size is {size}")
    if len(blob) < _MIN_SIZE:
        raise EnvSizeError(f"environment of {len(blob)} bytes is too small")
    header = REDUNDANT_HEADER.parse(blob)
    data = blob[REDUNDANT_HEADER.sizeof() :]
    if crc32(data) != header.crc:
        return None
    try:
        return EnvCopy(flags=header.flags, env=decode_vars(data))
    except EnvCorruptError:
        return None


def select_copy(first: EnvCopy | None, second: EnvCopy | None) -> int | None:
    """Pick the current copy exactly as U-Boot's `env_import_redund` does.

    Args:
        first: Copy 0, or None if invalid.
        second: Copy 1, or None if invalid.

    Returns:
        0 or 1, or None if both copies are invalid.
    """
    if first is None and second is None:
        return None
    if second is None:
        return 0
    if first is None:
        return 1
    if first.flags == 255 and second.flags == 0:
        return 1
    if second.flags == 255 and first.flags == 0:
        return 0
    if second.flags > first.flags:
        return 1
    return 0


def next_flags(flags: int) -> int:
    """The flags value of the next write (wraps 255 -> 0)."""
    return (flags + 1) & 0xFF
