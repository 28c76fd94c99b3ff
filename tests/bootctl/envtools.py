"""Helpers that drive the real environment tools (libubootenv-tool, grub-common, u-boot-tools)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a tool, failing the test with its stderr if it fails."""
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{cmd[0]} failed ({result.returncode}): {result.stderr}"
    return result


def fw_printenv(config: Path) -> dict[str, str]:
    """All variables as `fw_printenv -c CONFIG` prints them."""
    out = run("fw_printenv", "-c", config).stdout
    env = {}
    for line in out.splitlines():
        name, _, value = line.partition("=")
        env[name] = value
    return env


def fw_setenv(config: Path, name: str, value: str) -> None:
    """`fw_setenv -c CONFIG NAME VALUE`."""
    run("fw_setenv", "-c", config, name, value)


def grub_editenv_list(path: Path) -> dict[str, str]:
    """Variables as `grub-editenv FILE list` prints them (values with newlines are not split)."""
    out = run("grub-editenv", path, "list").stdout
    env = {}
    for line in out.splitlines():
        name, _, value = line.partition("=")
        env[name] = value
    return env


def write_config(path: Path, *lines: str) -> Path:
    """Write an `fw_env.config` file."""
    path.write_text("".join(line + "\n" for line in lines))
    return path


class Crash(Exception):
    """Raised by `CrashAt` to simulate power loss."""


class CrashAt:
    """Fault hook for `atomic_write`: "loses power" before its `at`-th step (counting from 0)."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.calls = 0

    def __call__(self, step: str) -> None:
        if self.calls == self.at:
            raise Crash(step)
        self.calls += 1
