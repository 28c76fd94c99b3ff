"""One install at a time: a second `updater install` or `mark-good` is refused while one runs.

The first install is a real child process, held at its start by a pipe that
brings the bundle; the second is another child process.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.updater.device import Device, image_bytes
from tests.updater.pipedinstall import PipedInstall
from updater.statedir import LAST_FILE

EXIT_BUSY = 8


def test_a_second_install_is_refused_while_one_runs(device: Device) -> None:
    bundle = device.bundle(image_bytes(300, seed=2), version="3.2.0")
    first = PipedInstall(device, bundle)
    first.wait_for_lock()
    before = device.snapshot(target=True)
    for args in (["install", str(bundle)], ["install", "--json", str(bundle)], ["mark-good"]):
        second = device.cli(*args)
        assert second.returncode == EXIT_BUSY, second.stderr
        (line,) = second.stderr.splitlines()
        assert f"(pid {first.proc.pid})" in line and "another install or mark-good" in line
        assert not (device.config().state_dir / LAST_FILE).exists()  # the first one's to write
    assert device.snapshot(target=True) == before
    first.send_rest()
    status, events, stderr = first.finish()
    assert status == 0, stderr
    assert events[-1]["event"] == "result" and events[-1]["version"] == "3.2.0"
    # Free again once the first ended.
    device.boot("B")
    assert device.cli("mark-good").returncode == 0


@pytest.mark.parametrize("when", ["head", "data"])
def test_the_lock_of_a_killed_install_is_taken_over(device: Device, when: str) -> None:
    """Killed while it reads the head, or while it writes (its forked helpers running)."""
    bundle = device.bundle(image_bytes(600, seed=2), version="3.2.0")
    first = PipedInstall(device, bundle)
    first.wait_for_lock()
    if when == "data":
        first.feed(len(first.data) - 50 * 4096)  # two of three 1 MiB spans
        first.wait_for_phase("data")
    os.killpg(first.proc.pid, signal.SIGKILL)  # no chance to clean up
    first.finish()
    assert first.lock.read_text().strip() == str(first.proc.pid)  # the dead holder's pid stays
    second = device.cli("install", str(bundle))
    assert second.returncode == 0, second.stderr
    assert "installed 3.2.0 into slot B" in second.stdout
