"""Run a generated boot script in real U-Boot or GRUB under QEMU, one boot per QEMU run.

The disk holds only the FAT boot partition (boot script, environment) and two tiny slot
partitions: there is no kernel, so every boot that selects a slot fails to load it and resets
the board, and `-no-reboot` turns that reset into QEMU exiting. One run is therefore exactly
one pass of the boot script, and the environment it saved is read back from the FAT image
with mtools.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bootctl.board import BoardConfig
from bootctl.bootscript import compile_uboot_script, render_grub_cfg, render_uboot_script

UBOOT_BIN = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
GRUB_MODULES = "part_gpt fat normal linux loadenv test echo configfile cat ls reboot halt sleep"
PART_OFFSET = 1024 * 1024  # partition 1 starts at sector 2048
BOOT_TIMEOUT = 180  # seconds; TCG speed varies a lot


def _run(*cmd: str | Path, stdin: str | None = None) -> None:
    subprocess.run([str(c) for c in cmd], input=stdin, text=True, check=True, capture_output=True)


def env_path_on_partition(board: BoardConfig) -> str:
    """The environment file's path on the FAT partition, in mtools syntax."""
    if board.bootloader == "u-boot":
        return "::/" + board.env.uboot_file
    return "::/" + board.env.grub_file


class QemuBoard:
    """A disk image for `board` in `workdir` and a way to boot it once."""

    def __init__(self, board: BoardConfig, workdir: Path) -> None:
        self.board = board
        self.dir = workdir
        self.disk = workdir / "disk.img"
        self.part = workdir / "boot.img"

    def build(self, env_image: bytes) -> None:
        """Create the disk with the boot script and `env_image` as the environment file."""
        _run("mkfs.vfat", "-C", self.part, "16384")
        env_file = self.dir / "env.bin"
        env_file.write_bytes(env_image)
        if self.board.bootloader == "u-boot":
            source = self.dir / "boot.cmd"
            source.write_text(render_uboot_script(self.board))
            compile_uboot_script(source, self.dir / "boot.scr", self.board.architecture)
            _run("mcopy", "-i", self.part, self.dir / "boot.scr", "::/" + self.board.boot.script)
        else:
            efi = self.dir / "BOOTX64.EFI"
            _run(
                "grub-mkimage",
                "-O",
                "x86_64-efi",
                "-p",
                "/EFI/BOOT",
                "-o",
                efi,
                *GRUB_MODULES.split(),
            )
            cfg = self.dir / "grub.cfg"
            cfg.write_text(render_grub_cfg(self.board))
            _run("mmd", "-i", self.part, "::/EFI", "::/EFI/BOOT")
            _run("mcopy", "-i", self.part, efi, cfg, "::/EFI/BOOT/")
        _run("mcopy", "-i", self.part, env_file, env_path_on_partition(self.board))
        self.disk.write_bytes(b"")
        with open(self.disk, "r+b") as f:
            f.truncate(64 * 1024 * 1024)
        layout = "label: gpt\nstart=2048, size=32768, type=uefi\nsize=8192\nsize=8192\n"
        _run("sfdisk", "-q", self.disk, stdin=layout)
        with open(self.disk, "r+b") as f:
            f.seek(PART_OFFSET)
            f.write(self.part.read_bytes())
        if self.board.bootloader == "grub":
            (self.dir / "vars.fd").write_bytes(OVMF_VARS.read_bytes())

    def boot_once(self) -> str:
        """Power on, let the boot script run until it resets the board; returns the console."""
        if self.board.bootloader == "u-boot":
            cmd = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57"]
            cmd += ["-bios", str(UBOOT_BIN)]
        else:
            cmd = ["qemu-system-x86_64", "-M", "q35"]
            cmd += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}"]
            cmd += ["-drive", f"if=pflash,format=raw,file={self.dir / 'vars.fd'}"]
        cmd += ["-m", "512", "-smp", "1", "-accel", "tcg", "-nographic", "-nic", "none"]
        cmd += ["-no-reboot", "-drive", f"if=virtio,format=raw,file={self.disk}"]
        result = subprocess.run(
            cmd, capture_output=True, timeout=BOOT_TIMEOUT, check=False, stdin=subprocess.DEVNULL
        )
        console = result.stdout.decode("utf-8", "replace").replace("\r", "")
        assert result.returncode == 0, f"QEMU failed ({result.returncode}):\n{console[-2000:]}"
        return console

    def read_env_image(self) -> bytes:
        """The environment file as the boot script left it."""
        out = self.dir / "env.out"
        _run(
            "mcopy",
            "-n",
            "-i",
            f"{self.disk}@@{PART_OFFSET}",
            env_path_on_partition(self.board),
            out,
        )
        return out.read_bytes()
