"""The command-line boundary the three tools share (`bootctl.cliboundary.run_cli`)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bootctl import exitstatus
from bootctl.cliboundary import run_cli
from tests.helpers.pipes import closed_pipe_run

REPO = Path(__file__).resolve().parent.parent


class Refused(Exception):
    pass


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tool")
    p.add_argument("--json", action="store_true")
    return p


def call(run: Callable[[argparse.Namespace], None], *argv: str) -> int:
    return run_cli(parser(), run, [(Refused, exitstatus.REFUSED)], list(argv))


def test_a_known_error_is_one_line_and_its_status(capsys: pytest.CaptureFixture[str]) -> None:
    def run(args: argparse.Namespace) -> None:
        raise Refused("not today")

    assert call(run) == exitstatus.REFUSED
    assert capsys.readouterr().err == "tool: error: not today\n"
    assert call(run, "--json") == exitstatus.REFUSED
    out = capsys.readouterr().out
    assert json.loads(out) == {"error": "not today", "exit_status": exitstatus.REFUSED}


def test_a_bug_is_one_line_and_status_1_without_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def run(args: argparse.Namespace) -> None:
        raise KeyError("two\nlines")

    assert call(run, "--json") == exitstatus.INTERNAL
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith(
        "tool: error: internal error (a bug: please report it): KeyError"
    )
    assert json.loads(captured.out)["exit_status"] == exitstatus.INTERNAL


def test_a_broken_pipe_other_than_the_output_is_a_failure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Only a reader that went away is quiet: a helper's pipe breaking is not success."""

    def run(args: argparse.Namespace) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    assert call(run) == exitstatus.INTERNAL
    assert "BrokenPipeError" in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_130(capsys: pytest.CaptureFixture[str]) -> None:
    def run(args: argparse.Namespace) -> None:
        raise KeyboardInterrupt

    assert call(run) == exitstatus.INTERRUPTED == 130
    assert capsys.readouterr().err == "tool: error: interrupted\n"


def test_a_closed_pipe_ends_the_output_quietly(tmp_path: Path) -> None:
    """`bundle-tool ... | head -1`, `abctl status | head -1`: the command ran; no traceback."""
    r = closed_pipe_run("bundle_tool.cli", "keygen", "-o", str(tmp_path / "keys"))
    assert (r.returncode, r.stderr) == (0, "")
    assert (tmp_path / "keys" / "ca.pem").is_file()
    env = tmp_path / "fw_env.config"
    env.write_text(f"{tmp_path / 'uboot.env'} 0x0 0x4000\n")
    board = REPO / "board-configs" / "qemu-arm64-uboot.toml"
    r = closed_pipe_run("bootctl.cli", "--board", str(board), "--env-config", str(env), "print-env")
    assert r.returncode == 0
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr


def test_a_library_warning_does_not_break_the_one_line_reason() -> None:
    """Run as a real process: pytest would catch the warning itself."""
    script = """
import argparse, sys, warnings
from bootctl.cliboundary import run_cli
def run(args):
    warnings.warn("attribute's length must be >= 1", UserWarning)
    raise ValueError("the reason")
sys.exit(run_cli(argparse.ArgumentParser(prog="tool"), run, [(ValueError, 5)], []))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stderr) == (5, "tool: error: the reason\n")
