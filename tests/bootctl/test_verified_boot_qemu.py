"""The verified boot programs in real U-Boot (signed FIT) and OVMF + GRUB (signed UKI).

Each QEMU run is one boot (see `qemuboot`). The slots' boot folders hold images that must
be refused (changed after signing, unsigned, signed with another key); each refusal must
cost the slot one try, as the pure model `state.select_boot` counts, and nothing written
into the unauthenticated environment may switch a check off or run.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path

import pytest

from bootctl import grubenv, state, ubootenv
from bootctl.board import BoardConfig, parse_board
from bootctl.state import SlotVerity
from bundle_tool import bootimage, bootkeys
from tests.bootctl.paths import BOARD_DIR
from tests.bootctl.qemuboot import QemuBoard

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

VERITY = SlotVerity("ab" * 32, "cd" * 32, 100)
V = VERITY.to_env()


def _board(name: str, chain: str) -> BoardConfig:
    with open(BOARD_DIR / f"{name}.toml", "rb") as f:
        data = tomllib.load(f)
    data["boot"]["chain"] = chain
    if chain == "fit":
        data["boot"]["fit_kernel_load"] = 0x40400000
    return parse_board(data)


def _parts(tmp_path: Path) -> tuple[Path, Path]:
    header = bytearray(64)
    header[56:60] = b"ARM\x64"
    kernel = tmp_path / "kernel"
    kernel.write_bytes(bytes(header) + os.urandom(4096))
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"\0" * 512)
    return kernel, initrd


def _fit(tmp_path: Path, key: bootkeys.DevBootKeys, *, flip: bool = False) -> bytes:
    kernel, initrd = _parts(tmp_path)
    out = tmp_path / "boot.itb"
    bootimage.build_fit(
        kernel, initrd, VERITY, out, arch="arm64", key=key.fit, load_address=0x40400000
    )
    data = bytearray(out.read_bytes())
    if flip:
        data[data.find(b"ARM\x64") + 100] ^= 1
    return bytes(data)


def _uki(tmp_path: Path, signer: bootimage.UefiSigner, *, flip: bool = False) -> dict[str, bytes]:
    kernel, initrd = _parts(tmp_path)
    out = tmp_path / "boot.efi"
    bootimage.build_uki(
        kernel, initrd, VERITY, out, cmdline="console=ttyS0", os_release="ID=t\n", signer=signer
    )
    data = bytearray(out.read_bytes())
    if flip:
        data[len(data) // 2] ^= 1
    return {"boot.efi": bytes(data), "boot.efi.sig": out.with_name("boot.efi.sig").read_bytes()}


def test_uboot_fit_refusals_cost_tries_and_the_env_cannot_switch_checks_off(
    tmp_path: Path, boot_keys: bootkeys.DevBootKeys, other_boot_keys: bootkeys.DevBootKeys
) -> None:
    """B changed after signing, A signed with another key: each boot refuses, counts, resets.

    The env file also carries `verify=n`, a `bootcmd`, `bootargs` and a `;` payload in
    BOOT_ORDER: none of them is imported or run.
    """
    board = _board("qemu-arm64-uboot", "fit")
    slot_env = {"BOOT_ORDER": "B A ;echo PWNED", "BOOT_A_LEFT": "1", "BOOT_B_LEFT": "1"}
    slot_env |= {"BOOT_A_VERITY": V, "BOOT_B_VERITY": V}
    attack = {"verify": "n", "bootcmd": "echo PWNED", "bootargs": "init=/bin/sh PWNED"}
    blob = ubootenv.encode_single(slot_env | attack, board.env.uboot_size)
    qemu = QemuBoard(board, tmp_path, boot_keys)
    qemu.build(
        blob,
        {
            f"{board.slot('B').boot_dir}/boot.itb": _fit(tmp_path, boot_keys, flip=True),
            f"{board.slot('A').boot_dir}/boot.itb": _fit(tmp_path, other_boot_keys),
        },
    )
    env = slot_env
    for expected_slot, refusal in [
        ("B", "Bad hash value for 'hash' hash node in 'kernel' image node"),
        ("A", "Failed to verify required signature 'key-dev'"),
    ]:
        expected = state.select_boot(env, board.slot_names, board.tries)
        assert expected.slot == expected_slot
        console = qemu.boot_once()
        assert f"abupdate: booting slot {expected_slot}\n" in console
        assert refusal in console
        assert "its signed boot image is missing or was refused" in console
        assert f"abupdate: bootargs [{board.kernel_args} abupdate.slot={expected_slot}]" in console
        assert "PWNED" not in console.replace("B A ;echo PWNED", "")
        saved = ubootenv.decode_single(qemu.read_env_image(), board.env.uboot_size)
        assert saved == expected.env
        env = saved
    # Both slots are out of tries now: the next boot resets the counters.
    assert state.select_boot(env, board.slot_names, board.tries).slot is None


def test_uboot_fit_a_missing_image_costs_a_try(
    tmp_path: Path, boot_keys: bootkeys.DevBootKeys
) -> None:
    board = _board("qemu-arm64-uboot", "fit")
    env = {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "2"}
    env |= {"BOOT_A_VERITY": V, "BOOT_B_VERITY": V}
    qemu = QemuBoard(board, tmp_path, boot_keys)
    qemu.build(ubootenv.encode_single(env, board.env.uboot_size))
    console = qemu.boot_once()
    assert "abupdate: booting slot B\n" in console
    assert "its signed boot image is missing or was refused" in console
    saved = ubootenv.decode_single(qemu.read_env_image(), board.env.uboot_size)
    assert saved["BOOT_B_LEFT"] == "1" and saved["BOOT_A_LEFT"] == "3"


def test_grub_uki_refusals_cost_tries_and_grubenv_cannot_switch_checks_off(
    tmp_path: Path, boot_keys: bootkeys.DevBootKeys, other_boot_keys: bootkeys.DevBootKeys
) -> None:
    """Secure Boot on: B's UKI changed after its gpg signature was made (GRUB refuses it),
    A's signed for GRUB but with another db key (the firmware refuses to load it)."""
    board = _board("qemu-x86_64-grub", "uki")
    slot_env = {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "1", "BOOT_B_LEFT": "1"}
    slot_env |= {"BOOT_A_VERITY": V, "BOOT_B_VERITY": V}
    attack = {"check_signatures": "no", "root": "hd0,gpt2"}
    files = {
        f"{board.slot('B').boot_dir}/{name}": data
        for name, data in _uki(tmp_path, boot_keys.uefi_signer, flip=True).items()
    }
    wrong_db = dataclasses.replace(other_boot_keys.uefi_signer, gpg_home=boot_keys.gpg_home)
    files |= {
        f"{board.slot('A').boot_dir}/{name}": data
        for name, data in _uki(tmp_path, wrong_db).items()
    }
    qemu = QemuBoard(board, tmp_path, boot_keys)
    qemu.build(grubenv.encode_grubenv(slot_env | attack), files)
    env = slot_env
    for expected_slot, refusal in [
        ("B", "error: bad signature."),
        ("A", "error: cannot load image."),
    ]:
        expected = state.select_boot(env, board.slot_names, board.tries)
        assert expected.slot == expected_slot
        console = qemu.boot_once()
        assert f"abupdate: booting slot {expected_slot}\n" in console
        assert refusal in console
        assert "its signed boot image is missing or was refused" in console
        saved = grubenv.decode_grubenv(qemu.read_env_image())
        assert {k: saved[k] for k in expected.env} == expected.env
        assert saved["check_signatures"] == "no"  # still in the file, never loaded
        env = {k: saved[k] for k in expected.env}


def test_grub_uki_signed_right_is_started_by_the_firmware(
    tmp_path: Path, boot_keys: bootkeys.DevBootKeys
) -> None:
    """The control for the refusals above: a UKI with both signatures right is loaded and
    its EFI stub runs (and then stops at the test's placeholder kernel)."""
    board = _board("qemu-x86_64-grub", "uki")
    env = {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "1", "BOOT_B_LEFT": "1", "BOOT_B_VERITY": V}
    files = {
        f"{board.slot('B').boot_dir}/{name}": data
        for name, data in _uki(tmp_path, boot_keys.uefi_signer).items()
    }
    qemu = QemuBoard(board, tmp_path, boot_keys)
    qemu.build(grubenv.encode_grubenv(env), files)
    console = qemu.boot_once()
    assert "abupdate: booting slot B\n" in console
    assert "Bad kernel image: Load Error" in console  # systemd-stub's own message
    assert "cannot load image" not in console and "bad signature" not in console


def test_uboot_fit_a_lost_env_still_boots_a_slot(
    tmp_path: Path, boot_keys: bootkeys.DevBootKeys
) -> None:
    """A torn or erased uboot.env (its CRC fails): the defaults have no verity values, and on
    a FIT board none is needed, so slot A is tried (here: its image is missing, a refusal
    that costs a try) instead of resetting the counters and the board for ever."""
    board = _board("qemu-arm64-uboot", "fit")
    qemu = QemuBoard(board, tmp_path, boot_keys)
    qemu.build(b"\xff" * board.env.uboot_size)
    console = qemu.boot_once()
    assert "abupdate: no valid uboot.env, using defaults" in console
    assert "abupdate: booting slot A\n" in console
    assert "no slot has tries left" not in console
    defaults = {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3"}
    expected = state.select_boot(defaults, board.slot_names, board.tries, needs_verity=False)
    assert expected.slot == "A"
    saved = ubootenv.decode_single(qemu.read_env_image(), board.env.uboot_size)
    assert saved == expected.env


def test_grub_uki_a_broken_grubenv_still_boots_a_slot(
    tmp_path: Path, boot_keys: bootkeys.DevBootKeys
) -> None:
    """A grubenv that is no environment block: GRUB can neither load nor save it, so it
    boots slot A by the defaults without counting (its signed UKI is started: the stub's
    own message) rather than rebooting for ever before Linux could write it again."""
    board = _board("qemu-x86_64-grub", "uki")
    files = {
        f"{board.slot('A').boot_dir}/{name}": data
        for name, data in _uki(tmp_path, boot_keys.uefi_signer).items()
    }
    qemu = QemuBoard(board, tmp_path, boot_keys)
    qemu.build(b"torn" * 256, files)
    console = qemu.boot_once()
    assert "abupdate: no valid /EFI/BOOT/grubenv, using defaults" in console
    assert "booting slot A without counting the try" in console
    assert "Bad kernel image: Load Error" in console  # A's UKI passed both signatures
    assert "no slot has tries left" not in console
