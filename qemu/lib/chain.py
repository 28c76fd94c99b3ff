"""The verified boot chain of an image whose board has `boot.chain` `fit` or `uki`.

Built with the commands a firmware engineer runs (docs/verified-boot.md): `bundle-tool
boot-image` for slot A's signed boot image (slot B's comes with its first update), and
`bundle-tool bootloader` for what holds the boot key: U-Boot's control DTB (kept next to
the disk image, given to QEMU with `-dtb`) or the signed standalone GRUB on the ESP, with
our PK/KEK/db enrolled in the OVMF variable store and Secure Boot on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import vm
from bootfiles import REPRODUCIBLE
from devkeys import boot_keys
from settings import OVMF_VARS
from shell import run

from bootctl.board import BoardConfig
from bundle_tool import bootkeys, cpio

#: In each release's initramfs: the release's version, which /init prints, so that the
#: device flows see which boot image runs.
RELEASE_FILE = "etc/abupdate/release"


def control_dtb(board_path: Path, keys: Path, work: Path) -> Path:
    """U-Boot's control DTB for the arm64 machine `vm.qemu_command` starts, with the FIT key
    and the board's boot command (`bundle-tool bootloader`).

    QEMU describes the machine it was started as (with `-bios`, virt leaves out the GPIO
    block; a DTB naming it crashes the kernel), so the DTB is dumped with the same options.
    The random `rng-seed` and `kaslr-seed` QEMU puts in /chosen are removed: a seed fixed
    in a file would be the same at every boot, and the output would differ at every build.
    """
    plain = work / "virt.dtb"
    run(
        *("qemu-system-aarch64", *vm.ARM64_MACHINE, "-smp", "1", "-m", str(vm.DEFAULT_MEMORY)),
        *("-display", "none", "-nic", "none", "-machine", f"dumpdtb={plain}"),
        capture_output=True,
    )
    for prop in ("rng-seed", "kaslr-seed"):
        run("fdtput", "-d", plain, "/chosen", prop)
    control = work / "control.dtb"
    _bundle_tool(
        *("bootloader", "--board-config", board_path, "--boot-keys", keys),
        *("--dtb", plain, "-o", control),
    )
    return control


def _bundle_tool(*args: str | Path) -> None:
    run(sys.executable, "-m", "bundle_tool.cli", *args, env=REPRODUCIBLE, capture_output=True)


def release_initramfs(initrd: Path, version: str, work: Path) -> Path:
    """The image's initramfs with `version` in `RELEASE_FILE` (an archive appended)."""
    data = initrd.read_bytes()
    archive = cpio.build(
        [
            cpio.Entry("etc", 0o040755),
            cpio.Entry("etc/abupdate", 0o040755),
            cpio.Entry(RELEASE_FILE, 0o100444, f"{version}\n".encode()),
        ]
    )
    out = work / "initrd-release.img"
    out.write_bytes(data + b"\0" * (-len(data) % 4) + archive)
    return out


def release_boot_files(
    board: BoardConfig,
    board_path: Path,
    *,
    kernel: Path,
    initrd: Path,
    verity: str,
    version: str,
    work: Path,
) -> dict[str, Path]:
    """The signed boot files of one release (`bundle-tool boot-image`): slot class -> file
    named as the board's `boot.files` name it (a FIT, or a UKI and its gpg signature).
    The initramfs carries the release's version (`release_initramfs`)."""
    work.mkdir(parents=True, exist_ok=True)
    image = work / board.boot.image
    initrd = release_initramfs(initrd, version, work)
    _bundle_tool(
        *("boot-image", "--board-config", board_path, "--kernel", kernel, "--initramfs", initrd),
        *("--verity", verity, "--version", version, "--boot-keys", boot_keys(), "-o", image),
    )
    files = {slot_class: work / name for slot_class, name in board.boot.files}
    missing = [str(f) for f in files.values() if not f.exists()]
    if missing:
        raise RuntimeError(f"bundle-tool boot-image wrote no {', '.join(missing)}")
    return files


def signed_boot_files(
    board: BoardConfig,
    board_path: Path,
    *,
    kernel: Path,
    initrd: Path,
    verity_a: str,
    version: str,
    work: Path,
) -> tuple[dict[str, Path], dict[str, Path]]:
    """Slot A's signed boot files and the bootloader that checks them.

    Returns:
        (path on the boot partition -> local file, sidecar suffix -> local file), the
        sidecars being what the firmware gets beside the disk (settings.SIDECARS).
    """
    keys = boot_keys()
    release = release_boot_files(
        board,
        board_path,
        kernel=kernel,
        initrd=initrd,
        verity=verity_a,
        version=version,
        work=work,
    )
    slot_a = board.slots[0]
    files = {f"{slot_a.boot_dir}/{path.name}": path for path in release.values()}
    sidecars: dict[str, Path] = {}
    if board.boot.chain == "fit":
        sidecars[".dtb"] = control_dtb(board_path, keys, work)
    else:
        grub = work / "BOOTX64.EFI"
        _bundle_tool("bootloader", "--board-config", board_path, "--boot-keys", keys, "-o", grub)
        files["EFI/BOOT/BOOTX64.EFI"] = grub
        enrolled = work / "ovmf-vars"
        bootkeys.enroll_uefi_keys(bootkeys.DevBootKeys(keys), OVMF_VARS, enrolled)
        marker = work / "secure-boot"
        marker.write_text("our PK, KEK and db are enrolled in the variable store\n")
        sidecars.update({".ovmf-vars": enrolled, ".secure-boot": marker})
    return files, sidecars
