"""Board config loading: the shipped files, and strictness."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from bootctl.board import load_board, parse_board
from bootctl.errors import ConfigError
from tests.bootctl.paths import BOARD_DIR
from tests.helpers.boards import fit_board


def _arm64() -> dict[str, Any]:
    with open(BOARD_DIR / "qemu-arm64-uboot.toml", "rb") as f:
        return tomllib.load(f)


def test_every_board_file_loads(board_file: Path) -> None:
    board = load_board(board_file)
    assert board.name == board_file.stem
    assert len(board.slots) >= 2
    assert board.slot_names[:2] == ("A", "B")
    assert 1 <= board.tries <= 9


def test_required_boards_are_shipped() -> None:
    names = {p.stem for p in BOARD_DIR.glob("*.toml")}
    assert {"qemu-arm64-uboot", "qemu-x86_64-grub", "rpi4-uboot"} <= names
    assert {"qemu-arm64-fit", "qemu-x86_64-uki"} <= names  # the QEMU images' boards


def test_qemu_arm64_layout() -> None:
    board = load_board(BOARD_DIR / "qemu-arm64-uboot.toml")
    assert board.bootloader == "u-boot"
    assert board.architecture == "arm64"
    assert [(s.device, s.root, s.slot_class) for s in board.slots] == [
        ("/dev/vda2", "/dev/vda2", "rootfs"),
        ("/dev/vda3", "/dev/vda3", "rootfs"),
    ]
    assert board.env.fw_env_config == ("/boot/uboot.env 0x0000 0x4000",)
    assert (board.env.uboot_file, board.env.uboot_size) == ("uboot.env", 0x4000)
    assert (board.boot.device, board.boot.mount) == ("/dev/vda1", "/boot")
    assert "console=ttyAMA0" in board.kernel_args


def test_qemu_x86_64_layout() -> None:
    board = load_board(BOARD_DIR / "qemu-x86_64-grub.toml")
    assert board.bootloader == "grub"
    assert board.architecture == "amd64"
    assert board.env.grubenv == "/boot/efi/EFI/BOOT/grubenv"
    assert board.env.grub_file == "EFI/BOOT/grubenv"
    assert board.boot.device == "/dev/vda1"
    assert [s.device for s in board.slots] == ["/dev/vda2", "/dev/vda3"]
    assert "console=ttyS0" in board.kernel_args


@pytest.mark.parametrize(
    ("path", "key"),
    [((), "colour"), (("env",), "fw_env_cfg"), (("slots", "A"), "dev"), (("boot",), "kernal")],
)
def test_unknown_key_is_refused_with_its_name(path: tuple[str, ...], key: str) -> None:
    data = _arm64()
    table = data
    for p in path:
        table = table[p]
    table[key] = "x"
    with pytest.raises(ConfigError, match=key):
        parse_board(data)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.update(tries=0), "tries"),
        (lambda d: d.update(tries=10), "tries"),
        (lambda d: d.update(tries="3"), "tries"),
        (lambda d: d.update(bootloader="lilo"), "bootloader"),
        (lambda d: d.update(architecture="x86_64"), "architecture"),
        (lambda d: d.pop("name"), "name"),
        (lambda d: d["env"].update(uboot_size=0x2000), "size"),
        (lambda d: d["env"].update(fw_env_config=[]), "fw_env_config"),
        (lambda d: d["env"].update(fw_env_config=["/x 0 zz"]), "not a number"),
        (lambda d: d["slots"].pop("B"), "two"),
        (lambda d: d["slots"].update({"A-1": {"device": "/dev/x"}}), "letters and digits"),
        (lambda d: d.update(kernel_args="quiet; reset"), "kernel_args"),
        (lambda d: d["boot"].update(kernel="../vmlinuz"), "boot.kernel"),
        (lambda d: d["env"].update(uboot_file="other.env"), "env.uboot_file"),
    ],
)
def test_invalid_values_are_refused(change: Any, match: str) -> None:
    data = _arm64()
    change(data)
    with pytest.raises(ConfigError, match=match):
        parse_board(data)


def test_grub_board_needs_grubenv() -> None:
    with open(BOARD_DIR / "qemu-x86_64-grub.toml", "rb") as f:
        data = tomllib.load(f)
    del data["env"]["grubenv"]
    with pytest.raises(ConfigError, match=r"env\.grubenv"):
        parse_board(data)


def test_grub_paths_must_agree() -> None:
    with open(BOARD_DIR / "qemu-x86_64-grub.toml", "rb") as f:
        data = tomllib.load(f)
    data["env"]["grub_file"] = "EFI/debian/grubenv"
    with pytest.raises(ConfigError, match="grub_file"):
        parse_board(data)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_board(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_board(tmp_path / "missing.toml")


def test_slot_group_files_and_artifact_places(tmp_path: Path) -> None:
    """`boot.files` by chain, and `boot.artifacts`, each checked by name."""
    board = load_board(fit_board(tmp_path / "fit.toml", {"board.dtb": "dtbs/board.dtb"}))
    assert board.boot.files == (("boot", "boot.itb"),)
    assert board.boot.file_of("boot") == board.boot.image == "boot.itb"
    assert board.boot.artifact_path("board.dtb") == "dtbs/board.dtb"
    assert board.boot.artifact_path("other") is None
    text = (tmp_path / "fit.toml").read_text()
    for bad, message in [
        ('"../x.dtb"', "must be a relative path"),
        ('"a b"', "must be a relative path"),
    ]:
        (tmp_path / "bad.toml").write_text(text.replace('"dtbs/board.dtb"', bad))
        with pytest.raises(ConfigError, match=message):
            load_board(tmp_path / "bad.toml")
    (tmp_path / "bad.toml").write_text(text + '\n[boot.files]\nrootfs = "x.img"\n')
    with pytest.raises(ConfigError, match="rootfs is the class of a slot"):
        load_board(tmp_path / "bad.toml")
    uki = (
        (BOARD_DIR / "qemu-x86_64-grub.toml")
        .read_text()
        .replace("[boot]\n", '[boot]\nchain = "uki"\n', 1)
    )
    (tmp_path / "uki.toml").write_text(uki)
    files = load_board(tmp_path / "uki.toml").boot.files
    assert files == (("boot", "boot.efi"), ("boot-sig", "boot.efi.sig"))
