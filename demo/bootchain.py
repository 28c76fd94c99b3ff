"""The verified boot chain on plain files (`make demo`, after the quick start).

What a release of a verified board carries and how the device installs it, without
QEMU (docs/qemu.md shows the same chain booting in QEMU). Everything runs in
./demo-out/chain, with the real tools, no root:

1. development boot keys (`bundle-tool keygen --boot`) and bundle signing keys;
2. a root filesystem of release 1.1.0 and stand-ins for a kernel and an initramfs
   (the demo boots nothing, so their contents do not matter to the tools);
3. U-Boot boards: the slot's signed FIT (`bundle-tool boot-image`), listed with
   `mkimage -l`; its initramfs carries the rootfs's root hash; the control DTB that
   requires the key (`bundle-tool bootloader`);
4. UEFI boards: the signed UKI, checked with `sbverify` and gpg as the firmware and GRUB
   check it; one changed byte and both refuse;
5. a bundle with both images (`--image rootfs=... --image boot=boot.itb`), verified;
6. a device on files: `updater install` writes the rootfs into slot B and the FIT into
   the boot folder `slot-B/`, next to it, before the one environment write.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from quickstart import REPO, device_on_files, rootfs, run, step, tool

from bundle_tool import cpio

OUT = Path("demo-out") / "chain"
FIT_BOARD = REPO / "board-configs" / "qemu-arm64-fit.toml"
UKI_BOARD = REPO / "board-configs" / "qemu-x86_64-uki.toml"
SALT = "5a" * 32
IMAGE_SIZE = 16 << 20


def stand_ins(out: Path) -> tuple[Path, Path]:
    """A stand-in arm64 kernel (an `Image` header and filler) and a one-file initramfs."""
    header = bytearray(64)
    header[56:60] = b"ARM\x64"  # the arm64 Image magic: what mkimage and U-Boot look at
    kernel = out / "vmlinuz"
    kernel.write_bytes(bytes(header) + b"demo kernel stand-in\n" * 512)
    initrd = out / "initrd.img"
    initrd.write_bytes(
        cpio.build([cpio.Entry("init", 0o100755, b"#!/bin/sh\necho demo initramfs\n")])
    )
    return kernel, initrd


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    os.environ["SOURCE_DATE_EPOCH"] = "1700000000"
    bt = tool("bundle-tool")

    step("chain 1. boot keys and bundle keys (DEVELOPMENT ONLY)")
    run(bt, "keygen", "--boot", "-o", OUT / "bootkeys")
    run(bt, "keygen", "-o", OUT / "keys")

    step("chain 2. release 1.1.0: root filesystem, kernel and initramfs (stand-ins)")
    rootfs("1.0.0", OUT / "rootfs-1.0.0.img")
    rootfs("1.1.0", OUT / "rootfs-1.1.0.img")
    kernel, initrd = stand_ins(OUT)
    release: list[str | Path] = [
        "--kernel",
        kernel,
        "--initramfs",
        initrd,
        "--rootfs",
        OUT / "rootfs-1.1.0.img",
    ]
    release += ["--salt", SALT, "--version", "1.1.0", "--boot-keys", OUT / "bootkeys"]

    step("chain 3. U-Boot: the slot's signed FIT, with the root hash in its initramfs")
    fit = OUT / "boot.itb"
    run(bt, "boot-image", "--board-config", FIT_BOARD, *release, "-o", fit)
    run("mkimage", "-l", fit)
    ramdisk = OUT / "ramdisk"
    run("dumpimage", "-T", "flat_dt", "-p", "1", "-o", ramdisk, fit)
    # The kernel unpacks the archives of an initramfs one after the other; the second one,
    # appended by boot-image, holds the root hash.
    appended = OUT / "appended.cpio"
    size = initrd.stat().st_size
    appended.write_bytes(ramdisk.read_bytes()[size + -size % 4 :])
    unpacked = OUT / "ramdisk.d"
    unpacked.mkdir()
    run("cpio", "-idmv", "-D", unpacked, "-F", appended)
    print(f"etc/abupdate/verity: {(unpacked / 'etc/abupdate/verity').read_text().strip()}")
    out = run("veritysetup", "format", "--salt", SALT, OUT / "rootfs-1.1.0.img", OUT / "tree")
    print("= the root hash veritysetup computes for rootfs-1.1.0.img above; U-Boot checks it")
    print("  with the kernel under the configuration's signature.")
    assert (
        next(line for line in out.splitlines() if line.startswith("Root hash")).split()[-1]
        in (unpacked / "etc/abupdate/verity").read_text()
    )
    dtb = OUT / "board.dtb"
    source = OUT / "board.dts"
    source.write_text("/dts-v1/;\n/ { };\n")  # a stand-in for the board's own DTB
    run("dtc", "-I", "dts", "-O", "dtb", "-o", dtb, source)
    control = OUT / "control.dtb"
    run(
        bt,
        "bootloader",
        "--board-config",
        FIT_BOARD,
        "--boot-keys",
        OUT / "bootkeys",
        "--dtb",
        dtb,
        "-o",
        control,
    )
    run("fdtget", control, "/signature/key-dev", "required")
    run("fdtget", control, "/config", "load-environment")
    print("U-Boot built with this DTB refuses any FIT not signed by key-dev and runs only")
    print("its fixed boot command (/config/bootcmd), never a script from the disk.")

    step("chain 4. UEFI: the slot's signed UKI, checked as the firmware and GRUB check it")
    uki = OUT / "boot.efi"
    run(bt, "boot-image", "--board-config", UKI_BOARD, *release, "-o", uki)
    run("sbverify", "--cert", OUT / "bootkeys/uefi/db.crt", uki)
    run("gpg", "--homedir", OUT / "bootkeys/gpg", "--verify", OUT / "boot.efi.sig", uki)
    bad = OUT / "tampered.efi"
    data = bytearray(uki.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad.write_bytes(bytes(data))
    run("sbverify", "--cert", OUT / "bootkeys/uefi/db.crt", bad, expect=1)
    run("gpg", "--homedir", OUT / "bootkeys/gpg", "--verify", OUT / "boot.efi.sig", bad, expect=1)

    step("chain 5. a bundle of release 1.1.0: the rootfs and its signed FIT together")
    bundle = OUT / "update-1.1.0.bundle"
    keys = OUT / "keys"
    run(
        bt,
        "create",
        "--image",
        f"rootfs={OUT / 'rootfs-1.1.0.img'}",
        "--image",
        f"boot={fit}",
        "--salt",
        SALT,
        "--version",
        "1.1.0",
        "--board-config",
        FIT_BOARD,
        "--security-version",
        "1",
        "--key",
        keys / "signer.key",
        "--cert",
        keys / "signer.pem",
        "-o",
        bundle,
    )
    run(bt, "verify", bundle, "--keyring", keys / "ca.pem")

    step("chain 6. a device on files installs both into slot B's group")
    dev = OUT / "device"
    (dev / "boot" / "slot-A").mkdir(parents=True)
    device_on_files(dev, FIT_BOARD, OUT / "rootfs-1.0.0.img", keys / "ca.pem")
    run(tool("updater"), "install", bundle, "--config", dev / "device.toml")
    run(tool("updater"), "status", "--config", dev / "device.toml")
    run("ls", "-l", dev / "boot" / "slot-B")
    run("cmp", fit, dev / "boot" / "slot-B" / "boot.itb")
    print("slot B's FIT is in place, byte for byte, checked before it was renamed there; the")
    print("next boot runs it, and its initramfs opens slot B with the root hash it carries.")
    print(f"\nchain demo done; files are in {OUT}/")


if __name__ == "__main__":
    main()
