"""An environment write killed between its rename and its directory's fsync, then a re-run.

`abctl` and the updater replace an environment file by rename and then fsync its
directory. A process killed (`kill -9`, a crash) between the two leaves the new
file visible, read back from the page cache, but not durable: a power cut before
the next sync of that directory brings the old one back. An install killed
there in step 3 (making slot B unbootable) left an environment that already
*reads* as "B unbootable"; the next install then skipped that write, as one
that changes nothing, and wrote B while the durable environment still gave B
its old root hash and tries. A power cut meanwhile then booted a half-written B.

A change that writes nothing must still make what it read durable. Both file
environments are checked: a U-Boot single-copy file and a GRUB block.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bundle_tool import keygen
from tests.updater.device import BOARD, GRUB_BOARD, Device, image_bytes, make_device
from tests.updater.faults import Power, PowerCut
from tests.updater.test_powercut import TUNING, bootable_slots_verify
from updater.filesource import FileSource
from updater.install import Installer

BLOCKS = 1200


class Killed(BaseException):
    """The process died (kill -9) at a step of an environment write."""


def _kill_at_dir_fsync(step: str) -> None:
    if step == "fsync-dir":
        raise Killed(step)


@pytest.fixture(scope="module", params=[BOARD, GRUB_BOARD], ids=["uboot", "grub"])
def template(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pki: keygen.DevPki
) -> tuple[Device, Path]:
    root = tmp_path_factory.mktemp("template")
    device = make_device(
        root / "device",
        pki,
        image_bytes(BLOCKS, seed=1),
        b_image=image_bytes(BLOCKS, seed=3),  # B holds an older release, bootable after A
        board=request.param,
        state_dir="var/abupdate",  # not next to the environment file
    )
    bundle = root / "update.bundle"
    device.bundle(image_bytes(BLOCKS, seed=2), security_version=3).rename(bundle)
    return device, bundle


def test_a_rerun_makes_an_unsynced_invalidation_durable(
    tmp_path: Path, template: tuple[Device, Path]
) -> None:
    source_device, bundle = template
    counting = Power()
    device = Device(tmp_path / "count", source_device.pki, source_device.board)
    shutil.copytree(source_device.root, device.root)
    with counting.watch_entries(device.root):
        _install(device, bundle, counting, kill=False)
    writes = counting.kinds.count("write")
    assert writes > 4
    for budget in range(1, writes, max(1, writes // 6)):
        device = Device(tmp_path / f"cut{budget}", source_device.pki, source_device.board)
        shutil.copytree(source_device.root, device.root)
        power = Power()
        with power.watch_entries(device.root):
            # The first install dies right after renaming the invalidated environment.
            with pytest.raises(Killed):
                _install(device, bundle, Power(), kill=True)
            # The second runs until the power goes, after some slot writes.
            power.budget = power.events + budget
            with pytest.raises(PowerCut):
                _install(device, bundle, power, kill=False)
        # Slot B is half-written: the environment must not let it boot.
        assert bootable_slots_verify(device) == "A", budget


def _install(device: Device, bundle: Path, power: Power, *, kill: bool) -> None:
    control = device.control()
    if kill:
        control.store._fault = _kill_at_dir_fsync  # type: ignore[attr-defined]
    inst = Installer(device.config(), control=control, open_slot=power.opener(), tuning=TUNING)
    with FileSource(bundle) as src:
        inst.install(src, delta=False)
