"""A slot's root filesystem: the base tree, our wheels, the overlay, the device's config."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import wheels
from cache import cached, digest, remove
from settings import (
    BUILD,
    GUEST_SERVER_IP,
    ROOTFS_OVERLAY,
    SOURCE_DATE_EPOCH,
    STATE_ON_BOOT,
    UPDATE_SERVER,
    Arch,
)
from shell import compileall, log, run

from bootctl.board import BoardConfig
from updater.config import load_config


@dataclass(frozen=True)
class RootfsOptions:
    """Variants of the slot root filesystem, used by the flow tests."""

    version: str = "1.0.0"
    mark_good: bool = True
    health_fails: bool = False
    keyring: str = ""
    server_ca: str = ""


#: The commands a device runs (bundle-tool is a build-host tool: it is not installed).
SCRIPTS = {
    "abctl": "bootctl.cli",
    "updater": "updater.cli",
}
_MOUNT_POINTS = ("proc", "sys", "dev", "tmp", "run", "var", "root", "mnt", "media")
_BROKEN_HEALTH = "#!/bin/sh\necho 'health: this image is broken on purpose'\nexit 1\n"


def safe_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write a file inside a target tree, replacing (never following) a symlink there.

    Busybox applet links point at /bin/busybox: writing through one would write the host's.
    """
    if path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)


def device_files(
    arch: Arch, board: BoardConfig, board_path: Path, opts: RootfsOptions
) -> dict[str, tuple[bytes | str, int]]:
    """The image's own files (path in the tree -> content, mode): config, identity, trust."""
    etc = "etc/abupdate"
    files: dict[str, tuple[bytes | str, int]] = {
        f"{etc}/board.toml": (board_path.read_bytes(), 0o644),
        f"{etc}/image.conf": (
            f"BOOT_DEVICE={board.boot.device}\nBOOT_MOUNT={board.boot.mount}\n",
            0o644,
        ),
        f"{etc}/keyring.pem": (Path(opts.keyring).read_bytes(), 0o644),
    }
    device = (
        'board = "board.toml"\nkeyring = "keyring.pem"\n'
        f'state_dir = "{board.boot.mount}/{STATE_ON_BOOT}"\n'
    )
    if opts.server_ca:
        files[f"{etc}/server-ca.pem"] = (Path(opts.server_ca).read_bytes(), 0o644)
        device += '\n[http]\nca_file = "server-ca.pem"\n'
    files[f"{etc}/device.toml"] = (device, 0o644)
    files["etc/hosts"] = (f"127.0.0.1 localhost\n{GUEST_SERVER_IP} {UPDATE_SERVER}\n", 0o644)
    if opts.mark_good:
        files[f"{etc}/mark-good-on-boot"] = ("", 0o644)
    if opts.health_fails:
        files[f"{etc}/health"] = (_BROKEN_HEALTH, 0o755)
    if board.env.fw_env_config:
        files["etc/fw_env.config"] = ("".join(f"{x}\n" for x in board.env.fw_env_config), 0o644)
    release = (
        'NAME="abupdate QEMU device"\nID=abupdate-qemu\n'
        f'VERSION_ID={opts.version}\nVERSION="{opts.version}"\n'
        f'PRETTY_NAME="abupdate QEMU device {opts.version} ({arch.name})"\n'
    )
    files["etc/os-release"] = (release, 0o644)
    files["usr/lib/os-release"] = (release, 0o644)
    return files


def assemble(
    tree: Path,
    arch: Arch,
    *,
    board: BoardConfig,
    board_path: Path,
    base: Path,
    wheel_dirs: tuple[Path, ...],
    opts: RootfsOptions,
) -> None:
    """Fill `tree` (which must not exist) with the slot's files."""
    run("cp", "-a", "--reflink=auto", base, tree)
    site = tree / "usr/lib/python3/dist-packages"
    wheels.install(arch, site, *wheel_dirs)
    shutil.rmtree(site / "bin", ignore_errors=True)
    # One process, fixed order: marshal output depends on refcounts.
    compileall(tree, site, jobs=1, force=True)
    for name, module in SCRIPTS.items():
        script = f"#!/usr/bin/python3\nimport sys\nfrom {module} import main\nsys.exit(main())\n"
        safe_write(tree / "usr/bin" / name, script, 0o755)
    for src in sorted(ROOTFS_OVERLAY.rglob("*")):
        if src.is_file():
            dest = tree / src.relative_to(ROOTFS_OVERLAY)
            safe_write(dest, src.read_bytes(), src.stat().st_mode & 0o777)
    for d in (*_MOUNT_POINTS, board.boot.mount.lstrip("/")):
        (tree / d).mkdir(parents=True, exist_ok=True)
    for rel, (data, mode) in device_files(arch, board, board_path, opts).items():
        safe_write(tree / rel, data, mode)
    load_config(tree / "etc/abupdate/device.toml")  # the updater's own checks, at build time


def squashfs(tree: Path, out: Path) -> None:
    """Write `tree` as a zstd squashfs padded to whole 4096-byte blocks."""
    epoch = str(SOURCE_DATE_EPOCH)
    run(
        *("mksquashfs", tree, out, "-comp", "zstd", "-noappend", "-quiet", "-no-progress"),
        *("-all-root", "-mkfs-time", epoch, "-all-time", epoch),
        stdout=subprocess.DEVNULL,
    )
    size = out.stat().st_size
    with open(out, "r+b") as f:
        f.truncate(size + (-size % 4096))


def make_rootfs(
    arch: Arch,
    *,
    board_path: Path,
    board: BoardConfig,
    base: Path,
    wheel_dirs: tuple[Path, ...],
    opts: RootfsOptions,
) -> Path:
    """The slot's root filesystem image, cached on everything that goes into it."""
    key = digest(
        "rootfs",
        4,
        Path(opts.keyring),
        *([Path(opts.server_ca)] if opts.server_ca else []),
        base.name,
        *(d.name for d in wheel_dirs),
        ROOTFS_OVERLAY,
        board_path,
        opts,
    )

    def make(out: Path) -> None:
        tree = BUILD / arch.name / f"rootfs-tree.{os.getpid()}"
        remove(tree)
        log(f"{arch.name}: assembling the root filesystem, version {opts.version}")
        try:
            assemble(
                tree,
                arch,
                board=board,
                board_path=board_path,
                base=base,
                wheel_dirs=wheel_dirs,
                opts=opts,
            )
            log(f"{arch.name}: mksquashfs")
            squashfs(tree, out)
        finally:
            remove(tree)

    return cached(BUILD / arch.name / f"rootfs-{key}.img", make)
