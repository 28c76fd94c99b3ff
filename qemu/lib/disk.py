"""The boot partition (FAT; the ESP on amd64) and the GPT disk image around it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import bootfiles
import chain
from settings import BOOT_SIZE, SLOT_SIZE, SOURCE_DATE_EPOCH, STATE_ON_BOOT, MiB
from shell import run

from bootctl.board import BoardConfig
from bootctl.state import SlotVerity
from updater.statedir import SLOTS_FILE, SlotRecord, StateDir

ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
PARTITIONS = ("boot", "A", "B")
GRUB_MODULES = [
    *("part_gpt", "fat", "normal", "linux", "loadenv", "test", "echo", "configfile", "cat"),
    *("ls", "reboot", "halt", "sleep", "efi_gop", "all_video", "search", "search_fs_file"),
    *("search_label", "regexp", "true", "gzio"),
]

Layout = list[tuple[int, int]]


def boot_files(
    board: BoardConfig,
    board_path: Path,
    *,
    kernel: Path,
    initrd: Path,
    verity_a: str,
    version: str,
    work: Path,
) -> tuple[dict[str, Path], dict[str, Path]]:
    """What goes on the boot partition (path there -> local file, written under `work`), and
    the firmware's files next to the disk (sidecar suffix -> local file; see `chain`)."""
    env_name = board.env.uboot_file if board.bootloader == "u-boot" else board.env.grub_file
    env_file = work / "env.bin"
    work.mkdir(parents=True, exist_ok=True)
    bootfiles.write_env(board, bootfiles.initial_env(board, verity_a), env_file)
    state = {f"{STATE_ON_BOOT}/{SLOTS_FILE}": factory_record(board, verity_a, version, work)}
    if board.boot.chain != "script":
        signed, sidecars = chain.signed_boot_files(
            board,
            board_path,
            kernel=kernel / "vmlinuz",
            initrd=initrd,
            verity_a=verity_a,
            version=version,
            work=work / "chain",
        )
        return {**signed, env_name: env_file, **state}, sidecars
    files: dict[str, Path] = {board.boot.kernel: kernel / "vmlinuz", board.boot.initrd: initrd}
    files.update(bootfiles.boot_script(board, board_path, work / "script"))
    files[env_name] = env_file
    files.update(state)
    if board.bootloader == "grub":
        efi = work / "BOOTX64.EFI"
        run("grub-mkimage", "-O", "x86_64-efi", "-p", "/EFI/BOOT", "-o", efi, *GRUB_MODULES)
        files["EFI/BOOT/BOOTX64.EFI"] = efi
    return files, {}


def factory_record(board: BoardConfig, verity_a: str, version: str, work: Path) -> Path:
    """The updater's record of what slot A holds from the factory (its `slots.json`), so that
    `updater status` and the fleet client's `sw_version` name the running release at once."""
    state = StateDir(work / "state")
    record = SlotRecord(
        version=version,
        security_version=0,
        compatible=board.compatible,
        root_hash=SlotVerity.from_env(verity_a).root_hash,
        installed_at=SOURCE_DATE_EPOCH,
    )
    state.record_slot("A", record)
    return state.path / SLOTS_FILE


def make_boot_partition(files: dict[str, Path], work: Path) -> Path:
    """FAT image holding `files`, byte for byte the same for the same inputs."""
    # Staged with fixed timestamps and copied with `mcopy -s -m`, without a volume label
    # (mkfs.vfat would date it).
    stage = work / "stage"
    for dest, src in sorted(files.items()):
        target = stage / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    for path in [*stage.rglob("*"), stage]:
        os.utime(path, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))
    image = work / "boot.vfat"
    image.unlink(missing_ok=True)
    run(
        *("mkfs.vfat", "-C", "-F", "32", "-i", "abcd1234", image, str(BOOT_SIZE // 1024)),
        stdout=subprocess.DEVNULL,
    )
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    run("mcopy", "-s", "-m", "-i", image, *sorted(stage.iterdir()), "::/", env=env)
    return image


def partition_table(boot_size: int, slot_size: int) -> tuple[str, int, Layout]:
    """sfdisk script, disk size and (offset, size) of each partition in bytes."""
    start = MiB
    layout = []
    for size in (boot_size, slot_size, slot_size):
        layout.append((start, size))
        start += size
    total = start + MiB
    lines = ["label: gpt", "label-id: 5A8D1D0E-0B4E-4C1B-9B8D-6D2C6E5F1A01", "unit: sectors"]
    names = ["boot", "rootfs-A", "rootfs-B"]
    types = [ESP_TYPE, LINUX_TYPE, LINUX_TYPE]
    for i, ((off, size), name, typ) in enumerate(zip(layout, names, types, strict=True)):
        uuid = f"5A8D1D0E-0B4E-4C1B-9B8D-6D2C6E5F1A1{i}"
        attrs = ', attrs="LegacyBIOSBootable"' if i == 0 else ""
        lines.append(
            f'start={off // 512}, size={size // 512}, type={typ}, uuid={uuid}, name="{name}"{attrs}'
        )
    return "\n".join(lines) + "\n", total, layout


def make_disk(out: Path, boot: Path, slot_a: Path) -> Layout:
    """GPT disk: boot partition, slot A (written), slot B (empty)."""
    script, total, layout = partition_table(BOOT_SIZE, SLOT_SIZE)
    if slot_a.stat().st_size > SLOT_SIZE:
        raise RuntimeError(f"slot image {slot_a} is larger than the slot ({SLOT_SIZE} bytes)")
    tmp = out.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    with open(tmp, "wb") as f:
        f.truncate(total)
    run(
        *("sfdisk", "--no-reread", "--no-tell-kernel", "-q", tmp),
        input=script,
        stdout=subprocess.DEVNULL,
    )
    for (off, _), src in zip(layout[:2], (boot, slot_a), strict=True):
        run(
            *("dd", f"if={src}", f"of={tmp}", "bs=1M", f"seek={off}", "oflag=seek_bytes"),
            *("conv=notrunc,sparse", "status=none"),
        )
    tmp.rename(out)
    return layout
