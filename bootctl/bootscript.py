"""Boot scripts generated from a board config: U-Boot `boot.cmd` and GRUB `grub.cfg`.

Both implement the selection of docs/boot-protocol.md (and `bootctl.state.select_boot`): walk
`BOOT_ORDER`, take the first slot with tries left and a non-empty `BOOT_<slot>_VERITY`,
decrement its counter, save the environment, boot it; if none qualifies, reset every counter
to the board's `tries`, save, and reset the board.

The template text lives in `bootctl/templates/`; placeholders are `@name` / `@{name}`
(`$` belongs to U-Boot and GRUB).
"""

from __future__ import annotations

import shutil
import string
import subprocess
from importlib import resources
from pathlib import Path

from bootctl.board import MAX_TRIES, BoardConfig
from bootctl.errors import ConfigError, StorageError
from bootctl.state import ORDER_VAR, left_var, verity_var

__all__ = [
    "FIT_CONFIG",
    "MKIMAGE_ARCH",
    "compile_uboot_script",
    "mkimage_arch",
    "render_boot_script",
    "render_grub_cfg",
    "render_uboot_script",
    "slot_vars",
    "uboot_bootcmd",
    "write_control_dtb",
]


#: `mkimage -A` name of each architecture in `bootctl.board.ARCHITECTURES` (`mkimage -A list`).
MKIMAGE_ARCH: dict[str, str] = {
    "arm64": "arm64",
    "amd64": "x86_64",
    "armhf": "arm",
    "riscv64": "riscv",
}


#: The one configuration of a slot's FIT (`bundle_tool.bootimage` builds it).
FIT_CONFIG = "conf-1"


class _Template(string.Template):
    delimiter = "@"


def _template(name: str) -> _Template:
    text = resources.files("bootctl").joinpath("templates", name).read_text(encoding="utf-8")
    return _Template(text)


def slot_vars(board: BoardConfig) -> list[str]:
    """The environment variables the boot scripts load and save, in a fixed order."""
    names = [ORDER_VAR]
    names += [left_var(s) for s in board.slot_names]
    names += [verity_var(s) for s in board.slot_names]
    return names


def _slot_fields(slot: str) -> dict[str, str]:
    """A slot template's names: the slot and its variables (`bootctl.state` spells them)."""
    return {"slot": slot, "left_var": left_var(slot), "verity_var": verity_var(slot)}


def _indent(lines: list[str], depth: int) -> str:
    return "\n".join("  " * depth + line for line in lines)


def _check_uboot(board: BoardConfig) -> None:
    if board.bootloader != "u-boot":
        raise ConfigError(f"board {board.name} uses {board.bootloader}, not U-Boot")
    if len(board.env.fw_env_config) != 1:
        raise ConfigError(
            f"board {board.name}: the generated boot script keeps the slot state in a "
            "single-copy env file (env import -c/env export -c); env.fw_env_config must "
            "have one line"
        )


def render_uboot_script(board: BoardConfig) -> str:
    """Render the U-Boot `boot.cmd` source for a board.

    Args:
        board: A board config with `bootloader = "u-boot"`.

    Returns:
        The script text (compile it with `compile_uboot_script` or `mkimage -T script`).

    Raises:
        ConfigError: The board does not use U-Boot, or its env is redundant.
    """
    _check_uboot(board)
    needs_verity = board.boot.env_verity_boots
    slot_tpl = _template("boot.cmd.slot.in")
    blocks = [
        slot_tpl.substitute(
            _slot_fields(s.name),
            root=s.root,
            dir=s.boot_dir,
            # The script chain boots the env's root hash: a slot without one is being written.
            verity_test=f'test -n "${{{verity_var(s.name)}}}" && ' if needs_verity else "",
        ).rstrip("\n")
        for s in board.slots
    ]
    variables = slot_vars(board)
    order = " ".join(board.slot_names)
    defaults = [f'setenv {ORDER_VAR} "{order}"']
    defaults += [f"setenv {left_var(s)} {board.tries}" for s in board.slot_names]
    chain = board.boot.chain
    fields = dict(
        board=board.name,
        order_var=ORDER_VAR,
        mkimage_arch=mkimage_arch(board.architecture),
        uboot_device=board.boot.uboot_device,
        env_addr=board.boot.uboot_env_addr,
        env_file=board.env.uboot_file,
        env_size=f"{board.env.uboot_size:#x}",
        vars=" ".join(variables),
        clear_vars="\n".join(f"setenv {v}" for v in variables),
        default_vars=_indent(defaults, 1),
        default_order=order,
        slot_blocks="\n".join(blocks),
        tries=board.tries,
        reset_vars=_indent([f"setenv {left_var(s)} {board.tries}" for s in board.slot_names], 1),
        kernel_args=board.kernel_args,
        kernel=board.boot.kernel,
        initrd=board.boot.initrd,
        fdt=board.boot.uboot_fdt,
        fit_addr=board.boot.uboot_fit_addr,
        image=board.boot.image,
        config=FIT_CONFIG,
    )
    return _template("boot.cmd.in").substitute(
        fields,
        header=_template(f"boot.cmd.head-{chain}.in").substitute(fields),
        boot=_template(f"boot.cmd.boot-{chain}.in").substitute(fields),
    )


def uboot_bootcmd(board: BoardConfig) -> str:
    """The boot command of a `fit` board for its control DTB: the script without comments.

    Raises:
        ConfigError: The board does not boot signed FITs with U-Boot.
    """
    if board.boot.chain != "fit":
        raise ConfigError(f"board {board.name} has boot.chain {board.boot.chain!r}, not 'fit'")
    lines = render_uboot_script(board).splitlines()
    return "\n".join(line for line in lines if line.strip() and not line.lstrip().startswith("#"))


def write_control_dtb(board: BoardConfig, source: Path, output: Path) -> None:
    """Copy U-Boot's control DTB `source` to `output` with the board's fixed boot command.

    Sets `/config/bootcmd` to `uboot_bootcmd(board)`, `/config/bootdelay` to -2 (boot at
    once, no key stops it) and `/config/load-environment` to 0 (U-Boot's built-in
    environment only), then pads the blob so that U-Boot can add to it at run time. The
    FIT key goes in with `bundle-tool bootloader --dtb`.

    Raises:
        ConfigError: The board does not boot signed FITs with U-Boot.
        StorageError: fdtput or dtc is missing or fails.
    """
    command = uboot_bootcmd(board)
    unpadded = output.with_name(output.name + ".tmp")
    try:
        shutil.copyfile(source, unpadded)
    except OSError as e:
        raise StorageError(f"cannot copy {source} to {unpadded}: {e.strerror}") from e
    _dtc_tool("fdtput", "-p", "-t", "s", unpadded, "/config", "bootcmd", command)
    _dtc_tool("fdtput", "-t", "i", unpadded, "/config", "bootdelay", "--", "-2")
    _dtc_tool("fdtput", "-t", "i", unpadded, "/config", "load-environment", "0")
    _dtc_tool("dtc", "-q", "-I", "dtb", "-O", "dtb", "-p", "4096", "-o", output, unpadded)
    unpadded.unlink()


def _dtc_tool(*cmd: str | Path) -> None:
    tool = shutil.which(str(cmd[0]))
    if tool is None:
        raise StorageError(f"{cmd[0]} not found; install device-tree-compiler")
    done = subprocess.run([tool, *map(str, cmd[1:])], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise StorageError(f"{cmd[0]} failed: {lines[-1] if lines else done.returncode}")


def _grub_decrement(slot: str, tries_max: int, depth: int) -> str:
    lines: list[str] = []
    for n in range(tries_max, 0, -1):
        keyword = "if" if n == tries_max else "elif"
        lines += [
            f'{keyword} [ "${{{left_var(slot)}}}" = "{n}" ]; then',
            f"  set {left_var(slot)}={n - 1}",
            f"  set ab_slot={slot}",
        ]
    lines.append("fi")
    return _indent(lines, depth)


def _grub_selection(slot: str, needs_verity: bool) -> str:
    """Take `slot` if it has tries left (and, where `needs_verity`, a verity value)."""
    if not needs_verity:
        return _grub_decrement(slot, MAX_TRIES, 3)
    decrement = _grub_decrement(slot, MAX_TRIES, 4)
    return "\n".join([f'      if [ -n "${{{verity_var(slot)}}}" ]; then', decrement, "      fi"])


def render_grub_cfg(board: BoardConfig) -> str:
    """Render the GRUB `grub.cfg` for a board.

    Counters are matched as the decimal strings "1".."9" (GRUB has no arithmetic).

    Args:
        board: A board config with `bootloader = "grub"`.

    Returns:
        The configuration text.

    Raises:
        ConfigError: The board does not use GRUB.
    """
    if board.bootloader != "grub":
        raise ConfigError(f"board {board.name} uses {board.bootloader}, not GRUB")
    slot_tpl = _template("grub.cfg.slot.in")
    blocks = [
        slot_tpl.substitute(
            _slot_fields(s.name),
            root=s.root,
            dir=s.boot_dir,
            selection=_grub_selection(s.name, board.boot.env_verity_boots),
        ).rstrip("\n")
        for s in board.slots
    ]
    variables = slot_vars(board)
    chain = board.boot.chain
    fields = dict(
        board=board.name,
        order_var=ORDER_VAR,
        env_file="/" + board.env.grub_file,
        vars=" ".join(variables),
        save_vars=" ".join([ORDER_VAR] + [left_var(s) for s in board.slot_names]),
        clear_vars="\n".join(f"unset {v}" for v in variables),
        default_order=" ".join(board.slot_names),
        slot_blocks="\n".join(blocks),
        tries=board.tries,
        reset_vars=_indent([f"set {left_var(s)}={board.tries}" for s in board.slot_names], 1),
        default_vars=_indent(
            [f'set {ORDER_VAR}="{" ".join(board.slot_names)}"']
            + [f"set {left_var(s)}={board.tries}" for s in board.slot_names],
            1,
        ),
        kernel_args=board.kernel_args,
        kernel=board.boot.kernel,
        initrd=board.boot.initrd,
        image=board.boot.image,
        # A verifying GRUB would want a signature of the unauthenticated block itself.
        load_env_opts="--skip-sig " if chain == "uki" else "",
    )
    return _template("grub.cfg.in").substitute(
        fields,
        header=_template(f"grub.cfg.head-{chain}.in").substitute(fields),
        boot=_template(f"grub.cfg.boot-{chain}.in").substitute(fields),
    )


def render_boot_script(board: BoardConfig) -> str:
    """Render the boot script of the board's bootloader (`boot.cmd` or `grub.cfg`)."""
    if board.bootloader == "u-boot":
        return render_uboot_script(board)
    return render_grub_cfg(board)


def mkimage_arch(architecture: str) -> str:
    """The `mkimage -A` name of a board's Debian architecture (`armhf` is `arm`, ...).

    Raises:
        ConfigError: The architecture is not one of `bootctl.board.ARCHITECTURES`.
    """
    try:
        return MKIMAGE_ARCH[architecture]
    except KeyError:
        raise ConfigError(f"mkimage has no name for architecture {architecture!r}") from None


def _mkimage_error(output: str, program: str) -> str:
    """The line of mkimage's output that says what went wrong.

    mkimage names the problem on a line of its own ("Error: Invalid architecture",
    "/usr/bin/mkimage: Can't open ...") and may follow it with its whole usage text.
    """
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        for prefix in ("Error:", f"{program}:"):
            if line.startswith(prefix):
                return line.removeprefix(prefix).strip()
    return lines[0] if lines else "no message"


def compile_uboot_script(source: Path, output: Path, architecture: str = "arm64") -> None:
    """Compile a `boot.cmd` into a `boot.scr` legacy image with `mkimage`.

    Args:
        source: The script source.
        output: The image to write.
        architecture: Debian architecture of the board (see `mkimage_arch`).

    Raises:
        ConfigError: The architecture has no mkimage name.
        StorageError: `mkimage` is missing or fails.
    """
    arch = mkimage_arch(architecture)
    mkimage = shutil.which("mkimage")
    if mkimage is None:
        raise StorageError("mkimage not found; install u-boot-tools")
    cmd = [mkimage, "-A", arch, "-O", "linux", "-T", "script", "-C", "none"]
    cmd += ["-n", "abupdate boot script", "-d", str(source), str(output)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = _mkimage_error(result.stderr + result.stdout, mkimage)
        raise StorageError(f"mkimage failed: {detail}")
