"""Each `updater` command's --help says what its --json prints."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.updater.device import REPO


@pytest.mark.parametrize(
    ("command", "prints"),
    [
        ("install", "one JSON object per line, the progress lines then the result"),
        ("status", "the status as one JSON object on one line"),
        ("mark-good", "the slot marked good and the floor in force as one JSON object"),
    ],
)
def test_json_help_says_what_the_command_prints(command: str, prints: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "updater.cli", command, "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    text = " ".join(r.stdout.split())
    assert f"--json JSON output: {prints}" in text, text
