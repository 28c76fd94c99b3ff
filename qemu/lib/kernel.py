"""Debian's kernel for the target, and the modules the initramfs loads, in load order."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import aptroot
from cache import cached, digest
from settings import BUILD, CACHE, Arch
from shell import log, run


def kernel_deb(arch: Arch) -> Path:
    """Download the kernel package the linux-image-<arch> metapackage points at."""
    apt = aptroot.AptRoot(CACHE / arch.name / "apt", arch.name)
    pkg = apt.depends_of(f"linux-image-{arch.name}")
    found = sorted(apt.archives.glob(f"{pkg}_*_{arch.name}.deb"))
    if not found:
        run("apt-get", "-q", "download", pkg, cwd=apt.archives, env=apt.env(), capture_output=True)
        found = sorted(apt.archives.glob(f"{pkg}_*_{arch.name}.deb"))
    return found[-1]


def make_kernel(arch: Arch, deb: Path) -> Path:
    """Folder with `vmlinuz`, `kver` and `modules/` (with `load-order`), cached."""

    def make(out: Path) -> None:
        log(f"{arch.name}: unpacking {deb.name}")
        tree = out / "tree"
        tree.mkdir()
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        run(
            *("tar", "-x", "-C", tree, "--wildcards", "./boot/vmlinuz-*", "./lib/modules/*"),
            stdin=tar.stdout,
        )
        tar.wait()
        (vmlinuz,) = (tree / "boot").glob("vmlinuz-*")
        kver = vmlinuz.name.removeprefix("vmlinuz-")
        run("depmod", "-b", tree, kver)
        show = run(
            *("modprobe", "-a", "-d", tree, "-S", kver, "--show-depends", *arch.modules),
            capture_output=True,
        ).stdout
        mods = out / "modules"
        mods.mkdir()
        order: list[str] = []
        for line in show.splitlines():
            parts = line.split()
            if parts and parts[0] == "insmod":
                ko = Path(parts[1])
                if ko.name not in order:
                    order.append(ko.name)
                    shutil.copy2(ko, mods / ko.name)
        (mods / "load-order").write_text("".join(f"{m}\n" for m in order))
        shutil.move(vmlinuz, out / "vmlinuz")
        (out / "kver").write_text(kver)
        shutil.rmtree(tree)

    key = digest("kernel", 2, deb.name, arch.modules)
    return cached(BUILD / arch.name / f"kernel-{key}", make, folder=True)
