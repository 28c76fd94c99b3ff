"""The shipped systemd unit that runs mark-good after boot-complete.target."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from bootctl.control import LOADER_IMAGE_ID
from tests.bootctl.paths import REPO

UNIT = REPO / "bootctl" / "systemd" / "abctl-mark-good.service"


def test_unit_is_ordered_after_boot_complete() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    unit = parser["Unit"]
    assert "boot-complete.target" in unit["After"].split()
    assert unit["Requires"] == "boot-complete.target"
    # Either chain's mark of an abupdate boot: the slot on the command line (script, FIT),
    # or systemd-stub's record of the UKI it started (a UKI's command line is fixed).
    assert unit["ConditionKernelCommandLine"] == "|abupdate.slot"
    assert unit["ConditionPathExists"] == "|" + str(LOADER_IMAGE_ID)
    assert parser["Service"]["Type"] == "oneshot"
    assert parser["Service"]["ExecStart"].rstrip("'").endswith("exec abctl mark-good")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = tmp_path / UNIT.name  # ExecStart runs /bin/sh, which finds the tools on PATH
    unit.write_text(UNIT.read_text())
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "abctl-mark-good" not in result.stderr
