"""Signed boot images checked by the real tools: mkimage, U-Boot under QEMU, sbverify, gpg, cpio.

U-Boot's check runs the way it does at boot: Debian's U-Boot for QEMU arm64 starts with a
control DTB that holds our public key (`required = "conf"`) and a fixed boot command,
the FIT is placed in memory by QEMU's loader device, and `bootm start ADDR#conf-1` checks
the configuration's signature and every image's hash before anything would run.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

from bootctl.board import BoardConfig, load_board, parse_board
from bootctl.errors import ConfigError
from bootctl.state import SlotVerity
from bundle_tool import bootimage, bootkeys
from bundle_tool.errors import UsageError
from tests.bootctl.paths import BOARD_DIR
from updater import bootfiles

UBOOT = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
FIT_ADDR = 0x48000000
LOAD = 0x40400000
VERITY = SlotVerity("ab" * 32, "cd" * 32, 100)
ARM64_IMAGE_MAGIC_AT = 56


def _run(*cmd: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [str(c) for c in cmd], capture_output=True, text=True, check=True, **kw
    )


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Path, Path]:
    """A kernel that looks like an arm64 Image to U-Boot, and a small initramfs."""
    header = bytearray(64)
    header[ARM64_IMAGE_MAGIC_AT : ARM64_IMAGE_MAGIC_AT + 4] = b"ARM\x64"
    kernel = tmp_path / "Image"
    banner = b"Linux version 6.1.0-57-arm64 (debian-kernel@lists.debian.org) #1 SMP\n"
    kernel.write_bytes(bytes(header) + os.urandom(8192) + banner)
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(
        bootimage.cpio.build([bootimage.cpio.Entry("init", 0o100755, b"#!/bin/sh\n")])
    )
    return kernel, initrd


@pytest.fixture(scope="module")
def control_dtb(tmp_path_factory: pytest.TempPathFactory, boot_keys: bootkeys.DevBootKeys) -> Path:
    """QEMU virt's DTB with our FIT key and a boot command that only checks the FIT."""
    work = tmp_path_factory.mktemp("dtb")
    dtb = work / "virt.dtb"
    _run("qemu-system-aarch64", "-M", f"virt,dumpdtb={dtb}", "-cpu", "cortex-a57", "-m", "512")
    bootimage.add_fit_key(dtb, boot_keys.fit, work)
    command = f"bootm start {FIT_ADDR:#x}#{bootimage.FIT_CONFIG}; echo ABRESULT=$?; reset"
    _run("fdtput", "-p", "-t", "s", dtb, "/config", "bootcmd", command)
    _run("fdtput", "-t", "i", dtb, "/config", "bootdelay", "--", "-2")
    _run("fdtput", "-t", "i", dtb, "/config", "load-environment", "0")
    padded = work / "ctl.dtb"
    _run("dtc", "-q", "-I", "dtb", "-O", "dtb", "-p", "4096", "-o", padded, dtb)
    return padded


def _uboot_check(dtb: Path, fit: Path) -> str:
    """Power on U-Boot with `fit` in memory; the console of one boot command run."""
    done = subprocess.run(
        [
            *("qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-m", "512"),
            *("-nographic", "-nic", "none", "-no-reboot", "-accel", "tcg"),
            *("-bios", str(UBOOT), "-dtb", str(dtb)),
            *("-device", f"loader,file={fit},addr={FIT_ADDR:#x},force-raw=on"),
        ],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    console = done.stdout.decode("utf-8", "replace").replace("\r", "")
    assert "ABRESULT=" in console, console[-2000:]
    return console


def _fit(parts: tuple[Path, Path], out: Path, key: bootimage.FitKey, **kw: object) -> Path:
    bootimage.build_fit(
        parts[0], parts[1], VERITY, out, arch="arm64", key=key, load_address=LOAD, **kw
    )  # type: ignore[arg-type]
    return out


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 1
    path.write_bytes(bytes(data))


def test_verity_archive_is_read_by_cpio(tmp_path: Path) -> None:
    """The appended archive unpacks with cpio(1) to the one file `/init` reads."""
    archive = bootimage.initramfs_with_verity(b"x" * 5, VERITY)
    assert archive[:5] == b"x" * 5 and archive[5:8] == b"\0\0\0"
    subprocess.run(
        ["cpio", "-idm", "--quiet"],
        input=archive[8:],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    assert (tmp_path / bootimage.VERITY_FILE).read_text() == VERITY.to_env() + "\n"


def test_fit_signs_the_configuration_and_every_image(
    parts: tuple[Path, Path], tmp_path: Path, boot_keys: bootkeys.DevBootKeys
) -> None:
    source = bootimage.fit_source(
        arch="arm64",
        kernel=parts[0],
        ramdisk=parts[1],
        fdt=parts[1],
        key_name="dev",
        load_address=LOAD,
        description="d",
    )
    assert 'sign-images = "kernel", "ramdisk", "fdt";' in source
    listing = _run("mkimage", "-l", _fit(parts, tmp_path / "b.itb", boot_keys.fit)).stdout
    assert "Sign algo:    sha256,rsa2048:dev" in listing
    assert listing.count("Hash algo:    sha256") == 2


def test_fit_records_its_release_and_its_kernels(
    parts: tuple[Path, Path], tmp_path: Path, boot_keys: bootkeys.DevBootKeys
) -> None:
    """Root properties in the signed FIT: what `updater status` shows (also by `fdtget`)."""
    fit = _fit(parts, tmp_path / "b.itb", boot_keys.fit, version="2.0.0")
    kernel = _run("fdtget", fit, "/", "abupdate.kernel").stdout.strip()
    assert kernel == "6.1.0-57-arm64"
    info = bootfiles.boot_image_info(fit)
    assert (info.version, info.kernel) == ("2.0.0", "6.1.0-57-arm64")


def test_fit_is_reproducible(
    parts: tuple[Path, Path], tmp_path: Path, boot_keys: bootkeys.DevBootKeys
) -> None:
    one = _fit(parts, tmp_path / "1.itb", boot_keys.fit, build_time=1_700_000_000)
    two = _fit(parts, tmp_path / "2.itb", boot_keys.fit, build_time=1_700_000_000)
    assert one.read_bytes() == two.read_bytes()


def test_control_dtb_requires_the_key(control_dtb: Path) -> None:
    required = _run("fdtget", control_dtb, "/signature/key-dev", "required").stdout
    assert required.strip() == "conf"


@pytest.mark.qemu
def test_uboot_accepts_the_signed_fit(
    parts: tuple[Path, Path], tmp_path: Path, boot_keys: bootkeys.DevBootKeys, control_dtb: Path
) -> None:
    console = _uboot_check(control_dtb, _fit(parts, tmp_path / "b.itb", boot_keys.fit))
    assert "sha256,rsa2048:dev+ OK" in console
    assert "ABRESULT=0" in console


@pytest.mark.qemu
@pytest.mark.parametrize("part", ["kernel", "initramfs"])
def test_uboot_refuses_a_changed_byte(
    part: str,
    parts: tuple[Path, Path],
    tmp_path: Path,
    boot_keys: bootkeys.DevBootKeys,
    control_dtb: Path,
) -> None:
    fit = _fit(parts, tmp_path / "b.itb", boot_keys.fit)
    data = fit.read_bytes()
    at = data.find(b"ARM\x64") + 200 if part == "kernel" else data.find(VERITY.root_hash.encode())
    _flip(fit, at)
    console = _uboot_check(control_dtb, fit)
    node = "kernel" if part == "kernel" else "ramdisk"
    assert f"Bad hash value for 'hash' hash node in '{node}' image node" in console
    assert "ABRESULT=1" in console


@pytest.mark.qemu
def test_uboot_refuses_an_unsigned_fit(
    parts: tuple[Path, Path], tmp_path: Path, control_dtb: Path
) -> None:
    its = tmp_path / "u.its"
    source = bootimage.fit_source(
        arch="arm64",
        kernel=parts[0],
        ramdisk=parts[1],
        key_name="dev",
        load_address=LOAD,
        description="unsigned",
    )
    its.write_text(source.replace("signature {", "unsigned {"))
    _run("mkimage", "-f", its, tmp_path / "u.itb")
    console = _uboot_check(control_dtb, tmp_path / "u.itb")
    assert "Failed to verify required signature 'key-dev'" in console
    assert "ABRESULT=1" in console


@pytest.mark.qemu
def test_uboot_refuses_another_key(
    parts: tuple[Path, Path],
    tmp_path: Path,
    other_boot_keys: bootkeys.DevBootKeys,
    control_dtb: Path,
) -> None:
    console = _uboot_check(control_dtb, _fit(parts, tmp_path / "o.itb", other_boot_keys.fit))
    assert re.search(r"sha256,rsa2048:dev-\s+error!", console)
    assert "Failed to verify required signature 'key-dev'" in console
    assert "ABRESULT=1" in console


def test_uki_is_signed_for_secure_boot_and_grub(
    parts: tuple[Path, Path],
    tmp_path: Path,
    boot_keys: bootkeys.DevBootKeys,
    other_boot_keys: bootkeys.DevBootKeys,
) -> None:
    uki = tmp_path / "boot.efi"
    bootimage.build_uki(
        parts[0],
        parts[1],
        VERITY,
        uki,
        cmdline="console=ttyS0 lockdown=integrity",
        os_release='NAME="abupdate"\nVERSION_ID=1.2.0\n',
        signer=boot_keys.uefi_signer,
    )
    _run("sbverify", "--cert", boot_keys.uefi_cert("db"), uki)
    wrong = subprocess.run(
        ["sbverify", "--cert", str(other_boot_keys.uefi_cert("db")), str(uki)],
        capture_output=True,
        check=False,
    )
    assert wrong.returncode != 0
    _run("gpg", "--homedir", boot_keys.gpg_home, "--verify", uki.with_name("boot.efi.sig"), uki)
    sections = _run("objdump", "-h", uki).stdout
    for name in (".osrel", ".cmdline", ".linux", ".initrd"):
        assert f" {name} " in sections
    initrd = tmp_path / "initrd.out"
    _run("objcopy", "-O", "binary", "--only-section=.initrd", uki, initrd)
    assert initrd.read_bytes().startswith(parts[1].read_bytes())
    assert VERITY.to_env().encode() in initrd.read_bytes()
    cmdline = tmp_path / "cmdline.out"
    _run("objcopy", "-O", "binary", "--only-section=.cmdline", uki, cmdline)
    assert cmdline.read_bytes() == b"console=ttyS0 lockdown=integrity\0"
    # What `updater status` shows: the release from .osrel, the kernel's from .uname.
    info = bootfiles.boot_image_info(uki)
    assert (info.version, info.kernel) == ("1.2.0", "6.1.0-57-arm64")
    uname = tmp_path / "uname.out"
    _run("objcopy", "-O", "binary", "--only-section=.uname", uki, uname)
    assert uname.read_bytes() == b"6.1.0-57-arm64"


def test_boot_keys_are_private_and_labelled(boot_keys: bootkeys.DevBootKeys) -> None:
    for key in (boot_keys.fit.directory / "dev.key", boot_keys.root / "uefi" / "db.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert b"DEVELOPMENT ONLY" in key.read_bytes()
    assert boot_keys.gpg_public.stat().st_size > 0
    with pytest.raises(UsageError, match="already exists"):
        bootkeys.make_dev_boot_keys(boot_keys.root)


def test_a_missing_fit_key_is_named(parts: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"nokey\.key does not exist"):
        _fit(parts, tmp_path / "x.itb", bootimage.FitKey(tmp_path, "nokey"))


OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
GRUB_CHECK = """\
echo ABGRUB-START check_signatures=$check_signatures
regexp --set=1:root '^\\((.*)\\)' "$cmdpath"
echo ABGRUB-CAT-BEGIN
cat /hello.txt
echo ABGRUB-CAT-END
halt
"""


def _ovmf_boot(tmp_path: Path, boot_keys: bootkeys.DevBootKeys, esp_files: dict[str, Path]) -> str:
    """Boot OVMF with Secure Boot on and our boot_keys enrolled from a FAT disk holding `esp_files`.

    Returns the console once the machine powers off, or as soon as the firmware says it
    found nothing it may boot (it would wait there forever).
    """
    vars_fd = tmp_path / "vars.fd"
    bootkeys.enroll_uefi_keys(boot_keys, OVMF_VARS, vars_fd)
    esp = tmp_path / "esp.img"
    _run("mkfs.vfat", "-C", esp, "16384")
    _run("mmd", "-i", esp, "::/EFI", "::/EFI/BOOT")
    for name, src in esp_files.items():
        _run("mcopy", "-i", esp, src, f"::/{name}")
    cmd = [
        *("qemu-system-x86_64", "-M", "q35,smm=on", "-m", "512", "-smp", "1", "-accel", "tcg"),
        *("-global", "driver=cfi.pflash01,property=secure,value=on"),
        *("-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}"),
        *("-drive", f"if=pflash,format=raw,file={vars_fd}"),
        *("-nographic", "-nic", "none", "-no-reboot", "-drive", f"if=virtio,format=raw,file={esp}"),
    ]
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    ) as qemu:
        assert qemu.stdout is not None
        console = b""
        try:
            for line in qemu.stdout:
                console += line
                if b"No bootable option or device was found" in line:
                    break
        finally:
            qemu.kill()
    return console.decode("utf-8", "replace").replace("\r", "")


@pytest.mark.qemu
def test_secure_boot_runs_our_signed_grub_which_enforces_signatures(
    tmp_path: Path, boot_keys: bootkeys.DevBootKeys
) -> None:
    grub = tmp_path / "BOOTX64.EFI"
    bootimage.build_grub_efi(
        GRUB_CHECK, grub, pubkey=boot_keys.gpg_public, signer=boot_keys.uefi_signer
    )
    hello = tmp_path / "hello.txt"
    hello.write_text("signed hello\n")
    bootimage.gpg_sign(hello, tmp_path / "hello.txt.sig", boot_keys.gpg_home)
    esp = {
        "EFI/BOOT/BOOTX64.EFI": grub,
        "hello.txt": hello,
        "hello.txt.sig": tmp_path / "hello.txt.sig",
    }
    console = _ovmf_boot(tmp_path, boot_keys, esp)
    assert "ABGRUB-START check_signatures=enforce" in console
    shown = console.split("ABGRUB-CAT-BEGIN", 1)[1].split("ABGRUB-CAT-END", 1)[0]
    assert "signed hello" in shown

    # The same file changed after signing: GRUB refuses to read it.
    hello.write_text("changed hello\n")
    (tmp_path / "esp.img").unlink()
    console = _ovmf_boot(tmp_path, boot_keys, esp)
    shown = console.split("ABGRUB-CAT-BEGIN", 1)[1].split("ABGRUB-CAT-END", 1)[0]
    assert "changed hello" not in shown and "bad signature" in shown


@pytest.mark.qemu
def test_secure_boot_refuses_an_unsigned_grub(
    tmp_path: Path, boot_keys: bootkeys.DevBootKeys, other_boot_keys: bootkeys.DevBootKeys
) -> None:
    grub = tmp_path / "BOOTX64.EFI"
    bootimage.build_grub_efi(
        GRUB_CHECK, grub, pubkey=boot_keys.gpg_public, signer=other_boot_keys.uefi_signer
    )
    console = _ovmf_boot(tmp_path, boot_keys, {"EFI/BOOT/BOOTX64.EFI": grub})
    assert "Access Denied" in console
    assert "No bootable option or device was found" in console
    assert "ABGRUB-START" not in console


def _verified_board(name: str, chain: str) -> BoardConfig:
    with open(BOARD_DIR / f"{name}.toml", "rb") as f:
        data = tomllib.load(f)
    data["boot"]["chain"] = chain
    if chain == "fit":
        data["boot"]["fit_kernel_load"] = LOAD
    return parse_board(data)


def test_the_board_chooses_the_boot_image(
    parts: tuple[Path, Path], tmp_path: Path, boot_keys: bootkeys.DevBootKeys
) -> None:
    fit = tmp_path / "boot.itb"
    board = _verified_board("qemu-arm64-uboot", "fit")
    bootimage.build_for_board(board, *parts, VERITY, fit, keys=boot_keys, version="2.0.0")
    listing = _run("mkimage", "-l", fit).stdout
    assert "FIT description: qemu-arm64-uboot 2.0.0" in listing
    assert f"Load Address: {LOAD:#010x}" in listing

    uki = tmp_path / "boot.efi"
    board = _verified_board("qemu-x86_64-grub", "uki")
    bootimage.build_for_board(board, *parts, VERITY, uki, keys=boot_keys, version="2.0.0")
    _run("sbverify", "--cert", boot_keys.uefi_cert("db"), uki)
    osrel = tmp_path / "osrel"
    _run("objcopy", "-O", "binary", "--only-section=.osrel", uki, osrel)
    assert osrel.read_text() == 'NAME="qemu-x86_64-grub"\nVERSION_ID=2.0.0\n'

    with pytest.raises(UsageError, match="has no signed boot image"):
        bootimage.build_for_board(
            load_board(BOARD_DIR / "qemu-arm64-uboot.toml"),
            *parts,
            VERITY,
            fit,
            keys=boot_keys,
            version="1",
        )


def test_a_fit_board_needs_the_kernel_load_address() -> None:
    with open(BOARD_DIR / "qemu-arm64-uboot.toml", "rb") as f:
        data = tomllib.load(f)
    data["boot"]["chain"] = "fit"
    with pytest.raises(ConfigError, match=r"needs boot\.fit_kernel_load"):
        parse_board(data)
    data["boot"]["chain"] = "uki"
    with pytest.raises(ConfigError, match=r"boot\.chain 'uki' is not one for u-boot"):
        parse_board(data)
