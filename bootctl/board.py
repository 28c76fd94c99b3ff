"""Board configuration: one strict TOML file per board (`board-configs/<name>.toml`).

Every table accepts a fixed set of keys; any other key is refused with its name, so a typo
never silently falls back to a default. See docs/board-configs.md for the reference.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bootctl import validators
from bootctl.errors import ConfigError
from bootctl.ubootenv import parse_fw_env_config

__all__ = [
    "ARCHITECTURES",
    "MAX_TRIES",
    "BoardConfig",
    "BootConfig",
    "EnvConfig",
    "SlotConfig",
    "load_board",
    "parse_board",
]

Bootloader = Literal["u-boot", "grub"]
#: How a slot is booted: `script` (kernel and initrd shared by the slots, root hash from the
#: environment: not verified), `fit` (U-Boot checks the slot's signed FIT), `uki` (UEFI
#: Secure Boot and GRUB check the slot's signed unified kernel image).
Chain = Literal["script", "fit", "uki"]
CHAINS: dict[str, Bootloader] = {"fit": "u-boot", "uki": "grub"}
#: The signed boot image's file name in a slot's boot folder, by chain.
BOOT_IMAGE = {"fit": "boot.itb", "uki": "boot.efi"}
#: The slot class of a bundle's boot image (installed as the file `BOOT_IMAGE`).
BOOT_CLASS = "boot"
#: The slot class of the detached signature GRUB checks beside a UKI (`boot.efi.sig`).
BOOT_SIG_CLASS = "boot-sig"

ARCHITECTURES = ("arm64", "amd64", "armhf", "riscv64")
#: The U-Boot script's `setexpr` computes in hex, so counters stay single decimal digits.
MAX_TRIES = 9

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*", re.ASCII)
_SLOT_NAME_RE = re.compile(r"[A-Za-z0-9]+", re.ASCII)
_REL_PATH_RE = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*", re.ASCII)
# Values that are copied into boot scripts: no quotes, semicolons, newlines or `$(`.
_SCRIPT_SAFE_RE = re.compile(r"[A-Za-z0-9 ,.:=/_+@%{}$-]*", re.ASCII)
#: Longest path or boot-script value (Linux's PATH_MAX; above any kernel command line).
_MAX_TEXT = 4096


@dataclass(frozen=True)
class SlotConfig:
    """One A/B slot.

    Attributes:
        name: Slot name used in `BOOT_ORDER` and `BOOT_<name>_LEFT` (letters and digits).
        device: Block device (or file) Linux writes the slot image to.
        root: Device the kernel is told on its command line (`abupdate.root=`).
        slot_class: Slot class, `rootfs` for root filesystem slots.
        boot_dir: The folder on the boot partition holding this slot's signed boot
            image (chains `fit` and `uki`).
    """

    name: str
    device: str
    root: str
    slot_class: str
    boot_dir: str = ""


@dataclass(frozen=True)
class BootConfig:
    """The boot partition holding kernel, initrd, boot script and (U-Boot) environment.

    Attributes:
        device: Linux block device of the boot partition.
        mount: Where Linux mounts it.
        kernel: Kernel file name, relative to the boot partition's root.
        initrd: Initrd file name, relative to the boot partition's root.
        uboot_device: U-Boot `interface dev:part` of the boot partition (e.g. `virtio 0:1`).
        uboot_fdt: Device tree address passed to `booti` (e.g. `${fdtcontroladdr}`).
        uboot_env_addr: Scratch RAM address for loading and exporting the environment.
        script: Compiled boot script file name (U-Boot) or GRUB config path on the partition.
        chain: How slots are booted and checked (see `Chain`).
        uboot_fit_addr: RAM address the U-Boot boot command loads a slot's FIT to.
        fit_kernel_load: Where U-Boot copies the FIT's kernel before starting it (the
            FIT's `load` and `entry`; required for `chain = "fit"`).
        files: (slot class, file name) pairs: a bundle image of that class is installed
            as that file in the target slot's boot folder (`boot.files`; by default the
            boot image `boot` as `image`, and for `uki` its signature `boot-sig`).
        artifacts: (artifact name, path) pairs: a bundle artifact of that name is
            installed at that path inside the target slot's boot folder
            (`boot.artifacts`); a bundle with any other artifact is refused.
    """

    device: str
    mount: str
    kernel: str
    initrd: str
    uboot_device: str
    uboot_fdt: str
    uboot_env_addr: str
    script: str
    chain: Chain = "script"
    uboot_fit_addr: str = "${ramdisk_addr_r}"
    fit_kernel_load: int = 0
    files: tuple[tuple[str, str], ...] = ()
    artifacts: tuple[tuple[str, str], ...] = ()

    @property
    def image(self) -> str:
        """The signed boot image's file name in each slot's boot folder ("" for `script`)."""
        return BOOT_IMAGE.get(self.chain, "")

    @property
    def env_verity_boots(self) -> bool:
        """Whether the boot script passes the environment's root hash to the kernel.

        Only the `script` chain does; there an empty `BOOT_x_VERITY` is what keeps a slot
        being written from booting. On `fit` and `uki` the root hash is inside the signed
        boot image: a slot boots on its tries alone, so an environment lost or torn (back
        to the defaults, with no verity values) still boots a slot, checked by the chain.
        """
        return self.chain == "script"

    def file_of(self, slot_class: str) -> str | None:
        """The file name in a slot's boot folder that images of `slot_class` install as."""
        return dict(self.files).get(slot_class)

    def artifact_path(self, name: str) -> str | None:
        """Where artifact `name` goes, relative to a slot's boot folder (None: nowhere)."""
        return dict(self.artifacts).get(name)


@dataclass(frozen=True)
class EnvConfig:
    """Where the slot state lives, seen from Linux and from the bootloader.

    Attributes:
        fw_env_config: `fw_env.config` lines (U-Boot); two lines make the env redundant.
        uboot_file: Environment file name on the boot partition, as the boot script loads it.
        uboot_size: Environment size in bytes (must equal the size in `fw_env_config`).
        grubenv: Path of the GRUB environment block as Linux sees it (GRUB).
        grub_file: Path of the GRUB environment block on the ESP, as GRUB loads it.
    """

    fw_env_config: tuple[str, ...] = ()
    uboot_file: str = "uboot.env"
    uboot_size: int = 0x4000
    grubenv: str = ""
    grub_file: str = "EFI/BOOT/grubenv"


@dataclass(frozen=True)
class BoardConfig:
    """A parsed, validated board config.

    Attributes:
        name: Board config name.
        compatible: String a bundle must carry to be installable on this board.
        architecture: Debian architecture name.
        bootloader: `u-boot` or `grub`.
        tries: Boot attempts a slot gets after install or mark-good (1..9).
        kernel_args: Extra kernel command line arguments (console etc.).
        env: Environment location.
        slots: The slots, in default boot order.
        boot: Boot partition and file names.
    """

    name: str
    compatible: str
    architecture: str
    bootloader: Bootloader
    tries: int
    kernel_args: str
    env: EnvConfig
    slots: tuple[SlotConfig, ...]
    boot: BootConfig

    @property
    def slot_names(self) -> tuple[str, ...]:
        """The slot names in default boot order."""
        return tuple(s.name for s in self.slots)

    def group_problem(self, classes: Sequence[str], artifacts: Sequence[str]) -> str | None:
        """Why a bundle of images of `classes` and of `artifacts` has no place here, or None.

        A bundle installs into one slot group (see docs/board-configs.md): exactly one
        image for a slot device, every other image a file of `boot.files`, every
        artifact a place in `boot.artifacts`, and every file of `boot.files` an image
        (a group is installed whole: a slot of a `fit` board boots only its FIT).
        """
        blocks = {s.slot_class for s in self.slots}
        for slot_class in classes:
            if slot_class not in blocks and self.boot.file_of(slot_class) is None:
                return f"board {self.name} has no slot or boot file of class {slot_class}"
        for name in artifacts:
            if self.boot.artifact_path(name) is None:
                return f"artifact {name}: board {self.name} names no place for it (boot.artifacts)"
        found = [c for c in classes if c in blocks]
        if len(found) != 1:
            return (
                f"the bundle holds {len(found)} images for a slot device "
                f"({', '.join(sorted(blocks))}); one is needed"
            )
        for slot_class, name in self.boot.files:
            if slot_class not in classes:
                return (
                    f"the bundle has no image of class {slot_class}: board {self.name} boots "
                    f"each slot from its {name}, which must be installed with the rootfs "
                    f"(bundle-tool create --image {slot_class}=FILE)"
                )
        return None

    def slot(self, name: str) -> SlotConfig:
        """Return the slot called `name`.

        Raises:
            KeyError: No such slot.
        """
        for s in self.slots:
            if s.name == name:
                return s
        raise KeyError(name)


_TOP_KEYS = {
    "name",
    "compatible",
    "architecture",
    "bootloader",
    "tries",
    "kernel_args",
    "env",
    "slots",
    "boot",
}
_ENV_KEYS = {"fw_env_config", "uboot_file", "uboot_size", "grubenv", "grub_file"}
_SLOT_KEYS = {"device", "root", "class", "boot_dir"}
_BOOT_KEYS = {
    "device",
    "mount",
    "kernel",
    "initrd",
    "uboot_device",
    "uboot_fdt",
    "uboot_env_addr",
    "script",
    "chain",
    "uboot_fit_addr",
    "fit_kernel_load",
    "files",
    "artifacts",
}


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown key {where}{unknown[0]!s} (allowed: {', '.join(sorted(allowed))})"
        )


def _str(table: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    if key not in table:
        if default is None:
            raise ConfigError(f"missing key {where}{key}")
        return default
    value = table[key]
    if not isinstance(value, str):
        raise ConfigError(f"{where}{key} must be a string, not {type(value).__name__}")
    return value


def _int(table: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    if key not in table:
        if default is None:
            raise ConfigError(f"missing key {where}{key}")
        return default
    value = table[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{where}{key} must be an integer, not {type(value).__name__}")
    return value


def _table(table: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}{key} must be a table")
    return value


def _name(value: str, what: str) -> str:
    """A value a bundle's manifest must match: the manifest's own name rule."""
    if not validators.is_name(value):
        raise ConfigError(
            f"{what} {value!r} must be what a bundle can carry: 1-{validators.MAX_NAME_LENGTH} "
            "of A-Za-z0-9._+-, starting with a letter or digit"
        )
    return value


def _script_safe(value: str, what: str) -> str:
    if not validators.matches(_SCRIPT_SAFE_RE, value, _MAX_TEXT):
        raise ConfigError(f"{what} contains characters not allowed in a boot script: {value!r}")
    return value


def _rel_path(value: str, what: str) -> str:
    parts = value.split("/")
    if not validators.matches(_REL_PATH_RE, value, _MAX_TEXT) or {".", ".."} & set(parts):
        raise ConfigError(f"{what} must be a relative path of [A-Za-z0-9._-] parts: {value!r}")
    return value


def _parse_env(raw: Mapping[str, Any], bootloader: Bootloader) -> EnvConfig:
    _check_keys(raw, _ENV_KEYS, "env.")
    lines_raw = raw.get("fw_env_config", [])
    if not isinstance(lines_raw, list) or not all(isinstance(x, str) for x in lines_raw):
        raise ConfigError("env.fw_env_config must be a list of strings")
    env = EnvConfig(
        fw_env_config=tuple(lines_raw),
        uboot_file=_rel_path(_str(raw, "uboot_file", "env.", "uboot.env"), "env.uboot_file"),
        uboot_size=_int(raw, "uboot_size", "env.", 0x4000),
        grubenv=_str(raw, "grubenv", "env.", ""),
        grub_file=_rel_path(_str(raw, "grub_file", "env.", "EFI/BOOT/grubenv"), "env.grub_file"),
    )
    if bootloader == "u-boot":
        if not 1 <= len(env.fw_env_config) <= 2:
            raise ConfigError("env.fw_env_config needs one line (single env) or two (redundant)")
        locations = parse_fw_env_config(env.fw_env_config)
        for loc in locations:
            if loc.size != env.uboot_size:
                raise ConfigError(
                    f"env.fw_env_config size {loc.size:#x} differs from env.uboot_size "
                    f"{env.uboot_size:#x}"
                )
    elif not env.grubenv:
        raise ConfigError("missing key env.grubenv (path of the GRUB environment block)")
    return env


def _parse_slots(raw: Mapping[str, Any]) -> tuple[SlotConfig, ...]:
    if len(raw) < 2:
        raise ConfigError("slots needs at least two tables, e.g. [slots.A] and [slots.B]")
    slots = []
    for name, table in raw.items():
        where = f"slots.{name}."
        if not validators.matches(_SLOT_NAME_RE, name, validators.MAX_NAME_LENGTH):
            raise ConfigError(
                f"slot name {name!r} must be 1-{validators.MAX_NAME_LENGTH} letters and digits"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"slots.{name} must be a table")
        _check_keys(table, _SLOT_KEYS, where)
        device = _str(table, "device", where)
        slots.append(
            SlotConfig(
                name=name,
                device=device,
                root=_script_safe(_str(table, "root", where, device), f"{where}root"),
                slot_class=_name(_str(table, "class", where, "rootfs"), f"{where}class"),
                boot_dir=_rel_path(
                    _str(table, "boot_dir", where, f"slot-{name}"), f"{where}boot_dir"
                ),
            )
        )
    return tuple(slots)


def _parse_boot(raw: Mapping[str, Any], bootloader: Bootloader) -> BootConfig:
    _check_keys(raw, _BOOT_KEYS, "boot.")
    default_script = "boot.scr" if bootloader == "u-boot" else "EFI/BOOT/grub.cfg"
    chain = _str(raw, "chain", "boot.", "script")
    if chain == "script":
        chain_value: Chain = "script"
    elif chain in CHAINS and CHAINS[chain] == bootloader:
        chain_value = "fit" if chain == "fit" else "uki"
    else:
        choices = ["script", *(c for c, b in CHAINS.items() if b == bootloader)]
        raise ConfigError(
            f"boot.chain {chain!r} is not one for {bootloader}; choose {' or '.join(choices)}"
        )
    fit_kernel_load = _int(raw, "fit_kernel_load", "boot.", 0)
    if chain_value == "fit" and "fit_kernel_load" not in raw:
        raise ConfigError("boot.chain 'fit' needs boot.fit_kernel_load (the kernel's load address)")
    if not 0 <= fit_kernel_load < 1 << 64:
        raise ConfigError(f"boot.fit_kernel_load {fit_kernel_load:#x} is not a 64-bit address")
    return BootConfig(
        files=_files(raw, chain_value),
        artifacts=_artifacts(raw),
        device=_str(raw, "device", "boot."),
        mount=_str(raw, "mount", "boot.", "/boot"),
        kernel=_rel_path(_str(raw, "kernel", "boot.", "vmlinuz"), "boot.kernel"),
        initrd=_rel_path(_str(raw, "initrd", "boot.", "initrd.img"), "boot.initrd"),
        uboot_device=_script_safe(
            _str(raw, "uboot_device", "boot.", "virtio 0:1"), "boot.uboot_device"
        ),
        uboot_fdt=_script_safe(
            _str(raw, "uboot_fdt", "boot.", "${fdtcontroladdr}"), "boot.uboot_fdt"
        ),
        uboot_env_addr=_script_safe(
            _str(raw, "uboot_env_addr", "boot.", "${kernel_addr_r}"), "boot.uboot_env_addr"
        ),
        script=_rel_path(_str(raw, "script", "boot.", default_script), "boot.script"),
        chain=chain_value,
        fit_kernel_load=fit_kernel_load,
        uboot_fit_addr=_script_safe(
            _str(raw, "uboot_fit_addr", "boot.", "${ramdisk_addr_r}"), "boot.uboot_fit_addr"
        ),
    )


def _names(raw: Mapping[str, Any], key: str) -> dict[str, str]:
    """A table keyed by names a bundle carries (slot classes, artifact names) of strings."""
    table = _table(raw, key, "boot.")
    for name, value in table.items():
        _name(name, f"boot.{key} key")
        if not isinstance(value, str):
            raise ConfigError(f"boot.{key}.{name} must be a string, not {type(value).__name__}")
    return dict(table)


def _files(raw: Mapping[str, Any], chain: Chain) -> tuple[tuple[str, str], ...]:
    """`boot.files`, by default the chain's boot image (and a UKI's signature)."""
    if "files" not in raw:
        if chain == "script":
            return ()
        default = {BOOT_CLASS: BOOT_IMAGE[chain]}
        if chain == "uki":
            default[BOOT_SIG_CLASS] = BOOT_IMAGE[chain] + ".sig"
        return tuple(default.items())
    files = _names(raw, "files")
    for slot_class, name in files.items():
        _name(name, f"boot.files.{slot_class} (a file name)")
    if len(set(files.values())) != len(files):
        raise ConfigError("boot.files names one file for two slot classes")
    return tuple(files.items())


def _artifacts(raw: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (name, _rel_path(path, f"boot.artifacts.{name}"))
        for name, path in _names(raw, "artifacts").items()
    )


def parse_board(data: Mapping[str, Any]) -> BoardConfig:
    """Validate a decoded board config table.

    Args:
        data: The TOML document as a dict.

    Returns:
        The board config.

    Raises:
        ConfigError: A key is unknown, missing, of the wrong type or out of range.
    """
    _check_keys(data, _TOP_KEYS, "")
    name = _str(data, "name", "")
    if not validators.matches(_NAME_RE, name, validators.MAX_NAME_LENGTH):
        raise ConfigError(
            f"name {name!r} must be 1-{validators.MAX_NAME_LENGTH} letters, digits, '-' and '_'"
        )
    architecture = _str(data, "architecture", "")
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"architecture {architecture!r} is not one of {', '.join(ARCHITECTURES)}")
    bootloader_raw = _str(data, "bootloader", "")
    if bootloader_raw == "u-boot":
        bootloader: Bootloader = "u-boot"
    elif bootloader_raw == "grub":
        bootloader = "grub"
    else:
        raise ConfigError(f"bootloader {bootloader_raw!r} must be 'u-boot' or 'grub'")
    tries = _int(data, "tries", "", 3)
    if not 1 <= tries <= MAX_TRIES:
        raise ConfigError(f"tries {tries} must be between 1 and {MAX_TRIES}")
    compatible = _name(_str(data, "compatible", "", name), "compatible")
    board = BoardConfig(
        name=name,
        compatible=compatible,
        architecture=architecture,
        bootloader=bootloader,
        tries=tries,
        kernel_args=_script_safe(_str(data, "kernel_args", "", ""), "kernel_args"),
        env=_parse_env(_table(data, "env", ""), bootloader),
        slots=_parse_slots(_table(data, "slots", "")),
        boot=_parse_boot(_table(data, "boot", ""), bootloader),
    )
    _check_env_paths(board)
    _check_groups(board)
    return board


def _check_groups(board: BoardConfig) -> None:
    """A slot group: one slot's device plus the files of its boot folder, none named twice."""
    blocks = {s.slot_class for s in board.slots}
    for slot_class, _ in board.boot.files:
        if slot_class in blocks:
            raise ConfigError(f"boot.files.{slot_class}: {slot_class} is the class of a slot")
    names = [name for _, name in board.boot.files] + [p for _, p in board.boot.artifacts]
    if len(set(names)) != len(names):
        raise ConfigError("boot.files and boot.artifacts name the same file twice")


def _check_env_paths(board: BoardConfig) -> None:
    """Linux's path and the bootloader's path of the environment must name the same file."""
    mount = board.boot.mount.rstrip("/") + "/"
    if board.bootloader == "u-boot":
        linux_paths = [line.split()[0] for line in board.env.fw_env_config if line.split()]
        seen_by_bootloader = mount + board.env.uboot_file
        where = "env.uboot_file"
    else:
        linux_paths = [board.env.grubenv]
        seen_by_bootloader = mount + board.env.grub_file
        where = "env.grub_file"
    for path in linux_paths:
        if path.startswith(mount) and path != seen_by_bootloader:
            raise ConfigError(
                f"{path} is on the boot partition ({board.boot.mount}) but {where} "
                f"names {seen_by_bootloader}"
            )


def load_board(path: str | Path) -> BoardConfig:
    """Read and validate a board config file.

    Args:
        path: Path of the TOML file.

    Returns:
        The board config.

    Raises:
        ConfigError: The file cannot be read, is not TOML, or is not a valid board config.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read board config {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"board config {path} is not valid TOML: {e}") from e
    try:
        return parse_board(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
