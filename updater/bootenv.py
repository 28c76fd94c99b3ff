"""The updater's one seam to `bootctl`: bootctl's errors become the updater's here, once.

A configuration fault (the board, the environment's location) is a usage error;
anything else bootctl raises (the environment cannot be read or written, the
booted slot cannot be told) is a device error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from bootctl.control import SlotControl
from bootctl.errors import BootctlError, ConfigError

from .config import DeviceConfig
from .errors import DeviceError, UsageError


@contextlib.contextmanager
def boot_errors() -> Iterator[None]:
    """Run a block that uses `bootctl`; its errors leave as `UsageError` or `DeviceError`."""
    try:
        yield
    except ConfigError as e:
        raise UsageError(f"device config: boot environment: {e}") from e
    except BootctlError as e:
        raise DeviceError(f"boot environment: {e}") from e


def open_control(config: DeviceConfig) -> SlotControl:
    """The boot environment and slot state of the configured device.

    Raises:
        UsageError: the configuration's environment location is malformed.
        DeviceError: the environment cannot be read.
    """
    with boot_errors():
        return SlotControl.open(
            config.board, env_override=config.env_override, cmdline_path=config.cmdline
        )
