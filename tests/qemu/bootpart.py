"""The boot partition of an emulated device's disk image, read and written from the host.

What an attacker with write access to the disk can do while the device is off: replace a
slot's boot files, write the boot environment. Files go through mtools on the FAT
partition inside the image (`-i disk.img@@OFFSET`), the environment through bootctl's
codecs (the same bytes `fw_setenv` and `grub-editenv` write, as tests/bootctl proves).
Only while QEMU is off: QEMU and mtools must not write the image at once.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from bootctl import grubenv, ubootenv
from bootctl.board import BoardConfig

MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}


def partition_start(disk: Path, index: int) -> int:
    """Byte offset of partition `index` (0 = the first) of a GPT disk image (from sfdisk)."""
    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True
        ).stdout
    )
    start: int = table["partitiontable"]["partitions"][index]["start"] * 512
    return start


class BootPartition:
    """The FAT boot partition (partition 1) of a powered-off device's disk image."""

    def __init__(self, disk: Path, board: BoardConfig) -> None:
        self.image = f"{disk}@@{partition_start(disk, 0)}"
        self.board = board

    def _mtools(self, *args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, env=MTOOLS_ENV)

    def exists(self, path: str) -> bool:
        """Whether `path` (relative to the partition's root) is there."""
        proc = subprocess.run(
            ["mdir", "-b", "-i", self.image, f"::{path}"], capture_output=True, env=MTOOLS_ENV
        )
        return proc.returncode == 0

    def listing(self, folder: str) -> list[str]:
        """The names in `folder` (hidden ones included)."""
        proc = subprocess.run(
            ["mdir", "-b", "-a", "-i", self.image, f"::{folder}"],
            capture_output=True,
            text=True,
            env=MTOOLS_ENV,
            check=True,
        )
        return [Path(line.strip()).name for line in proc.stdout.splitlines() if line.strip()]

    def read(self, path: str) -> bytes:
        """The file at `path`."""
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "file"
            self._mtools("mcopy", "-n", "-i", self.image, f"::{path}", str(out))
            return out.read_bytes()

    def write(self, path: str, data: bytes) -> None:
        """Put `data` at `path`, replacing what was there."""
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "file"
            src.write_bytes(data)
            self._mtools("mcopy", "-o", "-i", self.image, str(src), f"::{path}")

    def delete(self, path: str) -> None:
        """Remove `path` if it is there."""
        if self.exists(path):
            self._mtools("mdel", "-i", self.image, f"::{path}")

    def slot_files(self, slot: str) -> dict[str, bytes]:
        """Slot `slot`'s boot files (name -> bytes) that are there."""
        folder = self.board.slot(slot).boot_dir
        return {
            name: self.read(f"{folder}/{name}")
            for _, name in self.board.boot.files
            if self.exists(f"{folder}/{name}")
        }

    def put_slot_files(self, slot: str, files: Mapping[str, bytes]) -> None:
        """Make `files` (name -> bytes) slot `slot`'s boot files; the board's others go."""
        folder = self.board.slot(slot).boot_dir
        for _, name in self.board.boot.files:
            if name in files:
                self.write(f"{folder}/{name}", files[name])
            else:
                self.delete(f"{folder}/{name}")

    def env(self) -> dict[str, str]:
        """The boot environment in the file the bootloader reads."""
        env = self.board.env
        if self.board.bootloader == "u-boot":
            return ubootenv.decode_single(self.read(env.uboot_file), env.uboot_size)
        return grubenv.decode_grubenv(self.read(env.grub_file))

    def set_env(self, values: Mapping[str, str]) -> None:
        """Write the boot environment file whole: exactly `values`."""
        env = self.board.env
        if self.board.bootloader == "u-boot":
            self.write(env.uboot_file, ubootenv.encode_single(values, env.uboot_size))
        else:
            self.write(env.grub_file, grubenv.encode_grubenv(values))
