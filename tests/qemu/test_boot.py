"""The device images boot through bootctl's scripts into a dm-verity root and count tries.

Falling back when a slot fails its verity check is tested in test_flows (tampered slot).
"""

from __future__ import annotations

import pytest

from tests.qemu.device import Boot, Device

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
