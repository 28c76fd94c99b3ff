"""`bundle-tool keygen --boot`, `boot-image` and `bootloader` as a firmware engineer runs them.

What they write is checked by the real tools: `mkimage -l` and `fdtget` for the FIT side,
`sbverify` and `gpg --verify` for the UEFI side, `veritysetup format` for the root hash
computed from `--rootfs`, `cpio` for the root-hash file inside the signed initramfs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from bootctl.board import load_board
from bootctl.bootscript import uboot_bootcmd
from bundle_tool import bootimage, cpio
from tests.bundle.test_cli import REPO, run

VERITY = "ab" * 32 + ":" + "cd" * 16 + ":" + "100"
LOAD = 0x40400000


def _tool(*cmd: str | Path) -> str:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=True)
    return done.stdout


def _verified_board(tmp_path: Path, name: str, chain: str) -> Path:
    """A copy of a shipped board config with boot chain `chain`."""
    lines = (REPO / "board-configs" / f"{name}.toml").read_text().splitlines(keepends=True)
    text = "".join(x for x in lines if not x.startswith(("chain =", "fit_kernel_load =")))
    extra = f'chain = "{chain}"\n' + (f"fit_kernel_load = {LOAD:#x}\n" if chain == "fit" else "")
    board = tmp_path / f"{name}-{chain}.toml"
    board.write_text(text.replace("[boot]\n", "[boot]\n" + extra, 1))
    return board


def _boot_image(
    board: Path, parts: tuple[Path, Path], keys: Path, out: Path, *extra: str | Path
) -> subprocess.CompletedProcess[str]:
    return run(
        *("boot-image", "--board-config", board, "--kernel", parts[0], "--initramfs", parts[1]),
        *("--boot-keys", keys, "-o", out, *extra),
        env={"SOURCE_DATE_EPOCH": "1700000000"},
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bootkeys") / "keys"
    r = run("keygen", "--boot", "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert "not for production" in result["warning"]
    for path in (result["fit_key"], result["fit_cert"], result["gpg_public"]):
        assert Path(path).is_file(), path
    assert set(result["uefi_certs"]) == {"PK", "KEK", "db"}
    return out


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Path, Path]:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(os.urandom(8192))
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(cpio.build([cpio.Entry("init", 0o100755, b"#!/bin/sh\n")]))
    return kernel, initrd


def test_keygen_boot_refuses_a_folder_with_keys(keys: Path) -> None:
    r = run("keygen", "--boot", "-o", keys)
    assert r.returncode == 2
    assert "already exists" in r.stderr and "Traceback" not in r.stderr


def test_keygen_boot_refuses_an_algorithm(tmp_path: Path) -> None:
    """The boot keys' types are the firmware's; an --algorithm asked for is not ignored."""
    for alg in ("p384", "ed25519"):
        r = run("keygen", "--boot", "--algorithm", alg, "-o", tmp_path / "bk")
        assert r.returncode == 2
        assert r.stderr == (
            "bundle-tool: error: --algorithm picks the type of the bundle signing keys;"
            " --boot makes boot keys of the fixed types U-Boot, UEFI and GRUB take: give one"
            " of the two\n"
        )
        assert not (tmp_path / "bk").exists()
    r = run("keygen", "-o", tmp_path / "signing")
    assert r.returncode == 0, r.stderr
    key = serialization.load_pem_private_key(
        (tmp_path / "signing" / "signer.key").read_bytes(), None
    )
    assert isinstance(key, ed25519.Ed25519PrivateKey)  # the default without --algorithm


def test_boot_image_for_a_u_boot_board_is_a_signed_fit(
    tmp_path: Path, keys: Path, parts: tuple[Path, Path]
) -> None:
    board = _verified_board(tmp_path, "qemu-arm64-uboot", "fit")
    fit = tmp_path / "boot.itb"
    r = _boot_image(board, parts, keys, fit, "--verity", VERITY, "--version", "2.1.0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {fit} (fit), root hash {VERITY}")
    listing = _tool("mkimage", "-l", fit)
    assert "FIT description: qemu-arm64-uboot 2.1.0" in listing
    assert re.search(r"Sign algo:\s+sha256,rsa2048:dev", listing), listing
    assert "Created:      Tue Nov 14 22:13:20 2023" in listing

    # The same inputs give the same bytes (SOURCE_DATE_EPOCH fixes the timestamps).
    again = tmp_path / "again.itb"
    r = _boot_image(board, parts, keys, again, "--verity", VERITY, "--version", "2.1.0")
    assert r.returncode == 0, r.stderr
    assert again.read_bytes() == fit.read_bytes()


def test_boot_image_for_a_uefi_board_is_a_signed_uki(
    tmp_path: Path, keys: Path, parts: tuple[Path, Path]
) -> None:
    board = _verified_board(tmp_path, "qemu-x86_64-grub", "uki")
    uki = tmp_path / "boot.efi"
    r = _boot_image(board, parts, keys, uki, "--verity", VERITY, "--version", "2.1.0", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result == {
        "boot_image": str(uki),
        "chain": "uki",
        "verity": VERITY,
        "gpg_signature": f"{uki}.sig",
    }
    _tool("sbverify", "--cert", keys / "uefi" / "db.crt", uki)
    gpg = ["gpg", "--homedir", keys / "gpg", "--batch", "--verify", f"{uki}.sig", uki]
    subprocess.run([str(c) for c in gpg], check=True, capture_output=True)

    # The root hash travels inside the signed initramfs, after the release's own archive.
    initrd = tmp_path / "initrd.out"
    _tool("objcopy", "-O", "binary", "--only-section=.initrd", uki, initrd)
    appended = initrd.read_bytes()[len(parts[1].read_bytes()) :].lstrip(b"\0")
    out = tmp_path / "unpacked"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=appended, cwd=out, check=True)
    assert (out / bootimage.VERITY_FILE).read_text() == VERITY + "\n"


def test_boot_image_computes_the_root_hash_veritysetup_computes(
    tmp_path: Path, keys: Path, parts: tuple[Path, Path]
) -> None:
    rootfs = tmp_path / "rootfs.img"
    rootfs.write_bytes(os.urandom(4096 * 37))
    salt = "5a" * 32
    hashes = tmp_path / "hashes"
    listing = _tool("veritysetup", "format", "--salt", salt, "--data-blocks", "37", rootfs, hashes)
    root = re.search(r"Root hash:\s+([0-9a-f]{64})", listing)
    assert root is not None, listing
    board = _verified_board(tmp_path, "qemu-x86_64-grub", "uki")
    r = _boot_image(
        board,
        parts,
        keys,
        tmp_path / "boot.efi",
        "--rootfs",
        rootfs,
        "--salt",
        salt,
        *("--version", "1.0.0", "--json"),
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["verity"] == f"{root.group(1)}:{salt}:37"


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (("--rootfs", "ROOTFS"), 2, "--rootfs needs --salt"),
        (("--verity", "xyz"), 2, "--verity: malformed verity value"),
        (("--verity", VERITY, "--board-config", "SCRIPT"), 2, "has no signed boot image"),
        (("--verity", VERITY, "--boot-keys", "NOKEYS"), 2, "does not exist"),
    ],
)
def test_boot_image_refusals_are_one_line(
    tmp_path: Path,
    keys: Path,
    parts: tuple[Path, Path],
    *,
    args: tuple[str, ...],
    status: int,
    message: str,
) -> None:
    rootfs = tmp_path / "rootfs.img"
    rootfs.write_bytes(bytes(8192))
    names = {
        "ROOTFS": rootfs,
        "SCRIPT": _verified_board(tmp_path, "qemu-arm64-uboot", "script"),
        "NOKEYS": tmp_path / "none",
    }
    given = [str(names.get(a, a)) for a in args]
    if "--board-config" not in given:
        given += ["--board-config", str(_verified_board(tmp_path, "qemu-arm64-uboot", "fit"))]
    if "--boot-keys" not in given:
        given += ["--boot-keys", str(keys)]
    r = run(
        *("boot-image", "--kernel", parts[0], "--initramfs", parts[1], "--version", "1.0.0"),
        *given,
        *("-o", tmp_path / "out"),
    )
    assert r.returncode == status, r.stderr
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_bootloader_for_a_u_boot_board_is_a_control_dtb_with_the_key(
    tmp_path: Path, keys: Path
) -> None:
    dtb = tmp_path / "virt.dtb"
    _tool("qemu-system-aarch64", "-M", f"virt,dumpdtb={dtb}", "-cpu", "cortex-a57", "-m", "512")
    board = _verified_board(tmp_path, "qemu-arm64-uboot", "fit")
    out = tmp_path / "control.dtb"
    r = run("bootloader", "--board-config", board, "--boot-keys", keys, "--dtb", dtb, "-o", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {out} (control DTB)"
    assert _tool("fdtget", out, "/signature/key-dev", "required").strip() == "conf"
    assert _tool("fdtget", out, "/signature/key-dev", "algo").strip() == "sha256,rsa2048"
    bootcmd = _tool("fdtget", "-t", "s", out, "/config", "bootcmd").rstrip("\n")
    assert bootcmd == uboot_bootcmd(load_board(board))
    assert _tool("fdtget", out, "/config", "load-environment").strip() == "0"
    # The input is left as it was.
    assert subprocess.run(["fdtget", str(dtb), "/signature/key-dev", "required"]).returncode


def test_bootloader_for_a_uefi_board_is_a_signed_grub(tmp_path: Path, keys: Path) -> None:
    board = _verified_board(tmp_path, "qemu-x86_64-grub", "uki")
    out = tmp_path / "BOOTX64.EFI"
    r = run("bootloader", "--board-config", board, "--boot-keys", keys, "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"output": str(out), "chain": "uki", "kind": "signed GRUB"}
    _tool("sbverify", "--cert", keys / "uefi" / "db.crt", out)


def test_bootloader_refusals(tmp_path: Path, keys: Path) -> None:
    fit_board = _verified_board(tmp_path, "qemu-arm64-uboot", "fit")
    r = run("bootloader", "--board-config", fit_board, "--boot-keys", keys, "-o", tmp_path / "x")
    assert r.returncode == 2 and "needs U-Boot's control DTB (--dtb)" in r.stderr
    uki_board = _verified_board(tmp_path, "qemu-x86_64-grub", "uki")
    r = run(
        *("bootloader", "--board-config", uki_board, "--boot-keys", keys),
        *("--dtb", fit_board, "-o", tmp_path / "x"),
    )
    assert r.returncode == 2 and "--dtb is for U-Boot boards" in r.stderr
    assert not (tmp_path / "x").exists()


def test_a_fit_board_keeps_a_single_copy_environment(tmp_path: Path, keys: Path) -> None:
    """docs/verified-boot.md: the fixed boot command reads one env file; two are refused."""
    board = _verified_board(tmp_path, "qemu-arm64-uboot", "fit")
    one = '["/boot/uboot.env 0x0000 0x4000"]'
    two = '["/boot/uboot.env 0x0000 0x4000", "/boot/uboot.env 0x4000 0x4000"]'
    text = board.read_text()
    assert one in text
    board.write_text(text.replace(one, two))
    dtb = tmp_path / "virt.dtb"
    _tool("qemu-system-aarch64", "-M", f"virt,dumpdtb={dtb}", "-cpu", "cortex-a57", "-m", "512")
    out = tmp_path / "x"
    r = run("bootloader", "--board-config", board, "--boot-keys", keys, "--dtb", dtb, "-o", out)
    assert r.returncode == 2, r.stderr
    assert "env.fw_env_config must have one line" in r.stderr
    assert not out.exists()


def test_boot_keys_still_sign_after_their_folder_is_moved(
    tmp_path: Path, parts: tuple[Path, Path]
) -> None:
    """A build caches keys made in a temporary folder and renames it; gpg must follow."""
    made = tmp_path / "made"
    assert run("keygen", "--boot", "-o", made).returncode == 0
    moved = tmp_path / "moved"
    made.rename(moved)
    board = _verified_board(tmp_path, "qemu-x86_64-grub", "uki")
    r = _boot_image(
        board, parts, moved, tmp_path / "boot.efi", "--verity", VERITY, "--version", "1"
    )
    assert r.returncode == 0, r.stderr
    gpg = ["gpg", "--homedir", moved / "gpg", "--batch", "--verify", tmp_path / "boot.efi.sig"]
    subprocess.run([*map(str, gpg), str(tmp_path / "boot.efi")], check=True, capture_output=True)
