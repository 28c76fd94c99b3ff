"""Boot scripts and initial boot environments for the QEMU images.

The boot scripts are the ones bootctl generates from the board config (`abctl boot-script`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from settings import REPO, SOURCE_DATE_EPOCH

from bootctl import state
from bootctl.board import BoardConfig

# mkimage dates its header from SOURCE_DATE_EPOCH when set.
REPRODUCIBLE = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}


def _abctl_boot_script(board_path: Path, out: Path, *extra: str) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bootctl.cli",
            "--board",
            str(board_path),
            "boot-script",
            "-o",
            str(out),
            *extra,
        ],
        check=True,
        cwd=REPO,
        env=REPRODUCIBLE,
    )


def boot_script(board: BoardConfig, board_path: Path, workdir: Path) -> dict[str, Path]:
    """Write the boot script(s) bootctl generates for `board` into `workdir`.

    Returns:
        Mapping of path on the boot partition -> local file.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if board.bootloader == "u-boot":
        cmd = workdir / "boot.cmd"
        scr = workdir / board.boot.script
        _abctl_boot_script(board_path, cmd)
        _abctl_boot_script(board_path, scr, "--mkimage")
        return {board.boot.script: scr, "boot.cmd": cmd}
    cfg = workdir / "grub.cfg"
    _abctl_boot_script(board_path, cfg)
    return {board.boot.script: cfg}


def initial_env(board: BoardConfig, verity_a: str) -> dict[str, str]:
    """The environment of a freshly built image: slot A installed, slot B empty.

    The variables are bootctl's (`bootctl.state`); `verity_a` is checked as it would be
    read at boot.
    """
    names = list(board.slot_names)
    env = state.default_env(names, board.tries)
    return state.set_verity(env, names[0], state.SlotVerity.from_env(verity_a), names)


def write_env(board: BoardConfig, env: dict[str, str], out: Path) -> None:
    """Write `env` as the bootloader's environment file (U-Boot binary env or grubenv)."""
    out.unlink(missing_ok=True)
    if board.bootloader == "u-boot":
        text = out.with_suffix(".txt")
        text.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        subprocess.run(
            ["mkenvimage", "-s", str(board.env.uboot_size), "-o", str(out), str(text)], check=True
        )
    else:
        subprocess.run(["grub-editenv", str(out), "create"], check=True)
        subprocess.run(
            ["grub-editenv", str(out), "set", *(f"{k}={v}" for k, v in env.items())], check=True
        )
