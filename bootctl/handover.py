"""Where `abctl mark-good` hands over to the updater's mark-good.

The anti-rollback floor belongs to the updater: its state directory holds each
slot's record and the stored floor, and only `updater mark-good` raises the floor
the slot brings. bootctl sits below the updater and imports none of it, so on a
device that runs the updater (its device config exists and the `updater` command
is installed), `abctl mark-good` runs `updater mark-good --config FILE` instead of
marking the slot itself: one mark-good path, whichever command or unit a board uses.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

__all__ = ["DEFAULT_DEVICE_CONFIG", "UPDATER", "updater_mark_good"]

#: The updater's device config (`updater --config`'s default; `updater.config` uses it).
DEFAULT_DEVICE_CONFIG = "/etc/abupdate/device.toml"
#: The updater's command.
UPDATER = "updater"


def _updater() -> str | None:
    """The `updater` command: on PATH, else next to this interpreter (a venv's bin/)."""
    found = shutil.which(UPDATER)
    if found:
        return found
    beside = Path(sys.executable).parent / UPDATER
    return str(beside) if beside.is_file() and shutil.which(str(beside)) else None


def updater_mark_good(device_config: Path) -> list[str] | None:
    """The command line of the updater's mark-good for this device, or None.

    None where the updater does not run here: no device config at `device_config`,
    or no `updater` command.
    """
    if not device_config.is_file():
        return None
    updater = _updater()
    if updater is None:
        return None
    return [updater, "mark-good", "--config", str(device_config)]
