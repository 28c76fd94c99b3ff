"""The unpacked Debian root every slot's filesystem starts from (busybox, python3, cryptsetup)."""

from __future__ import annotations

import shutil
from pathlib import Path

import aptroot
from cache import cached, digest
from settings import BUILD, Arch
from shell import compileall, log, run

PACKAGES = ["busybox-static", "python3", "cryptsetup-bin", "python3-crcmod"]
# Not wanted on a device; dpkg's database would only describe a root no dpkg manages.
_JUNK = (
    *("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info"),
    *("usr/share/lintian", "var/lib/dpkg", "etc/init.d"),
)


def make_base(arch: Arch, debs: list[Path]) -> Path:
    """Unpacked, precompiled Debian root of `debs` with the busybox applet links, cached."""

    def make(root: Path) -> None:
        log(f"{arch.name}: unpacking {len(debs)} packages")
        aptroot.unpack(debs, root)
        for junk in _JUNK:
            shutil.rmtree(root / junk, ignore_errors=True)
        applets = run("busybox", "--list-full", capture_output=True).stdout.split()
        for applet in applets:
            link = root / applet
            if not link.exists() and not link.is_symlink():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to("/bin/busybox")
        log(f"{arch.name}: precompiling the Python standard library")
        compileall(root, root / "usr/lib/python3.11", root / "usr/lib/python3/dist-packages")

    return cached(BUILD / arch.name / f"base-{digest('base', 3, debs)}", make, folder=True)
