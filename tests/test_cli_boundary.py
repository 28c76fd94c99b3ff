"""The command-line boundary the three tools share (`bootctl.cliboundary.run_cli`)."""

from __future__ import annotations

import argparse
import importlib
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


def test_a_reason_is_one_line_whatever_its_text_holds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A reason can carry a server's text: its newlines and escapes do not make more lines."""

    def run(args: argparse.Namespace) -> None:
        raise Refused("the server said:\r\nnot today\x1b[2J\u2028bye")

    assert call(run, "--json") == exitstatus.REFUSED
    captured = capsys.readouterr()
    assert captured.err == "tool: error: the server said: not today [2J bye\n"
    assert json.loads(captured.out)["error"] == "the server said: not today [2J bye"


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


def test_an_error_line_is_written_when_the_reader_closed_the_output(tmp_path: Path) -> None:
    """`... --json 2>err | head -0`: the JSON error cannot be written; standard error still
    gets the error's line, and the status is the error's."""
    missing = str(tmp_path / "missing")
    r = closed_pipe_run("bundle_tool.cli", "info", missing, "--json")
    assert r.returncode == exitstatus.USAGE
    assert r.stderr.startswith("bundle-tool: error: ") and r.stderr.count("\n") == 1
    r = closed_pipe_run("updater.cli", "status", "--config", missing, "--json")
    assert r.returncode == exitstatus.USAGE
    assert r.stderr.startswith("updater: error: ") and r.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("module", "argv", "usage"),
    [
        ("updater.cli", ["install", "x", "--config", "C", "--bogus"], "usage: updater install "),
        ("updater.cli", ["fleet", "poll", "--once", "--bogus"], "usage: updater fleet poll "),
        ("bootctl.cli", ["status", "--json", "--bogus"], "usage: abctl status "),
        ("bundle_tool.cli", ["info", "x", "--bogus"], "usage: bundle-tool info "),
    ],
)
def test_an_unknown_argument_shows_its_commands_usage(
    module: str, argv: list[str], usage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    build_parser = importlib.import_module(module).build_parser
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == exitstatus.USAGE
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    assert err.endswith("error: unrecognized arguments: --bogus\n")


def test_an_unknown_argument_before_the_command_shows_the_tools_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from updater.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--bogus", "status"])
    assert capsys.readouterr().err.startswith("usage: updater [-h] [--version] COMMAND")


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


@pytest.mark.parametrize("where", ["building", "parsing"])
def test_a_signal_before_the_command_runs_is_one_line_and_its_status(
    capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """SIGTERM as a service is stopped while the tool starts: 143 and one line, not a
    traceback (the parser is built inside the boundary)."""
    import signal

    from bootctl.cliboundary import Interrupted

    class Stopped(argparse.Action):
        def __call__(self, *args: object, **kwargs: object) -> None:
            raise Interrupted(signal.SIGTERM)

    def build() -> argparse.ArgumentParser:
        if where == "building":
            raise Interrupted(signal.SIGTERM)
        p = parser()
        p.add_argument("--go", action=Stopped, nargs=0)
        return p

    def run(args: argparse.Namespace) -> None:
        raise AssertionError("no command runs")

    assert run_cli(build, run, [(Refused, exitstatus.REFUSED)], ["--go"], prog="tool") == 143
    captured = capsys.readouterr()
    assert captured.err == "tool: error: interrupted by SIGTERM\n"
    assert captured.out == ""
