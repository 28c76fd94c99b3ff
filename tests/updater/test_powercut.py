"""Power cuts at every write, flush and environment save of an install.

After each cut the boot logic (the same selection the U-Boot and GRUB scripts
make) must pick a slot that `veritysetup verify` accepts with the root hash the
environment holds, and running the install again must complete.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bootctl.state import SlotVerity, select_boot
from bundle_tool import keygen
from tests.updater.device import Device, image_bytes, make_device, veritysetup_verify
from tests.updater.faults import Power, PowerCut
from updater import install
from updater.filesource import FileSource
from updater.install import Installer

BLOCKS = 1200


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> keygen.DevPki:
    return keygen.make_dev_pki(tmp_path_factory.mktemp("pki"))


def booted_slot_verifies(device: Device) -> str:
    ctl = device.control()
    decision = select_boot(ctl.env(), ctl.board.slot_names, ctl.board.tries)
    assert decision.slot is not None, "no slot would boot"
    v = SlotVerity.from_env(ctl.env()[f"BOOT_{decision.slot}_VERITY"])
    r = veritysetup_verify(device.slot(decision.slot), v)
    assert r.returncode == 0, (decision.slot, r.stderr)
    return decision.slot


def run_install(device: Device, bundle: Path, power: Power, delta: bool) -> install.InstallResult:
    config = device.config()
    control = power.watch_env(device.control())
    inst = Installer(config, control=control, open_slot=power.opener())
    with FileSource(bundle) as src:
        return inst.install(src, delta=delta)


@pytest.mark.parametrize("delta", [False, True], ids=["stream", "delta"])
def test_power_cut_at_every_event(
    tmp_path: Path, pki: keygen.DevPki, monkeypatch: pytest.MonkeyPatch, delta: bool
) -> None:
    # Flush often so that a cut keeps some progress and a resume has something to reuse.
    monkeypatch.setattr(install, "FLUSH_EVERY", 256 * 4096)
    monkeypatch.setattr(install, "BATCH_GROUPS", 2)
    new = image_bytes(BLOCKS, seed=2)
    template = make_device(tmp_path / "template", pki, image_bytes(BLOCKS, seed=1))
    bundle = template.bundle(new)
    counting = Power()
    run_install(template, bundle, counting, delta)
    total = counting.events
    assert total > 10
    resumed_with_reuse = 0
    for budget in range(total):
        device = make_device(tmp_path / f"cut{budget}", pki, image_bytes(BLOCKS, seed=1))
        with pytest.raises(PowerCut):
            run_install(device, bundle, Power(budget), delta)
        slot = booted_slot_verifies(device)
        # Before the final switch the old slot boots; the switch is the very last event.
        assert slot == ("B" if budget >= total else "A")
        again = run_install(device, bundle, Power(), delta=True)
        if again.bytes_reused:
            resumed_with_reuse += 1
        assert booted_slot_verifies(device) == "B"
        assert device.slot("B").read_bytes()[: len(new)] == new
    # Cuts after the first flushes keep work that the next run reuses.
    assert resumed_with_reuse > total // 3, (resumed_with_reuse, total)
