"""The serial target's power switch: a configured command run with `on` and `off`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from tests.qemu.target import PowerCommand


def recorder(tmp_path: Path) -> tuple[str, Path]:
    """A shell command that appends its arguments to a file, and that file."""
    out = tmp_path / "switched"
    return f"sh -c 'echo \"$@\" >> {shlex.quote(str(out))}' power", out


def test_action_replaces_the_placeholder(tmp_path: Path) -> None:
    command, out = recorder(tmp_path)
    power = PowerCommand(command + " port=2 {action}")
    power("on")
    power("off")
    assert out.read_text() == "port=2 on\nport=2 off\n"


def test_action_is_appended_without_a_placeholder(tmp_path: Path) -> None:
    command, out = recorder(tmp_path)
    PowerCommand(command)("off")
    assert out.read_text() == "off\n"


def test_a_failing_switch_names_the_command_and_its_output() -> None:
    failing = f"{shlex.quote(sys.executable)} -c 'import sys; sys.exit(\"relay not found\")'"
    with pytest.raises(RuntimeError, match=r"exited 1: relay not found"):
        PowerCommand(failing)("on")
