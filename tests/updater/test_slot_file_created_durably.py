"""A slot that is a plain file the install creates keeps its name after a power cut.

On a device on plain files (docs/examples/device-files.toml, QEMU image builds)
the first install into a slot may create its file. Its data was flushed, but
not its directory, so a power cut after the switch could leave an environment
that boots slot B and no file named B at all.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bundle_tool import keygen
from tests.updater.device import Device, image_bytes, make_device
from tests.updater.faults import DirectoryEntries, Power, PowerCut
from tests.updater.test_powercut import TUNING, bootable_slots_verify
from updater.filesource import FileSource
from updater.install import Installer
from updater.slotdev import FileSlot

BLOCKS = 600


def test_a_slot_file_made_by_the_install_survives_a_cut_after_the_switch(
    tmp_path: Path, pki: keygen.DevPki
) -> None:
    device = make_device(tmp_path / "device", pki, image_bytes(BLOCKS, seed=1))
    # Slot B's file lives in a folder of its own (not the environment's, whose
    # replacement fsyncs that folder) and does not exist yet.
    (device.root / "slots").mkdir()
    device.slot("B").unlink()
    text = device.config_path.read_text().replace('"slot-B.img"', '"slots/slot-B.img"')
    device.config_path.write_text(text)
    bundle = device.bundle(image_bytes(BLOCKS, seed=2), version="3.2.0")
    counting = Power()
    _install(Device(device.root, pki), bundle, counting, watch=False)
    assert (device.root / "slots" / "slot-B.img").exists()
    # Again from the start, and cut right after the last event (the switch is made).
    (device.root / "slots" / "slot-B.img").unlink()
    device.control().invalidate("B")
    power = Power(counting.events)
    with pytest.raises(PowerCut):
        _install(device, bundle, power, watch=True)
    assert (device.root / "slots" / "slot-B.img").exists(), "slot B's file is gone"
    moved = Device(device.root, pki)
    moved.slot = lambda name: device.root / ("slots/slot-B.img" if name == "B" else "slot-A.img")  # type: ignore[method-assign]
    assert bootable_slots_verify(moved) == "B"


def _install(device: Device, bundle: Path, power: Power, *, watch: bool) -> None:
    inst = Installer(
        device.config(), control=device.control(), open_slot=power.opener(), tuning=TUNING
    )
    power.watch_state(inst.state)
    power.watch_env(inst.control)
    with FileSource(bundle) as src:
        if watch:
            with power.watch_entries(device.root):
                inst.install(src, delta=False)
        else:
            inst.install(src, delta=False)


def test_a_slot_file_left_by_a_killed_first_open_is_made_durable(tmp_path: Path) -> None:
    """A first install killed between creating the slot's file and fsyncing its folder
    leaves a file whose name a cut may take back; the next install finds it there."""
    path = tmp_path / "slots" / "slot-B.img"
    path.parent.mkdir()
    entries = DirectoryEntries(tmp_path)
    with entries.watching():
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # the killed run's create
        with FileSlot(str(path)) as slot:
            slot.pwrite(0, b"\0" * 4096)
            slot.flush()
    entries.lose_unsynced()  # the power goes
    assert path.exists(), "slot B's file is gone"
