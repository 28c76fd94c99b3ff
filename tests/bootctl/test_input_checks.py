"""Board config, fw_env.config and environment values refuse what the shared checks refuse."""

from __future__ import annotations

import copy
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootctl import validators
from bootctl.board import parse_board
from bootctl.cli import main
from bootctl.errors import ConfigError, SlotError
from bootctl.state import SlotVerity, parse_state
from bootctl.ubootenv import parse_fw_env_config
from tests.bootctl.paths import BOARD_DIR

ARM = BOARD_DIR / "qemu-arm64-uboot.toml"
ROOT = "ab" * 32
SALT = "cd" * 32


def _arm64(**top: Any) -> dict[str, Any]:
    with open(ARM, "rb") as f:
        data = tomllib.load(f)
    return {**copy.deepcopy(data), **top}


@pytest.mark.parametrize(
    "value", ["qemu-arm64-uboot\n", "qemu arm64", "", "x" * 65, "-x", "q\u0661", "b\u00e9"]
)
def test_compatible_follows_the_manifest_rule(value: str) -> None:
    """Issue 15: a board could carry a compatible no bundle can match."""
    with pytest.raises(ConfigError, match="compatible"):
        parse_board(_arm64(compatible=value))


def test_the_default_compatible_is_the_name_and_is_checked_too() -> None:
    data = _arm64(name="n" * 65)
    del data["compatible"]
    with pytest.raises(ConfigError, match="name"):
        parse_board(data)
    data["name"] = "n" * 64
    assert parse_board(data).compatible == "n" * 64


@pytest.mark.parametrize(
    ("table", "key", "value"),
    [
        ("", "name", "qemu\n"),
        ("", "kernel_args", "console=ttyAMA0\n"),
        ("boot", "kernel", "vmlinuz\n"),
        ("boot", "uboot_device", "virtio 0:1\n"),
        ("env", "uboot_file", "uboot.env\n"),
        ("slots.A", "class", "rootfs\n"),
        ("slots.A", "root", "/dev/vda2\n"),
    ],
)
def test_a_trailing_newline_is_refused_in_the_board_config(
    table: str, key: str, value: str
) -> None:
    """Item 1 for the board config: `$` matched before a final newline."""
    data = _arm64()
    target = data
    for step in filter(None, table.split(".")):
        target = target[step]
    target[key] = value
    with pytest.raises(ConfigError) as e:
        parse_board(data)
    assert key.rsplit("_", maxsplit=1)[-1] in str(e.value)


def test_a_slot_name_with_a_trailing_newline_is_refused() -> None:
    data = _arm64()
    data["slots"] = {"A\n": data["slots"]["A"], "B": data["slots"]["B"]}
    with pytest.raises(ConfigError, match="slot name"):
        parse_board(data)


@pytest.mark.parametrize(
    "number", ["\u0661\u0666\u0663\u0668\u0664", "16_384", "+16384", "010", "-1", "0x4000\u0661"]
)
def test_fw_env_config_numbers_are_ascii_and_exact(number: str) -> None:
    with pytest.raises(ConfigError, match=r"is not a number \(decimal, or hex with 0x\)"):
        parse_fw_env_config([f"/boot/uboot.env {number} 0x4000"])


def test_fw_env_config_numbers_accept_hex_and_decimal() -> None:
    (loc,) = parse_fw_env_config(["/boot/uboot.env 0 16384"])
    assert (loc.offset, loc.size) == (0, 0x4000)
    (loc,) = parse_fw_env_config(["/boot/uboot.env 0X10 0x4000"])
    assert (loc.offset, loc.size) == (16, 0x4000)


@pytest.mark.parametrize(
    "value",
    [
        f"{ROOT}:{SALT}:100\n",
        f"{ROOT}\n:{SALT}:100",
        f"{ROOT}:{SALT}\n:100",
        f"{ROOT}:{SALT}:1\u0661",
        f"{ROOT}::100",
        f"{ROOT}:{'00' * (validators.MAX_SALT_SIZE + 1)}:100",
    ],
)
def test_malformed_verity_values_are_refused(value: str) -> None:
    """Item 1 for env values, and item 8's rule: the salt is 1..256 bytes everywhere."""
    with pytest.raises(SlotError):
        SlotVerity.from_env(value)
    state = parse_state({"BOOT_ORDER": "A B", "BOOT_A_VERITY": value}, ["A", "B"])
    assert state.slot("A").verity is None


def test_a_counter_with_a_trailing_newline_is_no_tries() -> None:
    state = parse_state({"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3\n"}, ["A", "B"])
    assert state.slot("A").tries == 0


@settings(max_examples=200, deadline=None)
@given(salt=st.binary(min_size=1, max_size=validators.MAX_SALT_SIZE))
def test_every_salt_the_format_allows_is_a_verity_value(salt: bytes) -> None:
    verity = SlotVerity(ROOT, salt.hex(), 7)
    assert SlotVerity.from_env(verity.to_env()) == verity


def test_init_refuses_to_create_a_file_in_place_of_a_missing_device(tmp_path: Path) -> None:
    """Item 14: a misspelt device in fw_env.config became a regular file under /dev."""
    missing = Path(f"/dev/abupdate-test-missing-{os.getpid()}")
    cfg = tmp_path / "fw_env.config"
    cfg.write_text(f"{missing} 0x0 0x4000\n")
    args = ["--board", str(ARM), "--env-config", str(cfg), "init"]
    try:
        assert main(args) == 2  # a configuration fault (docs/exit-status.md)
        assert not os.path.lexists(missing)
    finally:
        if os.path.lexists(missing):
            missing.unlink()


def test_init_refuses_every_copy_before_writing_any(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"/dev/abupdate-test-missing-{os.getpid()}"
    cfg = tmp_path / "fw_env.config"
    cfg.write_text(f"{tmp_path / 'env.img'} 0x0 0x4000\n{missing} 0x0 0x4000\n")
    try:
        assert main(["--board", str(ARM), "--env-config", str(cfg), "init"]) == 2
        assert missing in capsys.readouterr().err
        assert not (tmp_path / "env.img").exists()
    finally:
        if os.path.lexists(missing):
            os.unlink(missing)


def test_init_creates_a_file_backed_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "fw_env.config"
    cfg.write_text(f"{tmp_path / 'uboot.env'} 0x0 0x4000\n")
    assert main(["--board", str(ARM), "--env-config", str(cfg), "init"]) == 0
    assert (tmp_path / "uboot.env").stat().st_size == 0x4000
