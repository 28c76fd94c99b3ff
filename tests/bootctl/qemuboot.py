"""Run a generated boot script in real U-Boot or GRUB under QEMU, one boot per QEMU run.

The disk holds only the FAT boot partition (boot script, environment) and two tiny slot
partitions: there is no kernel, so every boot that selects a slot fails to load it and resets
the board, and `-no-reboot` turns that reset into QEMU exiting. One run is therefore exactly
one pass of the boot script, and the environment it saved is read back from the FAT image
with mtools.

Boards with a verified chain (`boot.chain`) boot as they would in the field: `fit` runs the
boot command from a control DTB that holds the FIT key (`-dtb`), `uki` runs our signed
standalone GRUB under OVMF with Secure Boot on and our keys enrolled. The files a test puts
into the slots' boot folders (a tampered FIT, an unsigned UKI) are what gets refused.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bootctl.board import BoardConfig
from bootctl.bootscript import (
    compile_uboot_script,
    render_grub_cfg,
    render_uboot_script,
    write_control_dtb,
)
from bundle_tool import bootimage, bootkeys

UBOOT_BIN = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
OVMF_SECURE_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
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

    def __init__(
        self, board: BoardConfig, workdir: Path, keys: bootkeys.DevBootKeys | None = None
    ) -> None:
        self.board = board
        self.dir = workdir
        self.disk = workdir / "disk.img"
        self.part = workdir / "boot.img"
        self.keys = keys
        if board.boot.chain != "script" and keys is None:
            raise ValueError(f"boot.chain {board.boot.chain} needs the boot keys")

    def build(self, env_image: bytes, files: dict[str, bytes] | None = None) -> None:
        """Create the disk with the boot program, `env_image` as the environment file and
        `files` (path on the boot partition -> content)."""
        _run("mkfs.vfat", "-C", self.part, "16384")
        env_file = self.dir / "env.bin"
        env_file.write_bytes(env_image)
        if self.board.boot.chain == "fit":
            assert self.keys is not None
            dtb = self.dir / "virt.dtb"
            _run(*self._machine(), "-M", f"virt,dumpdtb={dtb}")
            bootimage.add_fit_key(dtb, self.keys.fit, self.dir)
            write_control_dtb(self.board, dtb, self.dir / "ctl.dtb")
        elif self.board.boot.chain == "uki":
            assert self.keys is not None
            efi = self.dir / "BOOTX64.EFI"
            bootimage.build_grub_efi(
                render_grub_cfg(self.board),
                efi,
                pubkey=self.keys.gpg_public,
                signer=self.keys.uefi_signer,
            )
            _run("mmd", "-i", self.part, "::/EFI", "::/EFI/BOOT")
            _run("mcopy", "-i", self.part, efi, "::/EFI/BOOT/")
        elif self.board.bootloader == "u-boot":
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
        made: set[Path] = {Path(".")}
        for name, data in (files or {}).items():
            local = self.dir / "put.bin"
            local.write_bytes(data)
            if Path(name).parent not in made:
                _run("mmd", "-i", self.part, "::/" + str(Path(name).parent))
                made.add(Path(name).parent)
            _run("mcopy", "-i", self.part, local, "::/" + name)
        self.disk.write_bytes(b"")
        with open(self.disk, "r+b") as f:
            f.truncate(64 * 1024 * 1024)
        layout = "label: gpt\nstart=2048, size=32768, type=uefi\nsize=8192\nsize=8192\n"
        _run("sfdisk", "-q", self.disk, stdin=layout)
        with open(self.disk, "r+b") as f:
            f.seek(PART_OFFSET)
            f.write(self.part.read_bytes())
        if self.board.boot.chain == "uki":
            assert self.keys is not None
            bootkeys.enroll_uefi_keys(self.keys, OVMF_VARS, self.dir / "vars.fd")
        elif self.board.bootloader == "grub":
            (self.dir / "vars.fd").write_bytes(OVMF_VARS.read_bytes())

    def _machine(self) -> list[str]:
        if self.board.bootloader == "u-boot":
            return ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-m", "512"]
        return ["qemu-system-x86_64", "-M", "q35", "-m", "512"]

    def boot_once(self) -> str:
        """Power on, let the boot script run until it resets the board; returns the console."""
        cmd = self._machine()
        if self.board.bootloader == "u-boot":
            cmd += ["-bios", str(UBOOT_BIN)]
            if self.board.boot.chain == "fit":
                cmd += ["-dtb", str(self.dir / "ctl.dtb")]
        else:
            code = OVMF_CODE
            if self.board.boot.chain == "uki":
                cmd[2] = "q35,smm=on"
                cmd += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
                code = OVMF_SECURE_CODE
            cmd += ["-drive", f"if=pflash,format=raw,readonly=on,file={code}"]
            cmd += ["-drive", f"if=pflash,format=raw,file={self.dir / 'vars.fd'}"]
        cmd += ["-smp", "1", "-accel", "tcg", "-nographic", "-nic", "none"]
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
