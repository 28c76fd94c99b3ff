"""Boot scripts: generated from every board config, checked by the real tools."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bootctl.board import ARCHITECTURES, load_board
from bootctl.bootscript import render_boot_script, render_grub_cfg, render_uboot_script
from bootctl.cli import main
from bootctl.errors import ConfigError
from tests.bootctl.paths import BOARD_DIR, BOARD_FILES

UBOOT_BOARDS = [p for p in BOARD_FILES if load_board(p).bootloader == "u-boot"]
GRUB_BOARDS = [p for p in BOARD_FILES if load_board(p).bootloader == "grub"]


def test_every_board_renders_a_script(board_file: Path, tmp_path: Path) -> None:
    board = load_board(board_file)
    text = render_boot_script(board)
    assert "@" not in text.replace("abupdate", "")  # no unsubstituted placeholder
    for slot in board.slots:
        assert slot.root in text
        assert f"BOOT_{slot.name}_VERITY" in text
        assert f"BOOT_{slot.name}_LEFT" in text
    if board.boot.chain == "script":
        assert "abupdate.root=${ab_root}" in text
        assert board.kernel_args in text
        assert "abupdate.slot=${ab_slot}" in text
        assert "abupdate.verity=${ab_verity}" in text
    else:
        # A verified chain passes no root or root hash: they come from the signed image.
        assert "abupdate.root=" not in text and "abupdate.verity=" not in text
        assert f"${{ab_dir}}/{board.boot.image}" in text
        if board.boot.chain == "fit":
            assert f"{board.kernel_args} abupdate.slot=${{ab_slot}}" in text
    out = tmp_path / "script"
    assert main(["--board", str(board_file), "boot-script", "-o", str(out)]) == 0
    assert out.read_text() == text


@pytest.mark.parametrize("board_file", UBOOT_BOARDS, ids=[p.stem for p in UBOOT_BOARDS])
def test_every_uboot_board_compiles_with_mkimage(board_file: Path, tmp_path: Path) -> None:
    board = load_board(board_file)
    scr = tmp_path / "boot.scr"
    rc = main(["--board", str(board_file), "boot-script", "-o", str(scr), "--mkimage"])
    assert rc == 0
    listing = subprocess.run(
        ["mkimage", "-l", str(scr)], capture_output=True, text=True, check=True
    ).stdout
    assert "Script" in listing
    # The script payload follows the 64-byte header and an 8-byte length table.
    payload = scr.read_bytes()[72:].rstrip(b"\0").decode()
    assert payload.rstrip() == render_uboot_script(board).rstrip()


@pytest.mark.parametrize("board_file", GRUB_BOARDS, ids=[p.stem for p in GRUB_BOARDS])
def test_every_grub_board_passes_grub_script_check(board_file: Path, tmp_path: Path) -> None:
    board = load_board(board_file)
    cfg = tmp_path / "grub.cfg"
    cfg.write_text(render_grub_cfg(board))
    subprocess.run(["grub-script-check", str(cfg)], check=True)


def test_grub_script_check_rejects_broken_script(tmp_path: Path) -> None:
    """The check above can fail: a truncated config is refused."""
    board = load_board(BOARD_DIR / "qemu-x86_64-grub.toml")
    text = render_grub_cfg(board)
    cfg = tmp_path / "grub.cfg"
    cfg.write_text(text[: text.index("done")])
    assert subprocess.run(["grub-script-check", str(cfg)], check=False).returncode != 0


def test_uboot_script_protocol_details() -> None:
    board = load_board(BOARD_DIR / "qemu-arm64-uboot.toml")
    text = render_uboot_script(board)
    assert "fatload virtio 0:1 ${kernel_addr_r} uboot.env" in text
    vars_ = "BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT BOOT_A_VERITY BOOT_B_VERITY"
    assert f"env import -c ${{kernel_addr_r}} 0x4000 {vars_}" in text
    assert f"env export -c -s 0x4000 ${{kernel_addr_r}} {vars_}" in text
    assert "fatwrite virtio 0:1 ${kernel_addr_r} uboot.env 0x4000" in text
    assert "booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${fdtcontroladdr}" in text
    assert "setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1" in text
    # The env is saved before the kernel is loaded (the try is counted before booting).
    assert text.index("fatwrite") < text.index("booti")
    assert text.index("env export") < text.index("fatload virtio 0:1 ${kernel_addr_r} vmlinuz")


def test_grub_cfg_protocol_details() -> None:
    board = load_board(BOARD_DIR / "qemu-x86_64-grub.toml")
    text = render_grub_cfg(board)
    assert "load_env -f /EFI/BOOT/grubenv BOOT_ORDER" in text
    assert "save_env -f /EFI/BOOT/grubenv BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT" in text
    assert "linux /vmlinuz console=ttyS0 abupdate.slot=${ab_slot}" in text
    assert "initrd /initrd.img" in text
    # One decrement step for each counter value 9..1, none below zero.
    for n in range(1, 10):
        assert re.search(rf'"\${{BOOT_A_LEFT}}" = "{n}" \]; then\n\s+set BOOT_A_LEFT={n - 1}', text)
    assert '= "0" ]' not in text
    assert text.index("save_env") < text.index("linux /")


def test_wrong_bootloader_is_refused() -> None:
    with pytest.raises(ConfigError):
        render_grub_cfg(load_board(BOARD_DIR / "qemu-arm64-uboot.toml"))
    with pytest.raises(ConfigError):
        render_uboot_script(load_board(BOARD_DIR / "qemu-x86_64-grub.toml"))
    grub = str(BOARD_DIR / "qemu-x86_64-grub.toml")
    assert main(["--board", grub, "boot-script", "-o", "/dev/null", "--mkimage"]) == 2


def test_uboot_script_needs_a_single_copy_env() -> None:
    board = load_board(BOARD_DIR / "qemu-arm64-uboot.toml")
    env = dataclasses.replace(
        board.env, fw_env_config=("/boot/uboot.env 0 0x4000", "/boot/uboot.env 0x4000 0x4000")
    )
    with pytest.raises(ConfigError, match="single-copy"):
        render_uboot_script(dataclasses.replace(board, env=env))


#: mkimage's `-A` name and its `mkimage -l` description of each board architecture.
MKIMAGE = {
    "arm64": ("arm64", "AArch64"),
    "amd64": ("x86_64", "AMD x86_64"),
    "armhf": ("arm", "ARM"),
    "riscv64": ("riscv", "RISC-V"),
}


def _uboot_board(tmp_path: Path, architecture: str) -> Path:
    """The arm64 U-Boot board config with another architecture."""
    text = (BOARD_DIR / "qemu-arm64-uboot.toml").read_text()
    assert 'architecture = "arm64"' in text
    path = tmp_path / f"{architecture}.toml"
    path.write_text(text.replace('architecture = "arm64"', f'architecture = "{architecture}"'))
    return path


def test_every_architecture_has_an_mkimage_name() -> None:
    assert set(MKIMAGE) == set(ARCHITECTURES)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_compiles_with_mkimage(architecture: str, tmp_path: Path) -> None:
    board = _uboot_board(tmp_path, architecture)
    name, description = MKIMAGE[architecture]
    source = tmp_path / "boot.cmd"
    assert main(["--board", str(board), "boot-script", "-o", str(source)]) == 0
    hint = f"#   mkimage -A {name} -O linux -T script -C none -d boot.cmd boot.scr\n"
    assert hint in source.read_text()
    scr = tmp_path / "boot.scr"
    assert main(["--board", str(board), "boot-script", "-o", str(scr), "--mkimage"]) == 0
    listing = subprocess.run(
        ["mkimage", "-l", str(scr)], capture_output=True, text=True, check=True
    ).stdout
    assert f"Image Type:   {description} Linux Script" in listing


def test_mkimage_failure_names_the_real_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    arm = str(BOARD_DIR / "qemu-arm64-uboot.toml")
    missing = tmp_path / "missing" / "boot.scr"
    assert main(["--board", arm, "boot-script", "-o", str(missing), "--mkimage"]) == 6
    err = capsys.readouterr().err
    assert err == f"abctl: error: mkimage failed: Can't open {missing}: No such file or directory\n"

    # The real mkimage, given an architecture it does not know: it prints the error,
    # then its whole usage text.
    real = shutil.which("mkimage")
    assert real is not None
    wrapper = tmp_path / "bin" / "mkimage"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {real} "$@" -A no-such-arch\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    assert main(["--board", arm, "boot-script", "-o", str(tmp_path / "b.scr"), "--mkimage"]) == 6
    assert capsys.readouterr().err == "abctl: error: mkimage failed: Invalid architecture\n"
