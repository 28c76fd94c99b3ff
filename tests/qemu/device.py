"""A device under test, driven over its serial console: the flows' strategy, on any target.

The state machine every flow uses: `power_on()` -> `wait_booted()` (which slot, which
version) -> `sh()` commands framed with an exit-status marker -> `reboot()` / `reset()` /
`power_cut()` -> `wait_booted()` again. The console log of the whole test is kept in one
file, attached to the test report when the test fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bootctl.board import BoardConfig
from tests.qemu.qemulib import settings, vm
from tests.qemu.target import QemuTarget, Target

BOOTED = r"abupdate: booted slot (\w+), version (\S+)\n"
READY = r"abupdate: system ready\n"
INITRAMFS_FAILED = r"abupdate-initramfs: FAILED: ([^\n]*)\n"
#: What the initramfs of a verified board's boot image says of the root hash it uses.
SIGNED_INITRAMFS = "(root hash from the signed initramfs)"
#: UEFI firmware that refused or found every boot option: it then waits for ever.
NO_BOOTABLE = r"No bootable option or device was found"


class NoBootableOption(AssertionError):
    """The firmware found nothing it would start: the boot cannot come up, stop waiting."""


@dataclass(frozen=True)
class Boot:
    """What one boot reached: the slot and version userspace reported."""

    slot: str
    version: str


class Device:
    """One device under test, on any target (QEMU, or a board on a serial port)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.console: vm.Console | None = None
        #: What userspace printed between "booted slot" and "system ready" on the last boot.
        self.boot_messages = ""

    @property
    def board(self) -> BoardConfig:
        """The board config of the device's image."""
        return self.target.board

    @property
    def arch(self) -> str:
        """The device's architecture (from its board config)."""
        return self.board.architecture

    @property
    def is_qemu(self) -> bool:
        """Whether this is an emulated device (disk image, USB stick, forwarded ports)."""
        return isinstance(self.target, QemuTarget)

    @property
    def qemu(self) -> QemuTarget:
        """The QEMU target, for what only an emulated device offers."""
        assert isinstance(self.target, QemuTarget), "needs QEMU"
        return self.target

    @property
    def disk(self) -> Path:
        """The emulated device's disk image."""
        return self.qemu.resource.disk

    @property
    def usb(self) -> Path | None:
        """The file attached as a USB stick at the next power on."""
        return self.qemu.resource.usb

    @usb.setter
    def usb(self, path: Path | None) -> None:
        self.qemu.resource.usb = path

    @property
    def forward(self) -> list[int]:
        """Host ports the emulated device reaches as the update server."""
        return self.qemu.resource.forward

    @forward.setter
    def forward(self, ports: list[int]) -> None:
        self.qemu.resource.forward = ports

    @property
    def boot_mount(self) -> str:
        """Where the boot partition is mounted in the running system (board config)."""
        return self.board.boot.mount

    # --- power ----------------------------------------------------------------------------

    def power_on(self) -> vm.Console:
        """Switch the device on; the console is open before it prints anything."""
        self.console = self.target.power_on()
        return self.console

    def power_off(self) -> None:
        """Switch the device off and close its console."""
        self.target.power_off()
        self.console = None

    def power_cut(self) -> None:
        """Cut the power at once (QEMU killed, or the power command's `off`)."""
        assert self.target.can_cut_power, "power cuts need QEMU or a power command"
        self.target.power_cut()
        self.console = None

    def reset(self) -> None:
        """Hard reset (QMP system_reset; a power cycle; `reboot -f` without power control)."""
        self.console = self.target.reset(self.con)

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
        return self.con.expect(pattern, timeout or self.target.boot_timeout)

    def wait_booted(self, timeout: float | None = None) -> Boot:
        """Wait until userspace came up and the shell is ready; return the slot and version.

        Raises:
            NoBootableOption: The firmware said it has nothing to boot (at once, not after
                the timeout).
        """
        m = self.expect(f"{BOOTED}|{NO_BOOTABLE}", timeout)
        if m.group(1) is None:
            raise NoBootableOption(f"the firmware says: {m.group(0)}")
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
        GRUB: the environment block file the board config names (text `grub-editenv` writes).
        """
        if self.board.bootloader == "u-boot":
            out = self.sh("fw_printenv")
        else:
            out = self.sh(f"cat {self.board.env.grubenv}")
        env = {}
        for line in out.splitlines():
            if "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                env[key] = value
        return env

    def booted_slot(self) -> str:
        """The booted slot as bootctl tells it: `abupdate.slot=` on the kernel command line
        (U-Boot), or the folder of the UKI systemd-stub was started as (UEFI)."""
        m = re.search(r"^booted: +(\w+)", self.sh("abctl status"), re.M)
        assert m, "abctl status names no booted slot"
        return m.group(1)

    def verity_root(self) -> str:
        """Check / is the dm-verity device and return the status veritysetup prints."""
        mounts = self.sh("cat /proc/mounts")
        assert re.search(r"^/dev/mapper/vroot / squashfs ro", mounts, re.M), mounts
        status = self.sh("veritysetup status vroot")
        assert "type:        VERITY" in status, status
        assert "status:      verified" in status, status
        return status


def release_line(version: str) -> str:
    """What the initramfs of release `version`'s signed boot image prints as it starts."""
    return f"abupdate-initramfs: boot image of release {version}\n"


def copy_disk(src: Path, dst: Path) -> Path:
    """A private copy of a disk image (sparse) for one test."""
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    for suffix in settings.SIDECARS:
        if settings.sidecar(src, suffix).exists():
            shutil.copyfile(settings.sidecar(src, suffix), settings.sidecar(dst, suffix))
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
