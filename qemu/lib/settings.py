"""The one place for the QEMU images' paths, guest addresses and architectures.

The image builder (`imagebuild.py` and its steps), the launcher (`vm.py`, `run.py`) and the
device flows (`tests/qemu/`) all read these names from here, so an image and the tests that
drive it never disagree on where the build folder or the development keys are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QEMU_DIR = REPO / "qemu"
#: Downloads (Debian packages, wheels). `ABUPDATE_QEMU_CACHE` moves it (e.g. to time a cold
#: build); everything that reads it reads it here.
CACHE = Path(os.environ.get("ABUPDATE_QEMU_CACHE", QEMU_DIR / "cache"))
#: Build outputs and the development keys. `ABUPDATE_QEMU_BUILD` moves it, for the builder
#: and the tests alike.
BUILD = Path(os.environ.get("ABUPDATE_QEMU_BUILD", QEMU_DIR / "build"))
#: Development keys (bundle-tool keygen) whose CA the images trust unless told otherwise.
DEV_KEYS = BUILD / "keys"
#: Development boot keys (bundle-tool keygen --boot): the FIT key, PK/KEK/db, GRUB's gpg key.
BOOT_KEYS = BUILD / "bootkeys"
BOARD_CONFIGS = REPO / "board-configs"
#: Files copied into every root filesystem, and the initramfs' /init.
ROOTFS_OVERLAY = QEMU_DIR / "rootfs"
INITRAMFS_INIT = QEMU_DIR / "initramfs" / "init"
#: The slot resolution /init sources (root hash and partition of the slot that booted).
INITRAMFS_SLOT = QEMU_DIR / "initramfs" / "slot.sh"

#: Fixed timestamp of every built file, so the same inputs give the same bytes.
SOURCE_DATE_EPOCH = 1700000000

#: The updater's state directory on the boot partition (the device config's `state_dir`).
STATE_ON_BOOT = "abupdate/state"

#: The update server as the guest knows it: user-mode networking forwards this address to
#: the host (`vm.VmConfig.forward`), and the images' /etc/hosts names it UPDATE_SERVER.
GUEST_SERVER_IP = "10.0.2.100"
UPDATE_SERVER = "updates.abupdate.test"

MiB = 1024 * 1024
#: Room for three signed boot images (both slots, and the one being written beside the
#: target's old one): arm64's FIT holds an uncompressed 31 MiB kernel.
BOOT_SIZE = 160 * MiB
SLOT_SIZE = 160 * MiB

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_SECURE_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
UBOOT = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")

# Loaded by the initramfs (with their dependencies); they stay loaded in the slot's system.
MODULES = (
    *("virtio_pci", "virtio_blk", "virtio_net", "dm-verity", "squashfs", "vfat"),
    *("nls_cp437", "nls_ascii"),
)


@dataclass(frozen=True)
class Arch:
    """What differs between the two device images.

    Attributes:
        name: Debian architecture name (`arm64`, `amd64`).
        triplet: Multiarch triplet of the target's libraries.
        board: Board config file name under `board-configs/`.
        extra_packages: Debian packages this architecture's root filesystem adds.
        modules: Kernel modules the initramfs loads.
        wheel_platforms: pip platform tags of the target's wheels.
        boot_timeout: Seconds one boot may take under TCG (2-3x what it takes; docs/qemu.md).
    """

    name: str
    triplet: str
    board: str
    extra_packages: tuple[str, ...]
    modules: tuple[str, ...]
    wheel_platforms: tuple[str, ...]
    boot_timeout: float

    @property
    def board_path(self) -> Path:
        """The board config of this architecture's image."""
        return BOARD_CONFIGS / self.board


ARCHES = {
    "arm64": Arch(
        "arm64",
        "aarch64-linux-gnu",
        "qemu-arm64-fit.toml",
        ("libubootenv-tool",),
        MODULES,
        ("manylinux_2_28_aarch64", "manylinux2014_aarch64", "manylinux_2_17_aarch64"),
        90.0,
    ),
    "amd64": Arch(
        "amd64",
        "x86_64-linux-gnu",
        "qemu-x86_64-uki.toml",
        (),
        # efivarfs: the initramfs reads LoaderImageIdentifier, the UKI systemd-stub started.
        (*MODULES, "efivarfs"),
        ("manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64"),
        150.0,
    ),
}


#: Files kept next to a disk image DISK as DISK<suffix>, for the firmware: the OVMF variable
#: store, U-Boot's control DTB (boot.chain fit: `-dtb`), and a marker that the variable store
#: has our keys enrolled and Secure Boot on (boot.chain uki: the secure-boot OVMF build).
SIDECARS = (".ovmf-vars", ".dtb", ".secure-boot")


def sidecar(disk: Path, suffix: str) -> Path:
    """The file `suffix` (one of SIDECARS) kept next to `disk`."""
    return disk.with_name(disk.name + suffix)


def image_dir(arch: str) -> Path:
    """Where `qemu/build-image --arch ARCH` puts its image unless told otherwise."""
    return BUILD / arch / "image"
