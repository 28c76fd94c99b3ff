"""The device images boot through bootctl's scripts into a dm-verity root, count tries and
fall back to the other slot when a slot's verity check fails."""

from __future__ import annotations

import pytest

from tests.qemu.device import INITRAMFS_FAILED, Boot, Device

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def test_boots_slot_a_on_a_verity_root(device: Device) -> None:
    device.power_on()
    boot = device.wait_booted()
    assert boot == Boot("A", "1.0.0")
    assert device.booted_slot() == "A"
    status = device.verity_root()
    assert "data device: /dev/vda2" in status
    env = device.env()
    verity = env["BOOT_A_VERITY"]
    root_hash, _, blocks = verity.split(":")
    assert f"root hash:   {root_hash}" in status
    # The hash area starts right after the data; status counts from the tree, which follows
    # the 4096-byte verity superblock.
    assert f"hash offset: {int(blocks) * 8 + 8} sectors" in status
    assert env.get("BOOT_B_VERITY", "") == ""
    assert "VERSION_ID=1.0.0" in device.sh("cat /etc/os-release")
    # The image marks the slot good at boot: its tries are back to the board's 3.
    assert env["BOOT_A_LEFT"] == "3"
    assert "booted A" in device.sh("updater status")


def test_boot_script_decrements_and_saves_the_counter(device: Device) -> None:
    device.power_on()
    device.wait_booted()
    # Hold mark-good (flag on the boot partition), then reboot twice: each boot costs a try.
    device.sh(f"touch {device.boot_mount}/abupdate/no-mark-good && sync")
    for left in ("2", "1"):
        device.reboot()
        assert device.wait_booted().slot == "A"
        env = device.env()
        assert env["BOOT_A_LEFT"] == left, env
        assert env["BOOT_B_LEFT"] == "3", env
        assert env["BOOT_ORDER"] == "A B", env
    device.sh(f"rm {device.boot_mount}/abupdate/no-mark-good && updater mark-good")
    assert device.env()["BOOT_A_LEFT"] == "3"


def test_corrupted_slot_is_refused_and_the_other_slot_boots(device: Device) -> None:
    device.power_on()
    device.wait_booted()
    verity = device.env()["BOOT_A_VERITY"]
    # Slot B gets a copy of slot A (filesystem + hash tree) with one filesystem block
    # changed, and becomes primary with its verity parameters.
    device.sh("dd if=/dev/vda2 of=/dev/vda3 bs=1M conv=fsync 2>/dev/null", timeout=120)
    device.sh("printf 'XXXXXXXX' | dd of=/dev/vda3 bs=1 seek=0 conv=notrunc,fsync 2>/dev/null")
    device.sh(f"abctl set-primary --verity {verity} B && sync")
    assert device.env()["BOOT_ORDER"].startswith("B")
    device.reboot()
    # B is tried until its tries are used up; every try ends in the initramfs.
    for _ in range(3):
        m = device.expect(INITRAMFS_FAILED)
        assert "could not mount /dev/mapper/vroot" in m.group(1) or "veritysetup" in m.group(1)
    boot = device.wait_booted()
    assert boot.slot == "A"
    env = device.env()
    assert env["BOOT_B_LEFT"] == "0", env
    assert env["BOOT_A_LEFT"] == "3", env
    device.verity_root()
