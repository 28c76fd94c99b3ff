"""Power cuts at every write, flush and environment save of an install.

Each sweep starts from one of two devices: slot B empty (freshly flashed) or
slot B holding an older, verified release that would boot if A failed. After
each cut, every slot the boot logic could boot (tries left and a root hash
recorded) must pass `veritysetup verify` with that root hash, not only the one
it picks first: a B being rewritten while still bootable would fail here. A cut
also loses the directory entries (new directories, renames) whose directory was
not fsynced, as on a device whose state directory the install creates. The
old slot is picked until the final environment save, B from right after it on,
and running the install again must complete. Once B is picked, marking it good
raises the anti-rollback floor to its security version.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from bootctl.state import SlotVerity, parse_state, select_boot
from bundle_tool import bootkeys, keygen
from bundle_tool.errors import PolicyError
from tests.helpers.boards import signed_fit
from tests.updater.device import (
    BUILD_TIME,
    GROUP_BLOCKS,
    OLD_FIT,
    Device,
    fit_device,
    group_bundle,
    image_bytes,
    make_device,
    veritysetup_verify,
)
from tests.updater.faults import Power, PowerCut
from updater.filesource import FileSource
from updater.install import Installer, InstallResult, InstallTuning
from updater.statedir import StateDir

BLOCKS = 1200
START = {"fresh": None, "bootable-b": 3}  # slot B: empty, or an older release (image seed)
SECURITY_VERSION = 3  # of the bundle installed
# Flush often so that a cut keeps some progress and a resume has something to reuse.
TUNING = InstallTuning(flush_every=256 * 4096, batch_groups=2)


@dataclass(frozen=True)
class Start:
    """A device to copy for every cut, and the bundle to install on it."""

    template: Device
    bundle: Path
    new: bytes


@pytest.fixture(scope="module", params=list(START))
def start(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pki: keygen.DevPki
) -> Start:
    seed = START[request.param]
    root = tmp_path_factory.mktemp(request.param)
    template = make_device(
        root / "template",
        pki,
        image_bytes(BLOCKS, seed=1),
        b_image=None if seed is None else image_bytes(BLOCKS, seed=seed),
        # Not next to the environment file, whose replacement fsyncs its directory.
        state_dir="var/abupdate",
    )
    new = image_bytes(BLOCKS, seed=2)
    bundle = root / "update.bundle"
    template.bundle(new, security_version=SECURITY_VERSION).rename(bundle)
    return Start(template, bundle, new)


def copy_device(start: Start, root: Path) -> Device:
    shutil.copytree(start.template.root, root)
    return Device(root, start.template.pki)


def bootable_slots_verify(device: Device) -> str:
    """Check every slot the boot logic could boot; return the one it picks first."""
    ctl = device.control()
    env = ctl.env()
    bootable = [s for s in parse_state(env, ctl.board.slot_names).slots if s.tries and s.verity_raw]
    for s in bootable:
        r = veritysetup_verify(device.slot(s.name), SlotVerity.from_env(s.verity_raw))
        assert r.returncode == 0, f"slot {s.name} would boot but does not verify: {r.stderr!r}"
    needs = ctl.board.boot.env_verity_boots
    decision = select_boot(env, ctl.board.slot_names, ctl.board.tries, needs_verity=needs)
    assert decision.slot is not None, "no slot would boot"
    return decision.slot


def run_install(device: Device, bundle: Path, power: Power, delta: bool | None) -> InstallResult:
    config = device.config()
    control = power.watch_env(device.control())
    inst = Installer(config, control=control, open_slot=power.opener(), tuning=TUNING)
    power.watch_state(inst.state)
    with power.watch_entries(device.root), FileSource(bundle) as src:
        return inst.install(src, delta=delta)


@pytest.mark.parametrize("delta", [False, True], ids=["stream", "delta"])
def test_power_cut_after_every_event(tmp_path: Path, start: Start, delta: bool) -> None:
    counting = Power()
    counted = run_install(copy_device(start, tmp_path / "count"), start.bundle, counting, delta)
    total = counting.events
    assert total > 10
    # The switch is the last environment save. Just before it the slot's record is
    # written, and after it only the install's result.
    switch = len(counting.kinds) - counting.kinds[::-1].index("env")
    after = ["state slots.json", "env", "state last-install.json"]
    assert counting.kinds[switch - 2 :] == after, counting.kinds
    resumed_with_reuse = 0
    for budget in range(total + 1):
        device = copy_device(start, tmp_path / f"cut{budget}")
        with pytest.raises(PowerCut):
            run_install(device, start.bundle, Power(budget), delta)
        # Before the switch the old slot boots first; from right after it, B.
        assert bootable_slots_verify(device) == ("B" if budget >= switch else "A"), budget
        records = Installer(device.config()).installed()
        if budget >= switch:
            assert device.slot("B").read_bytes()[: len(start.new)] == start.new
            assert "B" in records, f"slot B boots with no slot record (cut {budget})"
            # B's record counts: booted and marked good, B raises the floor to its version.
            assert records["B"].security_version == SECURITY_VERSION, budget
            device.boot("B")
            r = device.cli("mark-good")
            assert r.returncode == 0, r.stderr
            assert StateDir(device.config().state_dir).security_floor() == SECURITY_VERSION
            continue
        # B's new record does not count without the switch (a cut right before it).
        assert "B" not in records or records["B"].root_hash != counted.root_hash, budget
        # Run again as a user would, with no delta option: a file resumes by itself.
        again = run_install(device, start.bundle, Power(), delta=None)
        if again.bytes_reused:
            resumed_with_reuse += 1
        assert bootable_slots_verify(device) == "B"
        assert device.slot("B").read_bytes()[: len(start.new)] == start.new
        assert Installer(device.config()).installed()["B"].root_hash == again.root_hash
    # Cuts after the first flushes keep work that the next run reuses.
    assert resumed_with_reuse > total // 3, (resumed_with_reuse, total)


POLICY_REFUSALS = {
    "wrong compatible": "this device is 'qemu-arm64-uboot'",
    "expired": "expired on",
    "downgrade": "below this device's anti-rollback floor 5",
}


@pytest.mark.parametrize("case", list(POLICY_REFUSALS))
def test_policy_refusal_comes_before_any_event(tmp_path: Path, start: Start, case: str) -> None:
    """A refused bundle gives a power cut nothing to interrupt but the record of the refusal."""
    device = copy_device(start, tmp_path / "device")
    image = image_bytes(BLOCKS, seed=5)
    if case == "wrong compatible":
        bundle = device.bundle(image, "refused.bundle", compatible="other-board")
    elif case == "expired":
        bundle = device.bundle(image, "refused.bundle", expires=BUILD_TIME + 1)
    else:
        StateDir(device.config().state_dir).raise_floor(5)
        bundle = device.bundle(image, "refused.bundle", security_version=4)
    before = device.snapshot(target=True)
    power = Power()
    with pytest.raises(PolicyError, match=POLICY_REFUSALS[case]):
        run_install(device, bundle, power, delta=False)
    assert power.kinds == ["state last-install.json"], "a refused install wrote more"
    assert device.snapshot(target=True) == before


def test_power_cut_during_the_boot_file_write(
    tmp_path: Path, pki: keygen.DevPki, boot_keys: bootkeys.DevBootKeys
) -> None:
    """A rootfs and a signed FIT: a cut at any event, the boot file's too, leaves A booting.

    Slot B's boot folder holds an older boot image. Until the final environment
    save, A boots and B's `boot.itb` is whole (the old one or the new one, never
    a part); from the save on, B boots with the new FIT. A run after the cut
    completes.
    """
    fit = signed_fit(tmp_path, boot_keys.fit, "3.0.0")
    template = fit_device(tmp_path / "template", pki)
    bundle = group_bundle(template, fit, security_version=SECURITY_VERSION)
    new_rootfs = image_bytes(GROUP_BLOCKS, seed=2)

    def run(device: Device, power: Power) -> InstallResult:
        control = power.watch_env(device.control())
        inst = Installer(
            device.config(),
            control=control,
            open_slot=power.opener(),
            open_boot_dir=power.boot_dir_opener(),
            tuning=TUNING,
        )
        power.watch_state(inst.state)
        with FileSource(bundle) as src:
            return inst.install(src, delta=False)

    start = Start(template, bundle, new_rootfs)
    counting = Power()
    run(copy_device(start, tmp_path / "count"), counting)
    kinds = counting.kinds
    boot_events = [i for i, k in enumerate(kinds) if k.startswith("boot ")]
    assert {"boot write", "boot sync", "boot sync-dir", "boot rename"} <= set(kinds), kinds
    switch = len(kinds) - kinds[::-1].index("env")
    assert max(boot_events) < switch - 2, "the boot file is written before the switch"
    for budget in range(len(kinds) + 1):
        device = copy_device(start, tmp_path / f"cut{budget}")
        with pytest.raises(PowerCut):
            run(device, Power(budget))
        boot_image = (device.boot_dir("B") / "boot.itb").read_bytes()
        if budget < switch:
            assert bootable_slots_verify(device) == "A", budget
            assert boot_image in (OLD_FIT, fit.read_bytes()), budget
            run(device, Power())
        assert bootable_slots_verify(device) == "B", budget
        assert (device.boot_dir("B") / "boot.itb").read_bytes() == fit.read_bytes(), budget
        assert device.slot("B").read_bytes()[: len(new_rootfs)] == new_rootfs
