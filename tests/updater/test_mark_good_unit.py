"""The shipped `abctl-mark-good.service` raises the anti-rollback floor where the updater is.

Its ExecStart line is run as systemd would run it (the command on the search
path), with `updater` and `abctl` on that path being the real tools told this
test device's configuration files.
"""

from __future__ import annotations

import configparser
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.updater.device import REPO, Device, image_bytes
from updater.filesource import FileSource
from updater.install import Installer
from updater.statedir import StateDir

UNIT = REPO / "bootctl" / "systemd" / "abctl-mark-good.service"


def exec_start() -> list[str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return shlex.split(parser["Service"]["ExecStart"])


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


@pytest.mark.parametrize(("installed", "floor"), [(("updater", "abctl"), 4), (("abctl",), 0)])
def test_the_units_command_marks_good_and_stores_the_floor(
    device: Device, tmp_path: Path, installed: tuple[str, ...], floor: int
) -> None:
    bundle = device.bundle(image_bytes(300, seed=9), security_version=4)
    with FileSource(bundle) as src:
        Installer(device.config()).install(src)
    device.boot("B")
    ctl = device.control()
    ctl.store.save({**ctl.env(), "BOOT_B_LEFT": "2"})  # the boot script took one try
    tools(device, tmp_path / "bin", installed)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    r = subprocess.run(exec_start(), env=env, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert device.control().env()["BOOT_B_LEFT"] == "3"
    # Only the updater knows the floor: without it, abctl restores the tries alone.
    assert StateDir(device.config().state_dir).security_floor() == floor
