"""Boot scripts and initial boot environments for the QEMU images.

The boot scripts are the ones bootctl generates from the board config. Until a tree has
bootctl's generator, a minimal stand-in implementing the same contract is used.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# mkimage dates its header from SOURCE_DATE_EPOCH when set.
REPRODUCIBLE = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}


def have_bootctl_generator() -> bool:
    """Whether this tree's bootctl can generate boot scripts."""
    return (REPO / "bootctl" / "bootscript.py").exists()


def boot_script(board: Any, board_path: Path, workdir: Path) -> dict[str, Path]:
    """Write the boot script(s) for `board` into `workdir`.

    Returns:
        Mapping of path on the boot partition -> local file.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if board.bootloader == "u-boot":
        cmd = workdir / "boot.cmd"
        scr = workdir / board.boot.script
        if have_bootctl_generator():
            for out, extra in ((cmd, []), (scr, ["--mkimage"])):
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
        else:
            cmd.write_text(_placeholder_uboot(board))
            _mkimage(cmd, scr)
        return {board.boot.script: scr, "boot.cmd": cmd}
    cfg = workdir / "grub.cfg"
    if have_bootctl_generator():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bootctl.cli",
                "--board",
                str(board_path),
                "boot-script",
                "-o",
                str(cfg),
            ],
            check=True,
            cwd=REPO,
            env=REPRODUCIBLE,
        )
    else:
        cfg.write_text(_placeholder_grub(board))
    return {board.boot.script: cfg}


def _mkimage(cmd: Path, scr: Path) -> None:
    subprocess.run(
        [
            "mkimage",
            "-A",
            "arm64",
            "-O",
            "linux",
            "-T",
            "script",
            "-C",
            "none",
            "-n",
            "boot",
            "-d",
            str(cmd),
            str(scr),
        ],
        check=True,
        capture_output=True,
        env=REPRODUCIBLE,
    )


def initial_env(board: Any, verity_a: str) -> dict[str, str]:
    """The environment of a freshly built image: slot A installed, slot B empty."""
    names = [s.name for s in board.slots]
    env = {"BOOT_ORDER": " ".join(names)}
    for s in names:
        env[f"BOOT_{s}_LEFT"] = str(board.tries)
    for s in names:
        env[f"BOOT_{s}_VERITY"] = verity_a if s == names[0] else ""
    return env


def write_env(board: Any, env: dict[str, str], out: Path) -> None:
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


def _placeholder_uboot(board: Any) -> str:
    dev = board.boot.uboot_device
    addr = board.boot.uboot_env_addr
    size = hex(board.env.uboot_size)
    names = [s.name for s in board.slots]
    lines = [
        "# Stand-in boot script (bootctl's generator replaces it).",
        f"fatload {dev} {addr} {board.env.uboot_file} && env import -c {addr} {size}",
        "setenv chosen",
        "for s in ${BOOT_ORDER}; do",
    ]
    for s in board.slots:
        lines += [
            f'  if test -z "${{chosen}}" -a "${{s}}" = "{s.name}"; then',
            f'    if test -n "${{BOOT_{s.name}_VERITY}}" -a ${{BOOT_{s.name}_LEFT}} -gt 0; then',
            f"      setexpr BOOT_{s.name}_LEFT ${{BOOT_{s.name}_LEFT}} - 1",
            f"      setenv chosen {s.name}",
            f"      setenv bootargs {board.kernel_args} abupdate.slot={s.name} "
            f"abupdate.root={s.root} abupdate.verity=${{BOOT_{s.name}_VERITY}}",
            "    fi",
            "  fi",
        ]
    save_vars = " ".join(
        ["BOOT_ORDER", *(f"BOOT_{n}_LEFT" for n in names), *(f"BOOT_{n}_VERITY" for n in names)]
    )
    reset = " ".join(f"setenv BOOT_{n}_LEFT {board.tries};" for n in names)
    lines += [
        "done",
        'if test -z "${chosen}"; then',
        f"  echo 'abupdate: no bootable slot left; resetting counters'; {reset}",
        f"  env export -c -s {size} {addr} {save_vars}",
        f"  fatwrite {dev} {addr} {board.env.uboot_file} {size}",
        "  reset",
        "fi",
        'echo "abupdate: booting slot ${chosen}"',
        f"env export -c -s {size} {addr} {save_vars}",
        f"fatwrite {dev} {addr} {board.env.uboot_file} {size}",
        f"fatload {dev} ${{kernel_addr_r}} {board.boot.kernel}",
        f"fatload {dev} ${{ramdisk_addr_r}} {board.boot.initrd}",
        f"booti ${{kernel_addr_r}} ${{ramdisk_addr_r}}:${{filesize}} {board.boot.uboot_fdt}",
        "",
    ]
    return "\n".join(lines)


def _placeholder_grub(board: Any) -> str:
    names = [s.name for s in board.slots]
    lines = [
        "# Stand-in GRUB script (bootctl's generator replaces it).",
        "set timeout=0",
        f"load_env -f /{board.env.grub_file}",
        "set chosen=",
        "for s in $BOOT_ORDER; do",
    ]
    for s in board.slots:
        lines += [
            f'  if [ -z "$chosen" -a "$s" = "{s.name}" -a -n "$BOOT_{s.name}_VERITY" ]; then',
        ]
        for n in range(board.tries, 0, -1):
            lines += [
                f'    if [ -z "$chosen" -a "$BOOT_{s.name}_LEFT" = "{n}" ]; then',
                f"      set BOOT_{s.name}_LEFT={n - 1}",
                f"      set chosen={s.name}",
                f"      set root_dev={s.root}",
                f'      set verity="$BOOT_{s.name}_VERITY"',
                "    fi",
            ]
        lines += ["  fi"]
    left = " ".join(f"BOOT_{n}_LEFT" for n in names)
    lines += [
        "done",
        'if [ -z "$chosen" ]; then',
        "  echo 'abupdate: no bootable slot left; resetting counters'",
        *(f"  set BOOT_{n}_LEFT={board.tries}" for n in names),
        f"  save_env -f /{board.env.grub_file} {left}",
        "  reboot",
        "fi",
        f"save_env -f /{board.env.grub_file} {left}",
        'echo "abupdate: booting slot $chosen"',
        f"linux /{board.boot.kernel} {board.kernel_args} abupdate.slot=$chosen "
        "abupdate.root=$root_dev abupdate.verity=$verity",
        f"initrd /{board.boot.initrd}",
        "boot",
        "",
    ]
    return "\n".join(lines)
