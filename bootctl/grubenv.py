"""GRUB environment block codec (what `grub-editenv` and GRUB's `load_env`/`save_env` use), pure.

Layout: exactly 1024 bytes; the line `# GRUB Environment Block`, then `name=value` lines
(backslash and newline inside a value are escaped with a backslash), then `#` fill. There is no
checksum. Parsing follows GRUB's `grub_envblk_iterate` (`grub-core/lib/envblk.c`).
"""

from __future__ import annotations

from collections.abc import Mapping

from bootctl.errors import EnvCorruptError, EnvError, EnvOverflowError, EnvSizeError

__all__ = ["BLOCK_SIZE", "SIGNATURE", "decode_grubenv", "encode_grubenv", "escape", "unescape"]

BLOCK_SIZE = 1024
SIGNATURE = b"# GRUB Environment Block\n"


def escape(value: bytes) -> bytes:
    """Escape a value as GRUB does: a backslash before every backslash and newline."""
    return value.replace(b"\\", b"\\\\").replace(b"\n", b"\\\n")


def unescape(value: bytes) -> bytes:
    """Undo `escape`: a backslash makes the next byte literal."""
    out = bytearray()
    i = 0
    while i < len(value):
        if value[i : i + 1] == b"\\" and i + 1 < len(value):
            i += 1
        out += value[i : i + 1]
        i += 1
    return bytes(out)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def encode_grubenv(env: Mapping[str, str]) -> bytes:
    """Build a 1024-byte GRUB environment block, variables in the mapping's order.

    Args:
        env: Variables.

    Returns:
        Exactly 1024 bytes.

    Raises:
        EnvError: A name is empty or contains `=`, a newline or a NUL byte, or starts with `#`.
        EnvOverflowError: The variables do not fit into 1024 bytes.
    """
    out = bytearray(SIGNATURE)
    for name, value in env.items():
        if not name or any(c in name for c in "=\n\0") or name.startswith("#"):
            raise EnvError(f"invalid GRUB environment variable name {name!r}")
        if "\0" in value:
            raise EnvError(f"value of {name} contains a NUL byte")
        out += _encode(name) + b"=" + escape(_encode(value)) + b"\n"
    if len(out) > BLOCK_SIZE:
        raise EnvOverflowError(
            f"GRUB environment needs {len(out)} bytes but the block holds {BLOCK_SIZE}"
        )
    return bytes(out) + b"#" * (BLOCK_SIZE - len(out))


def decode_grubenv(blob: bytes) -> dict[str, str]:
    """Decode a GRUB environment block.

    Args:
        blob: The file's contents.

    Returns:
        The variables (a later duplicate wins).

    Raises:
        EnvSizeError: The block is not 1024 bytes.
        EnvCorruptError: The signature line is missing.
    """
    if len(blob) != BLOCK_SIZE:
        raise EnvSizeError(f"GRUB environment block is {len(blob)} bytes, not {BLOCK_SIZE}")
    if not blob.startswith(SIGNATURE):
        raise EnvCorruptError("not a GRUB environment block (signature line missing)")
    env: dict[str, str] = {}
    p = len(SIGNATURE)
    end = len(blob)
    while p < end:
        if blob[p : p + 1] == b"#":
            nl = blob.find(b"\n", p)
            p = end if nl < 0 else nl + 1
            continue
        eq = blob.find(b"=", p)
        if eq < 0:
            break
        name = blob[p:eq]
        q = eq + 1
        while q < end and blob[q : q + 1] != b"\n":
            q += 2 if blob[q : q + 1] == b"\\" else 1
        q = min(q, end)
        value = unescape(blob[eq + 1 : q])
        env[name.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        p = q + 1
    return env
