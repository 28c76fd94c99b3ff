"""The update flows of the product on emulated devices, driven over the serial console.

Each flow starts from the base image (version 1.0.0 in slot A, slot B empty) and uses
bundles made with bundle-tool from root filesystems built by qemu/build-image.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers.nginx import NginxServer
from tests.helpers.tlsca import TlsFiles
from tests.qemu.bootpart import BootPartition, partition_start
from tests.qemu.conftest import REPO, UPDATE_SERVER, Bundles
from tests.qemu.device import INITRAMFS_FAILED, SIGNED_INITRAMFS, Boot, Device, usb_stick

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

INSTALL_TIMEOUT = 600
BUNDLE = "/mnt/update.bundle"


def attach_usb(device: Device, files: dict[str, Path], tmp_path: Path) -> None:
    """Put `files` on a FAT "USB stick" attached as the second disk (/dev/vdb).

    Only QEMU takes one: the flows that call this take the `qemu_only` or `installed`
    device, so a board skips them before any bundle is built.
    """
    device.usb = usb_stick(files, tmp_path / "usb.img")


def mount_usb(device: Device) -> None:
    device.sh("mount -t vfat -o ro /dev/vdb /mnt")


def install(device: Device, source: str = BUNDLE, *args: str) -> tuple[int, dict[str, object]]:
    """`updater install --json SOURCE`; return its exit status and last JSON object."""
    rc, out = device.sh_rc(f"updater install --json {' '.join(args)} {source}", INSTALL_TIMEOUT)
    objects = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert objects, f"updater printed no JSON:\n{out}"
    return rc, objects[-1]


def test_good_update_from_usb(installed: Device, bundles: Bundles, tmp_path: Path) -> None:
    """2.0.0 was installed into B from a USB stick (the `installed` fixture checks the
    install: exit 0, slot B, B first in BOOT_ORDER with its root hash); its first boot."""
    device = installed
    # Refused before anything is written, so they may carry the 2.0.0 image.
    old = bundles.get(device.arch, "1.5.0", 1, image_version="2.0.0")
    untrusted = bundles.get(device.arch, "2.2.0", 2, image_version="2.0.0", untrusted=True)
    attach_usb(device, {"old.bundle": old, "untrusted.bundle": untrusted}, tmp_path)
    device.power_on()
    assert device.wait_booted() == Boot("B", "2.0.0")
    assert "slot B marked good" in device.boot_messages
    status = device.verity_root()
    assert "data device: /dev/vda3" in status
    assert status.split("root hash:")[1].strip() == device.env()["BOOT_B_VERITY"].split(":")[0]
    assert "security floor 2" in device.sh("updater status")

    # A downgrade below the floor the good update raised is refused, and so is a bundle
    # signed by a CA the device does not trust; nothing changes.
    mount_usb(device)
    before = device.env()
    rc, result = install(device, "/mnt/old.bundle")
    assert rc == 5, result  # refused by policy: below the anti-rollback floor
    assert device.env() == before
    rc, result = install(device, "/mnt/untrusted.bundle")
    assert rc == 4, result  # signature or certificate does not establish trust
    assert device.env() == before

    # A further reboot stays on B.
    device.reboot()
    assert device.wait_booted() == Boot("B", "2.0.0")
    env = device.env()
    assert env["BOOT_B_LEFT"] == "3" and env["BOOT_ORDER"].split()[0] == "B", env


def test_tampered_slot_is_refused(installed: Device) -> None:
    device = installed
    # Change one block of slot B's filesystem in the disk image (the squashfs superblock,
    # so that the very first read at boot hits it).
    offset = partition_offset(device, "B")
    with open(device.disk, "r+b") as disk:
        disk.seek(offset)
        block = bytearray(disk.read(4096))
        block[0] ^= 0xFF
        disk.seek(offset)
        disk.write(block)
    device.power_on()
    for _ in range(3):
        m = device.expect(INITRAMFS_FAILED)
        assert "/dev/mapper/vroot" in m.group(1), m.group(1)
    assert device.wait_booted() == Boot("A", "1.0.0")
    assert re.search(r"verity.*(corrupted|error)", device.con.log, re.I)
    env = device.env()
    assert env["BOOT_B_LEFT"] == "0" and env["BOOT_A_LEFT"] == "3", env


def partition_offset(device: Device, slot: str) -> int:
    """Byte offset of a slot's partition in the device's disk image (from sfdisk)."""
    assert device.disk is not None
    return partition_start(device.disk, {"A": 1, "B": 2}[slot])


def test_power_cuts_in_the_install_and_the_counter_save_then_resume(
    qemu_only: Device, bundles: Bundles, tmp_path: Path
) -> None:
    """The power is cut while slot B's data is written, then (the install run again) while
    B's boot files are written, then as the bootloader saves the try of B's first boot.
    Each time a verified slot boots and A is untouched; the install run a third time
    completes, reusing what was written before."""
    device = qemu_only
    board = device.board
    bundle = bundles.get(device.arch, "2.0.0", 2)
    attach_usb(device, {"update.bundle": bundle}, tmp_path)
    device.power_on()
    assert device.wait_booted() == Boot("A", "1.0.0")
    mount_usb(device)
    before = device.env()
    # Start the install and cut the power once it reports having written part of slot B.
    device.con.send(f"updater install --json {BUNDLE}\n")
    device.expect(r'"phase": "data", "done": [1-9]\d{7}', 300)
    device.power_cut()

    device.power_on()
    assert device.wait_booted() == Boot("A", "1.0.0")
    after = device.env()
    # The install had marked B unbootable before writing it; A is untouched.
    assert after["BOOT_B_LEFT"] == "0", after
    for key in ("BOOT_ORDER", "BOOT_A_LEFT", "BOOT_A_VERITY"):
        assert after[key] == before[key], (key, before, after)

    # Run again, it gets to B's boot files (a verified board's signed boot image): cut.
    mount_usb(device)
    device.con.send(f"updater install --json --delta {BUNDLE}\n")
    device.expect(r'"phase": "boot-files"', 600)
    device.power_cut()
    part = BootPartition(device.disk, board)
    env = part.env()
    assert env["BOOT_B_LEFT"] == "0", env
    assert not part.exists(f"{board.slot('B').boot_dir}/{board.boot.image}")
    device.power_on()
    assert device.wait_booted() == Boot("A", "1.0.0")
    assert SIGNED_INITRAMFS in device.con.log

    mount_usb(device)
    rc, result = install(device, BUNDLE, "--delta")
    assert rc == 0, result
    assert result["slot"] == "B", result
    # Resumed: what was written before the power cuts is kept, not fetched again.
    assert int(str(result["bytes_reused"])) > 0, result
    fetched = int(str(result["bytes_fetched"])) - boot_file_bytes(bundle)
    assert fetched < int(str(result["image_size"])), result

    # B's first boot: the power goes as the bootloader saves the counted try. Either slot
    # may then boot (the save done or not); it is a verified one.
    device.reboot()
    if board.bootloader == "u-boot":
        device.expect(r"abupdate: loaded uboot\.env")
    else:
        device.expect(r"BdsDxe: starting Boot")
    device.power_cut()
    device.power_on()
    boot = device.wait_booted()
    assert boot in (Boot("A", "1.0.0"), Boot("B", "2.0.0")), boot
    assert f"slot={boot.slot} root=" in device.con.log
    assert SIGNED_INITRAMFS in device.con.log
    device.verity_root()


def test_delta_update_over_https(
    installed: Device, bundles: Bundles, update_server_tls: TlsFiles, tmp_path: Path
) -> None:
    """From B's first boot after the install of 2.0.0, 2.1.0 into A over HTTPS (nginx on
    the host, TLS checked against the CA the image trusts) as a delta. (A whole install
    over HTTPS is the fleet flow's: goosebit's artifact through nginx.)"""
    device = installed
    arch = device.arch
    root = tmp_path / "www"
    root.mkdir()
    v21 = bundles.get(arch, "2.1.0", 2)
    (root / "v21.bundle").symlink_to(v21)
    with NginxServer(tmp_path / "nginx", root, update_server_tls) as server:
        device.forward = [server.port]
        base = f"https://{UPDATE_SERVER}:{server.port}"
        device.power_on()
        assert device.wait_booted() == Boot("B", "2.0.0")
        assert "slot B marked good" in device.boot_messages

        # 2.1.0 differs from 2.0.0 in a few blocks: installing it into A over HTTPS
        # reuses the running slot's blocks and downloads little more than the changes.
        rc, result = install(device, f"{base}/v21.bundle")
        assert rc == 0, result
        assert result["slot"] == "A", result
        fetched = server.body_bytes_served()
        # What the delta may fetch: the blocks of 2.1.0 that slot B (2.0.0) does not hold,
        # plus the hash tree and the bundle's head, and the boot files whole.
        new = rootfs_blocks(
            bundles.images.get(arch, "v2.1.0", "--rootfs-only", "--version", "2.1.0")
        )
        old = set(
            rootfs_blocks(bundles.images.get(arch, "v2.0.0", "--rootfs-only", "--version", "2.0.0"))
        )
        missing = sum(1 for block in new if block not in old)
        allowed = missing * 4096 + 2 * 1024 * 1024 + boot_file_bytes(v21)
        assert fetched <= allowed, (fetched, missing, result)
        assert int(str(result["bytes_reused"])) >= (len(new) - missing) * 4096, result
        assert fetched < v21.stat().st_size, (fetched, result)
        device.reboot()
        assert device.wait_booted() == Boot("A", "2.1.0")
        device.verity_root()


def boot_file_bytes(bundle: Path) -> int:
    """Bytes of the bundle's file images (a verified board's boot image), tree included:
    an install fetches them whole (no delta against the running slot's boot files yet)."""
    info = json.loads(
        subprocess.run(
            [str(REPO / ".venv/bin/bundle-tool"), "info", "--json", str(bundle)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    return sum(
        i["size"] + i["verity"]["tree_size"] + i.get("leaf_summary_size", 0)
        for i in info["images"]
        if i["slot_class"] != "rootfs"
    )


def rootfs_blocks(info: dict[str, object]) -> list[bytes]:
    """The 4096-byte blocks of a root filesystem image built by qemu/build-image."""
    data = Path(str(info["rootfs"])).read_bytes()
    return [data[i : i + 4096] for i in range(0, len(data), 4096)]
