"""The wall clock set during an install (NTP on a device that booted with no time).

The result's `seconds` is how long the install took: the wall clock stepping
forward by decades (a board whose clock starts at 1970) or back must not make
it negative or decades long. The dates recorded (`at`, `installed_at`) stay on
the wall clock.
"""

from __future__ import annotations

import time

import pytest

from tests.updater.device import Device, image_bytes
from updater.filesource import FileSource
from updater.install import Installer
from updater.statedir import StateDir

STEP = 1_000_000_000.0  # about 32 years


@pytest.mark.parametrize("step", [STEP, -STEP], ids=["forward", "back"])
def test_a_clock_set_mid_install_does_not_change_its_duration(device: Device, step: float) -> None:
    bundle = device.bundle(image_bytes(300, seed=2), version="3.2.0")
    calls = [0]
    now = time.time()

    def clock() -> float:
        calls[0] += 1  # the first reading starts the install; later ones come after the step
        return now + (0 if calls[0] <= 2 else step)

    with FileSource(bundle) as src:
        result = Installer(device.config(), clock=clock).install(src, delta=False)
    assert calls[0] > 2, "the clock was not read after the start"
    assert 0 <= result.seconds < 600, result.seconds
    last = StateDir(device.config().state_dir).last_result()
    assert last is not None and 0 <= last["seconds"] < 600
