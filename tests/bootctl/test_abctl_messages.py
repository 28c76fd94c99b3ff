"""What `abctl` says: one line for each change, the refusal's words, every status in --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bootctl.cli import main
from tests.bootctl.test_abctl_cli import VERITY, env  # noqa: F401 - the fixture

BOOTED = "A"  # the `env` fixture's command line


def test_set_verity_says_what_it_recorded_or_cleared(
    env: list[str],  # noqa: F811 - the fixture
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([*env, "init"]) == 0
    capsys.readouterr()
    assert main([*env, "set-verity", "B", VERITY]) == 0
    assert capsys.readouterr().out == "recorded the verity value of slot B\n"
    assert main([*env, "set-verity", "B", ""]) == 0
    assert capsys.readouterr().out == "cleared the verity value of slot B\n"


def test_set_primary_of_the_booted_slot_is_refused_in_its_own_words(
    env: list[str],  # noqa: F811 - the fixture
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([*env, "init", "--verity", f"{BOOTED}={VERITY}"]) == 0
    capsys.readouterr()
    assert main([*env, "set-primary", BOOTED]) == 5
    assert capsys.readouterr().err == (
        f"abctl: error: refusing to make the booted slot {BOOTED} primary (--force overrides)\n"
    )


def test_help_lists_every_case_of_status_2_and_the_signal(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bootctl.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    text = " ".join(out.split())
    assert "set-primary without a verity value" in text
    assert "naming a device that does not exist (init)" in text
    assert "\n  130  interrupted by SIGINT (Ctrl-C)\n" in out
