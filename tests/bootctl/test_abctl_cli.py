"""The abctl command line: exit codes, --json output, help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bootctl.cli import main
from tests.bootctl.envtools import fw_printenv, fw_setenv
from tests.bootctl.paths import BOARD_DIR

ARM = str(BOARD_DIR / "qemu-arm64-uboot.toml")
X86 = str(BOARD_DIR / "qemu-x86_64-grub.toml")
VERITY = "ab" * 32 + ":" + "cd" * 32 + ":100"


@pytest.fixture
def env(tmp_path: Path) -> list[str]:
    """Global options for a U-Boot board with a plain-file env, booted from slot A."""
    cfg = tmp_path / "fw_env.config"
    cfg.write_text(f"{tmp_path / 'uboot.env'} 0x0 0x4000\n")
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyAMA0 abupdate.slot=A\n")
    return ["--board", ARM, "--env-config", str(cfg), "--cmdline", str(cmdline)]


def _json(capsys: pytest.CaptureFixture[str], args: list[str]) -> dict[str, object]:
    capsys.readouterr()
    assert main([*args, "status", "--json"]) == 0
    doc: dict[str, object] = json.loads(capsys.readouterr().out)
    return doc


def test_status_json(env: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = _json(capsys, env)
    assert doc["env"] == {"location": f"{tmp_path / 'uboot.env'}@0x0", "valid": False}
    assert main([*env, "init", "--verity", f"A={VERITY}"]) == 0
    doc = _json(capsys, env)
    assert doc["order"] == ["A", "B"]
    assert doc["primary"] == "A"
    assert doc["next_boot"] == "A"
    assert doc["booted"] == "A"
    assert doc["problems"] == []
    assert doc["slots"] == {
        "A": {
            "device": "/dev/vda2",
            "tries_left": 3,
            "verity": VERITY,
            "verity_valid": True,
            "bootable": True,
            "booted": True,
        },
        "B": {
            "device": "/dev/vda3",
            "tries_left": 3,
            "verity": "",
            "verity_valid": False,
            "bootable": False,
            "booted": False,
        },
    }


def test_exit_codes(env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*env, "mark-good"]) == 7  # no valid environment yet
    assert "abctl init" in capsys.readouterr().err
    assert main([*env, "init"]) == 0
    assert main([*env, "mark-good"]) == 0
    assert main([*env, "mark-bad"]) == 5  # the booted slot without --force
    assert main([*env, "mark-bad", "C"]) == 2  # an unknown slot
    assert main([*env, "set-primary", "B"]) == 2  # no verity value recorded or given
    assert main([*env, "set-primary", "B", "--verity", "nonsense"]) == 2
    assert main([*env, "set-primary", "B", "--verity", VERITY]) == 0
    assert main([*env, "mark-bad", "--force"]) == 0
    assert main(["--board", str(tmp_path / "missing.toml"), "status"]) == 2
    bad_cfg = tmp_path / "bad.config"
    bad_cfg.write_text("/x zz 0x4000\n")
    assert main(["--board", ARM, "--env-config", str(bad_cfg), "status"]) == 2
    (tmp_path / "uboot.env").write_bytes(b"\0" * 100)  # size mismatch
    assert main([*env, "status"]) == 7
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*env, "no-such-command"])
    assert exc.value.code == 2


def test_storage_error_exit_code(tmp_path: Path) -> None:
    cfg = tmp_path / "fw_env.config"
    cfg.write_text(f"{tmp_path} 0x0 0x4000\n")  # a directory: cannot be read as a file
    assert main(["--board", ARM, "--env-config", str(cfg), "status"]) == 7


def test_print_env_and_interop(
    env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*env, "init"]) == 0
    cfg = tmp_path / "fw_env.config"
    fw_setenv(cfg, "BOOT_B_VERITY", VERITY)
    capsys.readouterr()
    assert main([*env, "print-env", "BOOT_B_VERITY", "BOOT_ORDER"]) == 0
    assert capsys.readouterr().out == f"BOOT_B_VERITY={VERITY}\nBOOT_ORDER=A B\n"
    assert main([*env, "print-env", "nope"]) == 2
    assert main([*env, "set-primary", "B"]) == 0  # uses the recorded value
    assert fw_printenv(cfg)["BOOT_ORDER"] == "B A"


def test_status_text_lists_problems(
    env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*env, "init"]) == 0
    fw_setenv(tmp_path / "fw_env.config", "BOOT_A_LEFT", "lots")
    capsys.readouterr()
    assert main([*env, "status"]) == 0
    out = capsys.readouterr().out
    assert "booted:    A" in out
    assert "warning: BOOT_A_LEFT='lots' is not a digit" in out


def test_grub_board(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grubenv = tmp_path / "grubenv"
    args = ["--board", X86, "--env-config", str(grubenv), "--cmdline", str(tmp_path / "none")]
    assert main([*args, "init", "--verity", f"B={VERITY}"]) == 0
    assert main([*args, "set-primary", "B"]) == 0
    doc = _json(capsys, args)
    assert doc["order"] == ["B", "A"]
    assert doc["booted"] is None
    assert grubenv.stat().st_size == 1024


def test_console_script_help_and_exit_status(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bootctl.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for word in (
        "status",
        "mark-good",
        "mark-bad",
        "set-primary",
        "print-env",
        "init",
        "exit status",
    ):
        assert word in out
    result = subprocess.run(
        [sys.executable, "-m", "bootctl.cli", "--board", str(tmp_path / "x.toml"), "status"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("abctl: error: cannot read board config")


def test_boot_script_mkimage_to_stdout(tmp_path: Path) -> None:
    """`-o -` means stdout with --mkimage too (no file named '-')."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bootctl.cli",
            "--board",
            ARM,
            "boot-script",
            "-o",
            "-",
            "--mkimage",
        ],
        capture_output=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []
    assert result.stdout[:4] == bytes.fromhex("27051956")  # legacy U-Boot image magic
    scr = tmp_path / "boot.scr"
    scr.write_bytes(result.stdout)
    listing = subprocess.run(
        ["mkimage", "-l", str(scr)], capture_output=True, text=True, check=True
    ).stdout
    assert "AArch64 Linux Script" in listing


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bootctl.cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("abctl ")


COMMANDS = [
    "status",
    "mark-good",
    "mark-bad",
    "set-primary",
    "set-verity",
    "print-env",
    "init",
    "reset",
    "boot-script",
]


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_is_wrapped(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exc:
        main([*filter(None, [command]), "--help"])
    assert exc.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert "exit status:" in lines
    assert [line for line in lines if len(line) > 80] == []


def test_status_json_errors_are_json_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--board", str(tmp_path / "missing.toml"), "status", "--json"]) == 2
    captured = capsys.readouterr()
    error = json.loads(captured.out)
    assert error["exit_status"] == 2
    assert captured.err == f"abctl: error: {error['error']}\n"


def test_an_unknown_booted_slot_is_a_device_fault_as_in_the_updater(
    env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*env, "init"]) == 0
    (tmp_path / "cmdline").write_text("console=ttyAMA0\n")
    assert main([*env, "mark-good"]) == 7
    assert main([*env, "mark-bad"]) == 7
    (tmp_path / "cmdline").write_text("console=ttyAMA0 abupdate.slot=Z\n")
    assert main([*env, "mark-good"]) == 7
    assert "names slot 'Z'" in capsys.readouterr().err
