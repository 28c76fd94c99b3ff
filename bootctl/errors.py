"""The one exception hierarchy of the `bootctl` package, split by who is at fault.

The CLI maps each class to an exit status of the rule the three tools share
(`bootctl.exitstatus`, docs/exit-status.md).
"""

from __future__ import annotations

__all__ = [
    "BootctlError",
    "BootedSlotError",
    "BusyError",
    "ConfigError",
    "EnvCorruptError",
    "EnvError",
    "EnvNotFlushedError",
    "EnvOverflowError",
    "EnvSizeError",
    "OutputError",
    "SlotError",
    "SlotRefusedError",
    "StorageError",
    "UnsetVariableError",
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


class UnsetVariableError(EnvError):
    """A variable asked for by name is not set."""


class SlotError(BootctlError):
    """An unknown slot or a malformed verity value (see the subclasses for the rest)."""


class SlotRefusedError(SlotError):
    """An operation refused for the slot's state: the booted slot without `force`."""


class BootedSlotError(SlotError):
    """The booted slot cannot be told: the kernel command line names none, or a foreign one."""


class OutputError(BootctlError):
    """A file made on the host (a boot script) cannot be compiled or written."""


class StorageError(BootctlError):
    """Reading, writing or flushing the environment's file or device failed."""


class EnvNotFlushedError(StorageError):
    """The new environment is in place, but could not be flushed to the medium.

    The change is seen at once (the bootloader reads it at the next boot) unless a
    power cut comes before the medium is synced; then the old one is back.
    """


class BusyError(BootctlError):
    """Another install or mark-good holds the device's install lock: nothing was done."""
