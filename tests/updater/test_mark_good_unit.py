"""The shipped `abctl-mark-good.service` raises the anti-rollback floor where the updater is.

Its ExecStart line is run as systemd would run it (joined and unescaped, with the
unit's Environment=, the commands on the search path), with `updater` and `abctl`
on that path being the real tools told this test device's configuration files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bootctl.test_mark_good_unit import exec_start, unit_environment
from tests.updater.device import REPO, Device, image_bytes
from updater import installlock
from updater.filesource import FileSource
from updater.install import Installer
from updater.statedir import StateDir


def tools(device: Device, bin_dir: Path, names: tuple[str, ...]) -> None:
    """`updater` and `abctl` on the search path: the real ones, with this device's files."""
    config = device.config()
    env_config = device.root / "fw_env.config"
    env_config.write_text(f"{device.env_file} 0x0000 0x4000\n")
    lines = {
        "updater": f'-m updater.cli "$@" --config {device.config_path}',
        "abctl": f"-m bootctl.cli --board {device.board} --env-config {env_config} "
        f'--cmdline {config.cmdline} "$@"',
    }
    bin_dir.mkdir()
    for name in names:
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\nexec {sys.executable} {lines[name]}\n")
        script.chmod(0o755)


def booted_b_after_install(device: Device) -> None:
    """Install a bundle of security version 4 into B and boot it: its boot script took
    one of its tries (BOOT_B_LEFT 2), which mark-good gives back."""
    bundle = device.bundle(image_bytes(300, seed=9), security_version=4)
    with FileSource(bundle) as src:
        Installer(device.config()).install(src)
    device.boot("B")
    ctl = device.control()
    ctl.store.save({**ctl.env(), "BOOT_B_LEFT": "2"})


@pytest.mark.parametrize(("installed", "floor"), [(("updater", "abctl"), 4), (("abctl",), 0)])
def test_the_units_command_marks_good_and_stores_the_floor(
    device: Device, tmp_path: Path, installed: tuple[str, ...], floor: int
) -> None:
    booted_b_after_install(device)
    tools(device, tmp_path / "bin", installed)
    env = {**os.environ, **unit_environment(), "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    r = subprocess.run(exec_start(), env=env, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert device.control().env()["BOOT_B_LEFT"] == "3"
    # Only the updater knows the floor: without it, abctl restores the tries alone.
    assert StateDir(device.config().state_dir).security_floor() == floor


@pytest.mark.timeout(120)
def test_the_unit_waits_for_an_install_holding_the_lock_then_marks_good(
    device: Device, tmp_path: Path
) -> None:
    booted_b_after_install(device)
    tools(device, tmp_path / "bin", ("updater", "abctl"))
    env = {
        **os.environ,
        **unit_environment(),
        "ABUPDATE_BUSY_PAUSE": "1",
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
    }
    with installlock.held(device.config().state_dir, "install"):
        unit = subprocess.Popen(
            exec_start(),
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert unit.stderr is not None
        refusal = unit.stderr.readline()  # the updater's own, exit 8
        assert "updater: error:" in refusal and str(os.getpid()) in refusal
        waiting = unit.stderr.readline()
        assert waiting == "updater mark-good: busy; trying again every 1 s for up to 3600 s\n"
        assert device.control().env()["BOOT_B_LEFT"] == "2"  # nothing done while busy
    _, rest = unit.communicate()
    assert unit.returncode == 0, rest
    assert device.control().env()["BOOT_B_LEFT"] == "3"
    assert StateDir(device.config().state_dir).security_floor() == 4
