"""The generated boot scripts in real U-Boot (arm64) and GRUB (x86_64 EFI) under QEMU.

Each QEMU run is one boot (see `qemuboot`); after every boot the environment the real
bootloader saved must equal what the pure model `state.select_boot` predicts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bootctl import grubenv, state, ubootenv
from bootctl.board import BoardConfig, load_board
from bootctl.bootscript import slot_vars
from tests.bootctl.paths import BOARD_DIR
from tests.bootctl.qemuboot import QemuBoard

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

V = "ab" * 32 + ":" + "cd" * 32 + ":100"
QEMU_BOARDS = ["qemu-arm64-uboot", "qemu-x86_64-grub"]


def _encode(board: BoardConfig, env: dict[str, str]) -> bytes:
    if board.bootloader == "u-boot":
        return ubootenv.encode_single(env, board.env.uboot_size)
    return grubenv.encode_grubenv(env)


def _decode(board: BoardConfig, blob: bytes) -> dict[str, str]:
    if board.bootloader == "u-boot":
        return ubootenv.decode_single(blob, board.env.uboot_size)
    return grubenv.decode_grubenv(blob)


def _slot_part(board: BoardConfig, env: dict[str, str]) -> dict[str, str]:
    return {k: env[k] for k in slot_vars(board) if k in env}


@pytest.mark.parametrize("name", QEMU_BOARDS)
def test_real_bootloader_follows_the_model(name: str, tmp_path: Path) -> None:
    """B primary with 2 tries, A with 1: B, B, A, all exhausted (reset), B."""
    board = load_board(BOARD_DIR / f"{name}.toml")
    env = {
        "BOOT_ORDER": "B A",
        "BOOT_A_LEFT": "1",
        "BOOT_B_LEFT": "2",
        "BOOT_A_VERITY": V,
        "BOOT_B_VERITY": V,
    }
    qemu = QemuBoard(board, tmp_path)
    qemu.build(_encode(board, env))
    seen = []
    for _ in range(5):
        expected = state.select_boot(env, board.slot_names, board.tries)
        console = qemu.boot_once()
        if expected.slot is None:
            assert "abupdate: no slot has tries left" in console
        else:
            assert f"abupdate: booting slot {expected.slot}\n" in console
        env = _decode(board, qemu.read_env_image())
        assert _slot_part(board, env) == _slot_part(board, expected.env)
        seen.append(expected.slot)
    assert seen == ["B", "B", "A", None, "B"]


@pytest.mark.parametrize("name", QEMU_BOARDS)
def test_real_bootloader_skips_malformed_and_unknown(name: str, tmp_path: Path) -> None:
    """Unknown names in BOOT_ORDER, a malformed counter and a missing verity value are skipped."""
    board = load_board(BOARD_DIR / f"{name}.toml")
    env = {
        "BOOT_ORDER": "Q B A",
        "BOOT_A_LEFT": "2",
        "BOOT_B_LEFT": "x",
        "BOOT_A_VERITY": V,
        "BOOT_B_VERITY": V,
    }
    qemu = QemuBoard(board, tmp_path)
    qemu.build(_encode(board, env))
    console = qemu.boot_once()
    assert "abupdate: booting slot A\n" in console
    after = _decode(board, qemu.read_env_image())
    assert after["BOOT_A_LEFT"] == "1"
    assert after["BOOT_B_LEFT"] == "x"
    # The kernel command line carries the slot, its root device and verity value.
    root = board.slot("A").root
    args = f"{board.kernel_args} abupdate.slot=A abupdate.root={root} abupdate.verity={V}"
    # GRUB's console wraps long lines at 80 columns: compare without whitespace.
    squeeze = "".join
    assert squeeze(f"abupdate: bootargs [{args}]".split()) in squeeze(console.split())


def test_uboot_corrupt_env_uses_defaults(tmp_path: Path) -> None:
    """A corrupt uboot.env: defaults have no verity value, so the all-exhausted path runs."""
    board = load_board(BOARD_DIR / "qemu-arm64-uboot.toml")
    qemu = QemuBoard(board, tmp_path)
    qemu.build(b"\xff" * board.env.uboot_size)
    console = qemu.boot_once()
    assert "abupdate: no valid uboot.env, using defaults" in console
    assert "abupdate: no slot has tries left" in console
    after = _decode(board, qemu.read_env_image())
    assert after == {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3"}
