"""qemu/run: boot a device image in QEMU with its serial console on this terminal."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import vm
from settings import ARCHES, GUEST_SERVER_IP, image_dir


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(
        prog="qemu/run",
        description="Boot a device image (built by qemu/build-image) with the serial console "
        "on this terminal. Log in is automatic (root shell). Quit with Ctrl-A X.",
    )
    p.add_argument("--arch", choices=sorted(ARCHES), required=True)
    p.add_argument("--disk", type=Path, help="disk image (default qemu/build/ARCH/image/disk.img)")
    p.add_argument("--usb", type=Path, help="file attached read-only as a second disk (/dev/vdb)")
    p.add_argument(
        "--forward",
        type=int,
        action="append",
        default=[],
        metavar="PORT",
        help=f"let the guest reach 127.0.0.1:PORT on this host as "
        f"{GUEST_SERVER_IP}:PORT (user-mode networking; repeatable)",
    )
    p.add_argument(
        "--serial",
        default="mon:stdio",
        help="QEMU -serial backend, e.g. tcp:127.0.0.1:5555,server=on,wait=on",
    )
    p.add_argument("--qmp", type=Path, help="QMP unix socket path")
    p.add_argument(
        "--accel",
        choices=["tcg", "kvm"],
        default="tcg",
        help="tcg (default) or kvm (falls back to tcg without /dev/kvm)",
    )
    p.add_argument(
        "--memory",
        type=int,
        default=1024,
        help="RAM in MiB (an arm64 image's control DTB describes 1024: keep it there)",
    )
    p.add_argument("--print", action="store_true", help="print the QEMU command, do not run it")
    a = p.parse_args(argv)
    disk = a.disk or image_dir(a.arch) / "disk.img"
    if not disk.exists():
        print(
            f"qemu/run: no disk image {disk}; run qemu/build-image --arch {a.arch}", file=sys.stderr
        )
        return 1
    cfg = vm.VmConfig(
        a.arch,
        disk,
        usb=a.usb,
        serial=a.serial,
        qmp=a.qmp,
        forward=a.forward,
        memory=a.memory,
        accel=a.accel,
    )
    cmd = vm.qemu_command(cfg)
    if a.print:
        print(shlex.join(cmd))
        return 0
    os.execvp(cmd[0], cmd)  # noqa: S606


if __name__ == "__main__":
    sys.exit(main())
