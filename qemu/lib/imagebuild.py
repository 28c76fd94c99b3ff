"""Build the QEMU device images (arm64 + U-Boot, amd64 + OVMF/GRUB) from Debian packages.

Everything works on plain files: packages are unpacked with `dpkg -x`, the initramfs is
written as a cpio archive, the root filesystem with `mksquashfs`, its verity tree with
`veritysetup format`, the boot partition with `mkfs.vfat -C` + `mcopy`, and the GPT disk
with `sfdisk` on a file and `dd conv=notrunc`. Each step is a module (`basetree`,
`kernel`, `initramfs`, `wheels`, `rootfs`, `slot`, `disk`) whose output is cached
(`cache.cached`) under the build folder of `settings`, keyed on a hash of its inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aptroot
import basetree
import chain
import disk
import initramfs
import kernel
import rootfs
import slot
import wheels
from cache import prune
from devkeys import dev_keys
from settings import ARCHES, BUILD, CACHE, REPO, SIDECARS, image_dir, sidecar
from shell import log

from bootctl.board import load_board

#: Cache entries kept per kind (most recently used first): enough for the flow tests'
#: variants of one session.
KEEP = {"rootfs-": 12, "slot-": 12, "base-": 2, "kernel-": 2, "initrd-": 2}
KEEP_WHEELS = 3


def link_or_copy(src: Path, dst: Path) -> None:
    """Put `src` at `dst` (a hard link when the file system allows)."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def build(
    arch_name: str,
    out_dir: Path,
    opts: rootfs.RootfsOptions,
    refresh: bool = False,
    rootfs_only: bool = False,
) -> dict[str, object]:
    """Build one architecture's image; return the description written to `info.json`."""
    t0 = time.monotonic()
    arch = ARCHES[arch_name]
    board_path = arch.board_path
    board = load_board(board_path)
    apt = aptroot.AptRoot(CACHE / arch.name / "apt", arch.name)
    apt.setup(refresh)
    debs = apt.closure([*basetree.PACKAGES, *arch.extra_packages])
    base = basetree.make_base(arch, debs)
    wheel_dirs = (wheels.fetch_wheels(arch), wheels.build_our_wheel())
    fs = rootfs.make_rootfs(
        arch, board_path=board_path, board=board, base=base, wheel_dirs=wheel_dirs, opts=opts
    )
    built = slot.make_slot(fs)
    out_dir.mkdir(parents=True, exist_ok=True)
    info: dict[str, object] = {
        "arch": arch.name,
        "board": str(board_path.relative_to(REPO)),
        "version": opts.version,
        "rootfs": str(out_dir / "rootfs.img"),
        "slot": str(out_dir / "slot.img"),
        "verity": built.verity,
    }
    link_or_copy(fs, out_dir / "rootfs.img")
    link_or_copy(built.image, out_dir / "slot.img")
    if rootfs_only and board.boot.chain != "script":
        # A release of a verified board: its signed boot image goes into the bundle with the
        # root filesystem (`bundle-tool create --image CLASS=FILE`, same salt as `verity`).
        kern = kernel.make_kernel(arch, kernel.kernel_deb(arch))
        initrd = initramfs.make_initramfs(arch, base, kern, board)
        shutil.rmtree(out_dir / "boot", ignore_errors=True)
        release = chain.release_boot_files(
            board,
            board_path,
            kernel=kern / "vmlinuz",
            initrd=initrd,
            verity=built.verity,
            version=opts.version,
            work=out_dir / "boot",
        )
        info["boot_images"] = {c: str(f) for c, f in release.items()}
    if not rootfs_only:
        kern = kernel.make_kernel(arch, kernel.kernel_deb(arch))
        initrd = initramfs.make_initramfs(arch, base, kern, board)
        work = out_dir / "work"
        shutil.rmtree(work, ignore_errors=True)
        files, sidecars = disk.boot_files(
            board,
            board_path,
            kernel=kern,
            initrd=initrd,
            verity_a=built.verity,
            version=opts.version,
            work=work,
        )
        boot = disk.make_boot_partition(files, work)
        layout = disk.make_disk(out_dir / "disk.img", boot, built.image)
        for suffix in SIDECARS:
            sidecar(out_dir / "disk.img", suffix).unlink(missing_ok=True)
        for suffix, src in sidecars.items():
            shutil.copyfile(src, sidecar(out_dir / "disk.img", suffix))
        info.update(
            disk=str(out_dir / "disk.img"),
            kernel=(kern / "kver").read_text(),
            partitions={
                n: {"offset": o, "size": s}
                for n, (o, s) in zip(disk.PARTITIONS, layout, strict=True)
            },
            boot_script="bootctl",
            boot_chain=board.boot.chain,
        )
        shutil.rmtree(work, ignore_errors=True)
    for prefix, keep in KEEP.items():
        prune(BUILD / arch.name, prefix, keep)
    prune(BUILD, "wheel-", KEEP_WHEELS)
    info["seconds"] = round(time.monotonic() - t0, 1)
    (out_dir / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def parser() -> argparse.ArgumentParser:
    """The command line of qemu/build-image."""
    p = argparse.ArgumentParser(prog="build-image", description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=sorted(ARCHES), required=True)
    p.add_argument("--out", type=Path, help="output directory (default qemu/build/ARCH/image)")
    p.add_argument("--version", default="1.0.0", help="image version (os-release VERSION_ID)")
    p.add_argument(
        "--no-mark-good",
        action="store_true",
        help="do not run the health check and `abctl mark-good` at boot",
    )
    p.add_argument(
        "--health-fails",
        action="store_true",
        help="image whose health check fails (it reboots before mark-good)",
    )
    p.add_argument(
        "--rootfs-only",
        action="store_true",
        help="build only rootfs.img and slot.img (e.g. for a bundle)",
    )
    p.add_argument("--refresh", action="store_true", help="refresh the Debian package lists")
    p.add_argument(
        "--keyring",
        type=Path,
        help="CA certificate(s) the device trusts (default qemu/build/keys/ca.pem, "
        "made with bundle-tool keygen when missing)",
    )
    p.add_argument("--server-ca", type=Path, help="CA the device trusts for HTTPS update servers")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    a = parser().parse_args(argv)
    out = a.out or image_dir(a.arch)
    keyring = a.keyring or dev_keys() / "ca.pem"
    opts = rootfs.RootfsOptions(
        a.version,
        not a.no_mark_good,
        a.health_fails,
        str(keyring.resolve()),
        str(a.server_ca.resolve()) if a.server_ca else "",
    )
    try:
        info = build(a.arch, out, opts, a.refresh, a.rootfs_only)
    except subprocess.CalledProcessError as e:
        log(f"error: {e}")
        for output in (e.stdout, e.stderr):
            if output:
                sys.stderr.write(output if isinstance(output, str) else output.decode())
        return 1
    except (aptroot.AptError, RuntimeError) as e:
        log(f"error: {e}")
        return 1
    log(f"{a.arch}: done in {info['seconds']} s -> {out}")
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
