"""A device under test, driven over its serial console: a QEMU image or a real board.

The state machine every flow uses: `power_on()` -> `wait_booted()` (which slot, which
version) -> `sh()` commands framed with an exit-status marker -> `reboot()` / `reset()` /
`power_cut()` -> `wait_booted()` again. The console log of the whole test is kept in one
file, attached to the test report when the test fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "qemu" / "lib"))

import vm  # noqa: E402

# Timeouts are 2-3x what a boot takes under TCG on a 2-core machine (see docs/qemu.md).
BOOT_TIMEOUT = {"arm64": 90.0, "amd64": 150.0}
BOARDS = {"arm64": "qemu-arm64-uboot", "amd64": "qemu-x86_64-grub"}
BOOTED = r"abupdate: booted slot (\w+), version (\S+)\n"
READY = r"abupdate: system ready\n"
INITRAMFS_FAILED = r"abupdate-initramfs: FAILED: ([^\n]*)\n"


@dataclass(frozen=True)
class Boot:
    """What one boot reached: the slot and version userspace reported."""

    slot: str
    version: str


class Device:
    """One device (QEMU or a real board on a serial port) under test."""

    def __init__(
        self,
        arch: str,
        log_file: Path,
        disk: Path | None = None,
        port: str | None = None,
    ) -> None:
        self.arch = arch
        self.log_file = log_file
        self.disk = disk
        self.port = port
        self.usb: Path | None = None
        self.forward: list[int] = []
        self.machine: vm.Machine | None = None
        self.console: vm.Console | None = None
        #: What userspace printed between "booted slot" and "system ready" on the last boot.
        self.boot_messages = ""

    @property
    def is_qemu(self) -> bool:
        """Whether this is an emulated device (power control, disk access)."""
        return self.port is None

    @property
    def boot_mount(self) -> str:
        """Where the boot partition is mounted in the running system."""
        return "/boot" if self.arch == "arm64" else "/boot/efi"

    # --- power ----------------------------------------------------------------------------

    def power_on(self) -> vm.Console:
        """Start QEMU (or open the board's serial port)."""
        if self.is_qemu:
            assert self.disk is not None
            self.machine = vm.Machine(
                self.arch, self.disk, self.log_file, usb=self.usb, forward=self.forward
            )
            self.console = self.machine.start()
        else:
            # A real board is already running: reboot it so the test starts at power-on.
            assert self.port is not None
            self.console = vm.Console(self.port, self.log_file)
            self.console.send("\nreboot -f\n")
        return self.console

    def power_off(self) -> None:
        """Quit QEMU (QMP quit) or close the serial port."""
        if self.machine:
            self.machine.stop()
            self.machine = None
        elif self.console:
            self.console.close()
        self.console = None

    def power_cut(self) -> None:
        """Kill QEMU at once, as pulling the power would."""
        assert self.machine is not None, "power cuts need QEMU"
        self.machine.power_cut()
        self.machine = None
        self.console = None

    def reset(self) -> None:
        """Hard reset (QMP system_reset; on a real board `reboot -f`)."""
        if self.machine:
            self.machine.reset()
        else:
            self.con.send("reboot -f\n")

    def reboot(self) -> None:
        """Clean reboot from the shell."""
        self.con.send("reboot\n")

    # --- console --------------------------------------------------------------------------

    @property
    def con(self) -> vm.Console:
        """The open console."""
        assert self.console is not None, "device is not powered on"
        return self.console

    def expect(self, pattern: str, timeout: float | None = None) -> re.Match[str]:
        """Wait for `pattern` on the console (default timeout: one boot)."""
        return self.con.expect(pattern, timeout or BOOT_TIMEOUT[self.arch])

    def wait_booted(self, timeout: float | None = None) -> Boot:
        """Wait until userspace came up and the shell is ready; return the slot and version."""
        m = self.expect(BOOTED, timeout)
        boot = Boot(m.group(1), m.group(2))
        ready = self.expect(READY, 120)
        self.boot_messages = self.con.log[m.end() : ready.start()]
        time.sleep(0.3)  # let the shell print its prompt
        return boot

    def sh(self, command: str, timeout: float = 60) -> str:
        """Run a shell command that must succeed; return its output."""
        return self.con.check(command, timeout)

    def sh_rc(self, command: str, timeout: float = 60) -> tuple[int, str]:
        """Run a shell command; return its exit status and output."""
        return self.con.run(command, timeout)

    # --- slot state, read with the bootloader's own tools ---------------------------------

    def env(self) -> dict[str, str]:
        """The boot environment, read in the running system with the standard tools.

        U-Boot: `fw_printenv` (libubootenv) with the image's /etc/fw_env.config.
        GRUB: the environment block file on the ESP (a text file `grub-editenv` writes).
        """
        if self.arch == "arm64":
            out = self.sh("fw_printenv")
        else:
            out = self.sh(f"cat {self.boot_mount}/EFI/BOOT/grubenv")
        env = {}
        for line in out.splitlines():
            if "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key] = value
        return env

    def booted_slot(self) -> str:
        """The slot named on the kernel command line."""
        m = re.search(r"abupdate\.slot=(\w+)", self.sh("cat /proc/cmdline"))
        assert m, "no abupdate.slot= on the kernel command line"
        return m.group(1)

    def verity_root(self) -> str:
        """Check / is the dm-verity device and return the status veritysetup prints."""
        mounts = self.sh("cat /proc/mounts")
        assert re.search(r"^/dev/mapper/vroot / squashfs ro", mounts, re.M), mounts
        status = self.sh("veritysetup status vroot")
        assert "type:        VERITY" in status, status
        assert "status:      verified" in status, status
        return status


def copy_disk(src: Path, dst: Path) -> Path:
    """A private copy of a disk image (sparse) for one test."""
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    vars_src = src.with_name(src.name + ".ovmf-vars")
    if vars_src.exists():
        shutil.copyfile(vars_src, dst.with_name(dst.name + ".ovmf-vars"))
    return dst


def usb_stick(files: dict[str, Path], out: Path) -> Path:
    """A FAT image holding `files` (name -> local file), used as a USB stick."""
    size = sum(f.stat().st_size for f in files.values())
    kib = max(8 * 1024, (size * 11 // 10) // 1024 + 4096)
    out.unlink(missing_ok=True)
    subprocess.run(
        ["mkfs.vfat", "-C", "-n", "UPDATE", str(out), str(kib)],
        check=True,
        capture_output=True,
    )
    for name, src in files.items():
        subprocess.run(
            ["mcopy", "-i", str(out), str(src), f"::{name}"],
            check=True,
            env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
        )
    return out
