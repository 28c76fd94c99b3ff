"""The one exception hierarchy of the `bootctl` package, split by who is at fault.

The CLI maps each class to a distinct exit code (see docs/abctl.md).
"""

from __future__ import annotations

__all__ = [
    "BootctlError",
    "ConfigError",
    "EnvCorruptError",
    "EnvError",
    "EnvOverflowError",
    "EnvSizeError",
    "SlotError",
    "StorageError",
]


class BootctlError(Exception):
    """Base class of every error raised by `bootctl`."""


class ConfigError(BootctlError):
    """A board config or `fw_env.config` is missing, malformed or inconsistent (user's fault)."""


class EnvError(BootctlError):
    """The boot environment cannot be decoded or encoded."""


class EnvCorruptError(EnvError):
    """No valid copy of the environment exists (bad CRC on every copy, or garbage)."""


class EnvSizeError(EnvError):
    """The environment's size on storage does not match the configured size."""


class EnvOverflowError(EnvError):
    """The variables do not fit into the environment's fixed size."""


class SlotError(BootctlError):
    """An unknown slot, or an operation refused for the slot's state (e.g. the booted slot)."""


class StorageError(BootctlError):
    """Reading, writing or flushing the environment's file or device failed."""
