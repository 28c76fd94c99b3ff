"""Where `abctl` meets the updater: the hand-over of mark-good, and the install lock.

The anti-rollback floor belongs to the updater: its state directory holds each
slot's record and the stored floor, and only `updater mark-good` raises the floor
the slot brings. bootctl sits below the updater and imports none of it, so on a
device that runs the updater (its device config exists and the `updater` command
is installed), `abctl mark-good` runs `updater mark-good --config FILE` instead of
marking the slot itself: one mark-good path, whichever command or unit a board uses.

On such a device, abctl's other verbs that change the environment hold the
updater's install lock for their one write (`install_lock`), so that none of them
lands in the middle of an install.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

from . import installlock, validators
from .errors import ConfigError

__all__ = ["DEFAULT_DEVICE_CONFIG", "UPDATER", "install_lock", "updater_mark_good"]

#: The updater's device config (`updater --config`'s default; `updater.config` uses it).
DEFAULT_DEVICE_CONFIG = "/etc/abupdate/device.toml"
#: The updater's command.
UPDATER = "updater"
#: A path in the device config, as the updater takes it: printable characters only (no
#: NUL, no newline), at most Linux's PATH_MAX.
_PATH = re.compile(r"[^\x00-\x1f\x7f]+")
_MAX_PATH = 4096


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


def state_dir(device_config: Path) -> Path | None:
    """The updater's state directory named by `device_config`; None without that file.

    Relative to the config file's directory, as the updater reads it.

    Raises:
        ConfigError: the file exists but is not a device config with a `state_dir`.
    """
    if not device_config.is_file():
        return None
    try:
        data = tomllib.loads(device_config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read the device config {device_config}: {e}") from e
    value = data.get("state_dir")
    if not isinstance(value, str) or not validators.matches(_PATH, value, _MAX_PATH):
        raise ConfigError(
            f"device config {device_config}: 'state_dir' must be a path"
            f" of 1-{_MAX_PATH} printable characters"
        )
    return device_config.absolute().parent / value


@contextlib.contextmanager
def install_lock(device_config: Path, what: str) -> Iterator[None]:
    """Hold the updater's install lock, where the device runs the updater, while the body runs.

    Raises:
        BusyError: an install or mark-good is running (nothing was done).
        ConfigError: the device config cannot be read.
        StorageError: the lock file cannot be created or locked.
    """
    where = state_dir(device_config)
    if where is None:
        yield  # no updater here: no install to keep out of
        return
    with installlock.held(where, what):
        yield
