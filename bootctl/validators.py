"""Checks of untrusted text shared by every layer (manifest, board and device configs, env).

Each check bounds the length first, then matches the whole string (`re.fullmatch`) against an
ASCII-only pattern, so a trailing newline, a non-ASCII digit or a huge string never passes and
no regular expression ever runs over more than a few hundred characters. Hex decoding is
exact: lowercase digits only, an even count, no whitespace.

The checks are pure and return a verdict; each caller raises its own package's error.
"""

from __future__ import annotations

import re

__all__ = [
    "MAX_NAME_LENGTH",
    "MAX_SALT_SIZE",
    "MAX_TIME",
    "MAX_VERSION_LENGTH",
    "MIN_SALT_SIZE",
    "is_name",
    "is_semver",
    "matches",
    "parse_hex",
    "parse_uint",
]

#: Longest name (compatible, slot class, architecture, artifact name, ELF machine).
MAX_NAME_LENGTH = 64
#: Longest version string; semantic versions in practice stay far below it.
MAX_VERSION_LENGTH = 128
#: dm-verity salt bytes: the kernel takes 0..256 bytes, but `BOOT_<slot>_VERITY` and the
#: boot chain need a non-empty one, so every layer requires 1..256.
MIN_SALT_SIZE = 1
MAX_SALT_SIZE = 256
#: Latest time (seconds since the epoch) a manifest may carry: 9999-12-31 23:59:59 UTC,
#: the last second a calendar date can name.
MAX_TIME = 253_402_300_799

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*", re.ASCII)
_IDENT = re.compile(r"[0-9A-Za-z-]+", re.ASCII)
_NUMBER = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_LOWER_HEX = re.compile(r"[0-9a-f]*", re.ASCII)
_UINT = re.compile(r"0[xX][0-9a-fA-F]{1,16}|0|[1-9][0-9]{0,19}", re.ASCII)


def matches(pattern: re.Pattern[str], text: str, max_length: int) -> bool:
    """Whether all of `text` (at most `max_length` characters) matches `pattern`."""
    return len(text) <= max_length and pattern.fullmatch(text) is not None


def is_name(text: str, max_length: int = MAX_NAME_LENGTH) -> bool:
    """A name: 1..`max_length` of `A-Za-z0-9._+-`, starting with a letter or digit."""
    return matches(_NAME, text, max_length)


def _is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text) is not None


def is_semver(text: str) -> bool:
    """Whether `text` is a semantic version 2.0 of at most `MAX_VERSION_LENGTH` characters.

    Linear in the length: the string is split at its separators and each part is checked
    on its own, so no pattern can backtrack over the whole string.
    """
    if len(text) > MAX_VERSION_LENGTH:
        return False
    rest, plus, build = text.partition("+")
    core, dash, pre = rest.partition("-")
    parts = core.split(".")
    if len(parts) != 3 or not all(_is_number(p) for p in parts):
        return False
    if dash:
        for ident in pre.split("."):
            if _IDENT.fullmatch(ident) is None:
                return False
            if ident.isdigit() and not _is_number(ident):
                return False  # numeric identifiers have no leading zero
    if plus:
        return all(_IDENT.fullmatch(ident) is not None for ident in build.split("."))
    return True


def parse_uint(text: str) -> int | None:
    """A non-negative number written as ASCII decimal (no leading zero) or `0x` hex; else None.

    Decimal with a leading zero is refused: C's `strtoul(..., 0)` reads it as octal.
    """
    return int(text, 0) if matches(_UINT, text, 20) else None


def parse_hex(text: str, min_bytes: int, max_bytes: int) -> bytes | None:
    """The bytes of `text` as lowercase hex of `min_bytes..max_bytes` bytes; None otherwise."""
    if not min_bytes * 2 <= len(text) <= max_bytes * 2 or len(text) % 2:
        return None
    if _LOWER_HEX.fullmatch(text) is None:
        return None
    return bytes.fromhex(text)
