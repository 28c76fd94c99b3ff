"""The device configuration: a strict TOML file (see docs/updater.md).

    board = "/usr/share/abupdate/board-configs/qemu-arm64-uboot.toml"
    keyring = "/etc/abupdate/keyring.pem"
    state_dir = "/var/lib/abupdate"
    threshold = 1                     # distinct trusted signing keys required
    cmdline = "/proc/cmdline"         # where the booted slot is read from
    boot_mount = "/boot"              # optional: where the boot partition is (board's boot.mount)
    find_moved_blocks = false         # downloads: look for moved blocks in the running slot

    [slots.A]                         # optional: override the board's slot devices
    device = "/dev/mmcblk0p2"

    [env]                             # optional: override the board's env location
    fw_env_config = ["/boot/uboot.env 0x0000 0x4000"]   # U-Boot
    # grubenv = "/boot/efi/EFI/BOOT/grubenv"            # GRUB

    [http]                            # optional
    ca_file = "/etc/abupdate/server-ca.pem"
    client_cert = "/etc/abupdate/device.pem"
    client_key = "/etc/abupdate/device.key"
    connect_timeout = 10
    read_timeout = 30
    deadline = 3600
    retries = 5

    [fleet]                           # optional: the DDI server (docs/fleet.md)
    server = "https://updates.example.com"
    target_token = "..."

Relative paths are taken relative to the config file's folder, so a test or a
QEMU image can keep a device's files together.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootctl import validators
from bootctl.board import BoardConfig, load_board
from bootctl.errors import BootctlError
from bootctl.handover import DEFAULT_DEVICE_CONFIG

from .errors import UsageError
from .fleet.settings import FleetSettings, parse_fleet
from .httpsettings import HttpSettings

DEFAULT_CONFIG = DEFAULT_DEVICE_CONFIG  # one definition: abctl mark-good looks there too
TOP_KEYS = {
    "board",
    "keyring",
    "state_dir",
    "threshold",
    "cmdline",
    "find_moved_blocks",
    "boot_mount",
    "slots",
    "env",
    "http",
    "fleet",
}
HTTP_KEYS = {f.name for f in dataclasses.fields(HttpSettings)}
#: Paths: printable characters only (no NUL, no newline), at most Linux's PATH_MAX.
_PATH_RE = re.compile(r"[^\x00-\x1f\x7f]+")
_MAX_PATH = 4096


@dataclass(frozen=True)
class DeviceConfig:
    """Everything the updater needs to know about the device it runs on."""

    board: BoardConfig
    keyring: Path
    state_dir: Path
    threshold: int = 1
    cmdline: Path = Path("/proc/cmdline")
    slot_devices: Mapping[str, str] = field(default_factory=dict)
    env_override: tuple[str, ...] | str | None = None
    http: HttpSettings = field(default_factory=HttpSettings)
    find_moved_blocks: bool = False
    boot_mount: Path | None = None
    fleet: FleetSettings | None = None

    def slot_device(self, name: str) -> str:
        """The device (or file) the updater writes for slot `name`."""
        return self.slot_devices.get(name) or self.board.slot(name).device

    def boot_dir(self, name: str) -> Path:
        """The folder holding slot `name`'s boot files (`boot_dir` on the boot partition)."""
        mount = self.boot_mount or Path(self.board.boot.mount)
        return mount / self.board.slot(name).boot_dir


def _refuse_unknown(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise UsageError(f"device config: unknown key '{unknown[0]}' in {where}")


def _path(base: Path, value: object, key: str) -> Path:
    if not isinstance(value, str) or not validators.matches(_PATH_RE, value, _MAX_PATH):
        raise UsageError(
            f"device config: '{key}' must be a path of 1-{_MAX_PATH} printable characters"
        )
    return base / value


def parse_config(data: Mapping[str, Any], base: Path) -> DeviceConfig:
    """Build a DeviceConfig from parsed TOML; relative paths are relative to `base`."""
    _refuse_unknown(data, TOP_KEYS, "the top level")
    for key in ("board", "keyring", "state_dir"):
        if key not in data:
            raise UsageError(f"device config: '{key}' is required")
    board_path = _path(base, data["board"], "board")
    try:
        board = load_board(board_path)
    except BootctlError as e:
        raise UsageError(f"device config: board {board_path}: {e}") from e
    threshold = data.get("threshold", 1)
    if type(threshold) is not int or threshold < 1:
        raise UsageError("device config: 'threshold' must be an integer of at least 1")
    find_moved = data.get("find_moved_blocks", False)
    if not isinstance(find_moved, bool):
        raise UsageError("device config: 'find_moved_blocks' must be true or false")

    slots: dict[str, str] = {}
    raw_slots = data.get("slots", {})
    if not isinstance(raw_slots, dict):
        raise UsageError("device config: [slots] must be a table")
    for name, table in raw_slots.items():
        if name not in board.slot_names:
            raise UsageError(f"device config: slot '{name}' is not a slot of board {board.name}")
        if not isinstance(table, dict):
            raise UsageError(f"device config: [slots.{name}] must be a table")
        _refuse_unknown(table, {"device"}, f"[slots.{name}]")
        slots[name] = str(_path(base, table.get("device"), f"slots.{name}.device"))

    env: tuple[str, ...] | str | None = None
    raw_env = data.get("env")
    if raw_env is not None:
        if not isinstance(raw_env, dict):
            raise UsageError("device config: [env] must be a table")
        _refuse_unknown(raw_env, {"fw_env_config", "grubenv"}, "[env]")
        if board.bootloader == "u-boot":
            lines = raw_env.get("fw_env_config")
            if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
                raise UsageError("device config: env.fw_env_config must be a list of lines")
            # The device field of each line is a path: make relative ones absolute.
            env = tuple(
                " ".join([str(base / line.split()[0]), *line.split()[1:]]) if line.split() else line
                for line in lines
            )
        else:
            env = str(_path(base, raw_env.get("grubenv"), "env.grubenv"))

    raw_http = data.get("http", {})
    if not isinstance(raw_http, dict):
        raise UsageError("device config: [http] must be a table")
    _refuse_unknown(raw_http, HTTP_KEYS, "[http]")
    http_values = dict(raw_http)
    for key in ("ca_file", "client_cert", "client_key"):
        if key in http_values:
            http_values[key] = str(_path(base, http_values[key], f"http.{key}"))
    try:
        http = HttpSettings(**http_values)
    except (TypeError, ValueError) as e:
        raise UsageError(f"device config: [http]: {e}") from e

    raw_fleet = data.get("fleet")
    if raw_fleet is not None and not isinstance(raw_fleet, dict):
        raise UsageError("device config: [fleet] must be a table")
    fleet = parse_fleet(raw_fleet) if raw_fleet is not None else None

    return DeviceConfig(
        board=board,
        keyring=_path(base, data["keyring"], "keyring"),
        state_dir=_path(base, data["state_dir"], "state_dir"),
        threshold=threshold,
        cmdline=_path(base, data.get("cmdline", "/proc/cmdline"), "cmdline"),
        slot_devices=slots,
        env_override=env,
        http=http,
        find_moved_blocks=find_moved,
        boot_mount=_path(base, data["boot_mount"], "boot_mount") if "boot_mount" in data else None,
        fleet=fleet,
    )


def load_config(path: str | Path) -> DeviceConfig:
    """Read and check a device config file (relative paths in it are relative to it)."""
    path = Path(path).absolute()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as e:
        raise UsageError(f"device config {path} does not exist") from e
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read device config {path}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"device config {path} is not valid TOML: {e}") from e
    return parse_config(data, path.parent)
