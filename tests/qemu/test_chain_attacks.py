"""Attacks on the verified boot chain, on the whole emulated device (docs/verified-boot.md).

Whoever can write the disk of a powered-off device (here: the test, through
`bootpart.BootPartition`) writes the boot environment or a slot's boot files; the chain
must still boot only what was signed, count every refusal as a failed try and fall back
to the other slot. The flows start from the base image (1.0.0 in slot A) just after its
first update (the `installed` fixture: the 2.0.0 bundle, whose signed boot image carries
its own root hash and release, installed into B and not booted yet).
Refusals run with one try for B (set in the environment), so each attack costs one
refused boot.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from bundle_tool import bootkeys
from tests.qemu.bootattacks import signed_by, tampered_kernel, unsigned
from tests.qemu.bootpart import BootPartition
from tests.qemu.device import (
    INITRAMFS_FAILED,
    SIGNED_INITRAMFS,
    Boot,
    Device,
    NoBootableOption,
    release_line,
)

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

#: What a payload prints if it runs (`echo ${VAR}-pwned`): the variable expanded, so the
#: payload's own text never matches.
PAYLOAD = {
    "u-boot": ("echo ${arch}-pwned", "arm-pwned"),
    "grub": ("echo ${grub_cpu}-pwned", "x86_64-pwned"),
}


def test_environment_cannot_change_what_boots_and_the_new_kernel_runs(installed: Device) -> None:
    """Flows 1 and 6: B's first boot after the install, with an attacker's environment.

    The environment gets another root hash for B, the switch that turns the bootloader's
    checks off, its own kernel command line and boot command, and a `;` payload in
    BOOT_ORDER. B still boots, with the root hash of its signed initramfs, the new
    release's boot image runs (its initramfs says so) and B is marked good.
    """
    device = installed
    part = BootPartition(device.disk, device.board)
    env = part.env()
    signed_hash = env["BOOT_B_VERITY"].split(":")[0]
    attacker = env["BOOT_A_VERITY"]  # a root filesystem the attacker can read: A's
    payload, ran = PAYLOAD[device.board.bootloader]
    attack = {
        "BOOT_B_VERITY": attacker,
        "BOOT_ORDER": f"B A;{payload}",
        "bootargs": f"{device.board.kernel_args} abupdate.verity={attacker} init=/bin/sh",
        "bootcmd": payload,
    }
    if device.board.bootloader == "u-boot":
        attack["verify"] = "n"
    else:
        attack |= {"check_signatures": "no", "root": "hd0,gpt2"}
    part.set_env(env | attack)

    device.power_on()
    assert device.wait_booted() == Boot("B", "2.0.0")
    log = device.con.log
    assert f"abupdate-initramfs: slot=B root=/dev/vda3 {SIGNED_INITRAMFS}" in log
    assert release_line("2.0.0") in log
    assert "slot B marked good" in device.boot_messages
    status = device.verity_root()
    assert "data device: /dev/vda3" in status
    assert status.split("root hash:")[1].split()[0] == signed_hash != attacker.split(":")[0]
    cmdline = device.sh("cat /proc/cmdline")
    assert "abupdate.verity" not in cmdline and "abupdate.root" not in cmdline, cmdline
    assert "init=" not in cmdline and "pwned" not in cmdline, cmdline
    if device.board.bootloader == "u-boot":
        assert f"abupdate: bootargs [{device.board.kernel_args} abupdate.slot=B]" in log
    assert ran not in device.con.log
    # The running system tells B's boot image apart from A's. (The installed version is
    # "unknown": the record of the install no longer matches BOOT_B_VERITY.)
    status_text = device.sh("updater status")
    # The release and the kernel's own release (read from the Debian kernel at build time).
    assert re.search(r"slot B: .*boot image 2\.0\.0 \(kernel 6\.[^)]+\), booted", status_text), (
        status_text
    )
    assert re.search(r"slot A: .*boot image 1\.0\.0 \(kernel 6\.", status_text), status_text


def test_refused_boot_images_cost_a_try_and_a_boots(installed: Device, tmp_path: Path) -> None:
    """Flows 2, 3 and 4: B's boot image with one kernel byte changed, without signatures,
    signed with another key, and A's own (valid) boot image copied into B. Each is refused
    (by U-Boot / GRUB, or by dm-verity for A's image), costs B its one try, and A boots."""
    device = installed
    board = device.board
    part = BootPartition(device.disk, board)
    good = part.slot_files("B")
    other = bootkeys.DevBootKeys(tmp_path / "other-boot-keys")
    bootkeys.make_dev_boot_keys(other.root)
    fit = board.boot.chain == "fit"
    attacks = [
        (
            "one kernel byte changed",
            tampered_kernel(board, good),
            "Bad hash value for 'hash' hash node in 'kernel' image node"
            if fit
            else "error: bad signature.",
        ),
        (
            "unsigned",
            unsigned(board, good),
            "Failed to verify required signature 'key-dev'"
            if fit
            else r"boot\.efi\.sig' not found",
        ),
        (
            "signed with another key",
            signed_by(board, good, other),
            r"sha256,rsa2048:dev- +error!" if fit else r"public key [0-9a-fA-F]+ not found",
        ),
        ("A's boot image", part.slot_files("A"), INITRAMFS_FAILED),
    ]
    for name, files, refusal in attacks:
        part.put_slot_files("B", files)
        env = part.env()
        part.set_env(env | {"BOOT_ORDER": "B A", "BOOT_B_LEFT": "1"})
        device.power_on()
        device.expect(r"abupdate: booting (slot B|slot-B/)")
        device.expect(refusal)
        assert device.wait_booted() == Boot("A", "1.0.0"), name
        device.power_off()
        env = part.env()
        assert env["BOOT_B_LEFT"] == "0" and env["BOOT_A_LEFT"] == "3", (name, env)


def test_unsigned_grub_is_refused_by_the_firmware(qemu_only: Device, tmp_path: Path) -> None:
    """Flow 5 (UEFI): GRUB without its db signature; the firmware refuses it and says it
    has nothing to boot, which ends the wait at once."""
    device = qemu_only
    if device.board.bootloader != "grub":
        pytest.skip("UEFI Secure Boot: amd64 only")
    part = BootPartition(device.disk, device.board)
    grub = tmp_path / "BOOTX64.EFI"
    grub.write_bytes(part.read("EFI/BOOT/BOOTX64.EFI"))
    unsigned_grub = tmp_path / "unsigned.efi"
    unsigned_grub.write_bytes(grub.read_bytes())
    subprocess.run(["sbattach", "--remove", str(unsigned_grub)], check=True, capture_output=True)
    part.write("EFI/BOOT/BOOTX64.EFI", unsigned_grub.read_bytes())
    device.power_on()
    with pytest.raises(NoBootableOption):
        device.wait_booted()
    assert "Access Denied" in device.con.log
    assert "abupdate: booting" not in device.con.log
