"""A cut install of one bundle, then an install of another: the slot holds exactly the second.

An interrupted install leaves its tree and some of its data on the target. A
later install of a *different* bundle (the same image with blocks changed, a
shorter or longer one, one shifted by a few blocks) must keep only blocks that
verify against its own signed tree, and end with exactly its image in the slot,
bootable and verified, whichever path it takes (a file resumes by itself when
the target holds its tree, `--delta` keeps what verifies).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from bundle_tool import keygen
from tests.updater.device import Device, image_bytes, make_device
from tests.updater.faults import Power, PowerCut
from tests.updater.test_powercut import bootable_slots_verify, run_install

BLOCKS = 1200


def _variants(x: bytes) -> dict[str, bytes]:
    rnd = random.Random(5)
    changed = bytearray(x)
    for i in rnd.sample(range(BLOCKS), 100):
        changed[i * 4096 : (i + 1) * 4096] = rnd.randbytes(4096)
    return {
        "changed": bytes(changed),
        "shorter": x[: 900 * 4096],
        "longer": x + image_bytes(300, seed=9),
        "shifted": image_bytes(5, seed=11) + x[: (BLOCKS - 5) * 4096],
    }


@pytest.fixture(scope="module")
def template(
    tmp_path_factory: pytest.TempPathFactory, pki: keygen.DevPki
) -> tuple[Device, Path, dict[str, tuple[bytes, Path]]]:
    root = tmp_path_factory.mktemp("other-bundle")
    device = make_device(
        root / "device",
        pki,
        image_bytes(BLOCKS, seed=1),
        b_image=image_bytes(BLOCKS, seed=3),
        state_dir="var/abupdate",
    )
    x = image_bytes(BLOCKS, seed=2)
    first = device.bundle(x, "first.bundle", version="3.0.0")
    others = {
        name: (data, device.bundle(data, f"other-{name}.bundle", version="3.1.0"))
        for name, data in _variants(x).items()
    }
    return device, first, others


@pytest.mark.parametrize("first_delta", [False, True], ids=["first-stream", "first-delta"])
def test_another_bundle_after_a_cut_installs_exactly_its_image(
    tmp_path: Path,
    template: tuple[Device, Path, dict[str, tuple[bytes, Path]]],
    first_delta: bool,
) -> None:
    source, first, others = template
    counting = Power()
    device = Device(tmp_path / "count", source.pki)
    shutil.copytree(source.root, device.root)
    run_install(device, first, counting, first_delta)
    for budget in range(0, counting.events, 9):
        for name, (data, bundle) in others.items():
            for delta in (None, True):
                device = Device(tmp_path / f"cut{budget}-{name}-{delta}", source.pki)
                shutil.copytree(source.root, device.root)
                with pytest.raises(PowerCut):
                    run_install(device, first, Power(budget), first_delta)
                assert bootable_slots_verify(device) == "A", (budget, name)
                run_install(device, bundle, Power(), delta)
                held = device.slot("B").read_bytes()[: len(data)]
                assert held == data, (budget, name, delta)
                assert bootable_slots_verify(device) == "B", (budget, name, delta)
                shutil.rmtree(device.root)
