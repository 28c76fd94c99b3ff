"""The device configuration: examples parse, mistakes are refused with their name."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from updater.config import load_config, parse_config
from updater.errors import UsageError
from updater.install import open_control

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "docs" / "examples"


def test_file_example_loads() -> None:
    cfg = load_config(EXAMPLES / "device-files.toml")
    assert cfg.board.name == "qemu-arm64-uboot"
    assert cfg.slot_device("A") == str(EXAMPLES / "slot-A.img")
    assert cfg.env_override == (f"{EXAMPLES / 'uboot.env'} 0x0000 0x4000",)
    assert cfg.cmdline == EXAMPLES / "cmdline"


@pytest.mark.parametrize("name", ["device-qemu-arm64-uboot.toml", "device-qemu-x86_64-grub.toml"])
def test_qemu_examples_parse(name: str) -> None:
    data = tomllib.loads((EXAMPLES / name).read_text())
    board = Path(data["board"]).name
    data["board"] = str(REPO / "board-configs" / board)  # installed below /usr/share on a device
    cfg = parse_config(data, Path("/"))
    assert cfg.board.compatible == board.removesuffix(".toml")
    assert cfg.http.ca_file == "/etc/abupdate/server-ca.pem"


BASE = {
    "board": str(REPO / "board-configs/qemu-arm64-uboot.toml"),
    "keyring": "k",
    "state_dir": "s",
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"keyrings": "x"}, "unknown key 'keyrings'"),
        ({"http": {"timeout": 3}}, r"unknown key 'timeout' in \[http\]"),
        ({"slots": {"C": {"device": "x"}}}, "slot 'C' is not a slot"),
        ({"slots": {"A": {"dev": "x"}}}, r"unknown key 'dev' in \[slots.A\]"),
        ({"env": {"grubenv": "x"}}, r"unknown key|fw_env_config"),
        ({"threshold": 0}, "threshold"),
        ({"find_moved_blocks": 1}, "'find_moved_blocks' must be true or false"),
        ({"http": {"read_timeout": -1}}, "read_timeout"),
        ({"http": {"connect_timeout": True}}, "connect_timeout must be a number of seconds"),
        ({"http": {"deadline": "10"}}, "deadline must be a number of seconds, not '10'"),
        ({"http": {"retries": 1.5}}, "retries must be a whole number"),
        ({"http": {"retries": True}}, "retries must be a whole number"),
        ({"http": {"connect_timeout": float("inf")}}, "connect_timeout must be a finite"),
        ({"http": {"backoff_max": float("nan")}}, "backoff_max must be a finite"),
        ({"board": str(REPO / "missing.toml")}, "board"),
    ],
)
def test_mistakes_are_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_config({**BASE, **change}, Path("/tmp"))


def test_find_moved_blocks_is_off_unless_asked() -> None:
    assert not parse_config(BASE, Path("/tmp")).find_moved_blocks
    assert parse_config({**BASE, "find_moved_blocks": True}, Path("/tmp")).find_moved_blocks


def test_required_keys() -> None:
    for key in ("board", "keyring", "state_dir"):
        data = {k: v for k, v in BASE.items() if k != key}
        with pytest.raises(UsageError, match=f"'{key}' is required"):
            parse_config(data, Path("/tmp"))


@pytest.mark.parametrize(
    "lines", [["uboot.env 0x0000 0x2000"], ["uboot.env zero 0x4000"], []], ids=str
)
def test_a_bad_env_location_is_a_configuration_error(tmp_path: Path, lines: list[str]) -> None:
    """Found when the environment is opened, it is still the configuration's fault (exit 2)."""
    config = parse_config({**BASE, "env": {"fw_env_config": lines}}, tmp_path)
    with pytest.raises(UsageError, match="device config: boot environment"):
        open_control(config)


def test_paths_are_absolute_when_the_config_is_named_relatively(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(EXAMPLES)
    cfg = load_config("device-files.toml")
    assert cfg.slot_device("A") == str(EXAMPLES / "slot-A.img")
    assert cfg.state_dir == EXAMPLES / "state"


@pytest.mark.parametrize("value", ["keyring.pem\n", "key\x00ring.pem", "a" * 4097, ""])
def test_paths_are_printable_and_bounded(tmp_path: Path, value: str) -> None:
    """A NUL, a newline or a huge string in a path is refused with the key's name."""
    with pytest.raises(UsageError, match="'keyring' must be a path"):
        parse_config({**BASE, "keyring": value}, tmp_path)
