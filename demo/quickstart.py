"""The quick-start demo (`make demo`): build, sign, check and install an update.

It needs a checkout (the board configs) and the installed tools, so it lives
outside the packages a device carries.

Everything runs on plain files in ./demo-out, with the real tools, no root:

1. make throwaway development keys (`bundle-tool keygen`);
2. build two small ext4 root filesystems, release 1.0.0 and 1.1.0 (`mkfs.ext4 -d`);
3. pack 1.1.0 into a signed bundle, show it and verify it (`bundle-tool create/info/verify`);
4. set up a device on files, booted from slot A with 1.0.0 (`veritysetup format`, `abctl init`);
5. install the bundle into slot B (`updater install`) and check the slot with `veritysetup verify`;
6. show that a tampered bundle is refused and the device still boots slot A.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

OUT = Path("demo-out")
REPO = Path(__file__).resolve().parent.parent
BOARD = REPO / "board-configs" / "qemu-arm64-uboot.toml"
IMAGE_SIZE = 16 << 20
BIN = Path(sys.executable).parent


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(*args: str | Path, expect: int = 0, quiet: bool = False) -> str:
    """Run and echo a command; stop the demo if its exit status is not `expect`."""
    cmd = [str(a) for a in args]
    shown = [Path(c).name if c.startswith(str(BIN)) else c for c in cmd]
    print(f"$ {shlex.join(shown)}", flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if not quiet:
        sys.stdout.write(r.stdout)
    sys.stdout.write(r.stderr)
    if r.returncode != expect:
        sys.exit(f"demo: expected exit status {expect}, got {r.returncode}")
    if expect:
        print(f"(exit status {r.returncode}, as expected)")
    return r.stdout


def tool(name: str) -> Path:
    return BIN / name


def rootfs(version: str, path: Path) -> None:
    """A small ext4 image holding an os-release file, reproducible for the demo."""
    with tempfile.TemporaryDirectory() as tmp:
        etc = Path(tmp, "etc")
        etc.mkdir()
        (etc / "os-release").write_text(f'NAME="demo"\nVERSION_ID="{version}"\n')
        path.write_bytes(b"")
        os.truncate(path, IMAGE_SIZE)
        run("mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-U", "clear", "-d", tmp, path)


def device_on_files(dev: Path, board: Path, rootfs_a: Path, ca: Path) -> list[str | Path]:
    """A device on plain files in `dev`, slot A holding `rootfs_a` (its dm-verity tree made
    with veritysetup), slot B empty, booted from A; its environment made by `abctl init`.
    Returns the abctl command line for it."""
    dev.mkdir(parents=True, exist_ok=True)
    slot_a = dev / "slot-A.img"
    shutil.copy(rootfs_a, slot_a)
    out = run("veritysetup", "format", f"--hash-offset={IMAGE_SIZE}", slot_a, slot_a)
    root = next(line.split()[-1] for line in out.splitlines() if line.startswith("Root hash"))
    salt = next(line.split()[-1] for line in out.splitlines() if line.startswith("Salt"))
    (dev / "slot-B.img").write_bytes(b"")
    shutil.copy(ca, dev / "keyring.pem")
    (dev / "cmdline").write_text("console=ttyAMA0 abupdate.slot=A\n")
    (dev / "fw_env.config").write_text(f"{(dev / 'uboot.env').resolve()} 0x0000 0x4000\n")
    (dev / "device.toml").write_text(
        f'board = "{board}"\nkeyring = "keyring.pem"\nstate_dir = "state"\n'
        'cmdline = "cmdline"\nboot_mount = "boot"\n'
        '[slots.A]\ndevice = "slot-A.img"\n[slots.B]\ndevice = "slot-B.img"\n'
        '[env]\nfw_env_config = ["uboot.env 0x0000 0x4000"]\n'
    )
    abctl: list[str | Path] = [tool("abctl"), "--board", board]
    abctl += ["--env-config", dev / "fw_env.config", "--cmdline", dev / "cmdline"]
    run(*abctl, "init", "--verity", f"A={root}:{salt}:{IMAGE_SIZE // 4096}")
    return abctl


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    os.environ.update(env)

    step("1. development keys (DEVELOPMENT ONLY)")
    run(tool("bundle-tool"), "keygen", "-o", OUT / "keys")

    step("2. two root filesystem images")
    rootfs("1.0.0", OUT / "rootfs-1.0.0.img")
    rootfs("1.1.0", OUT / "rootfs-1.1.0.img")

    step("3. a signed bundle of 1.1.0: create, info, verify")
    bundle = OUT / "update-1.1.0.bundle"
    run(
        tool("bundle-tool"),
        "create",
        "--image",
        OUT / "rootfs-1.1.0.img",
        "--version",
        "1.1.0",
        "--board-config",
        BOARD,
        "--security-version",
        "1",
        "--key",
        OUT / "keys/signer.key",
        "--cert",
        OUT / "keys/signer.pem",
        "-o",
        bundle,
    )
    run(tool("bundle-tool"), "info", bundle, "--json")
    run(tool("bundle-tool"), "verify", bundle, "--keyring", OUT / "keys/ca.pem")

    step("4. a device on plain files, booted from slot A with 1.0.0")
    dev = OUT / "device"
    abctl = device_on_files(dev, BOARD, OUT / "rootfs-1.0.0.img", OUT / "keys/ca.pem")
    slot_a = dev / "slot-A.img"
    run(*abctl, "mark-bad", "B")
    run("fw_printenv", "-c", dev / "fw_env.config")

    step("5. install the bundle into slot B")
    run(tool("updater"), "install", bundle, "--config", dev / "device.toml")
    run(tool("updater"), "status", "--config", dev / "device.toml")
    run("fw_printenv", "-c", dev / "fw_env.config", "BOOT_ORDER", "BOOT_B_VERITY")
    verity = run("fw_printenv", "-n", "-c", dev / "fw_env.config", "BOOT_B_VERITY", quiet=True)
    b_root, _, b_blocks = verity.strip().split(":")
    run(
        "veritysetup",
        "verify",
        dev / "slot-B.img",
        dev / "slot-B.img",
        b_root,
        f"--hash-offset={int(b_blocks) * 4096}",
    )
    print("slot B holds 1.1.0 and passes veritysetup verify; the bootloader boots it next.")

    step("6. a tampered bundle is refused")
    tampered = OUT / "tampered.bundle"
    data = bytearray(bundle.read_bytes())
    # One bit of the image's last block that holds data (a block of zeros is not read
    # from the bundle: its signed digest says what it holds).
    data[len(data.rstrip(b"\0")) - 1] ^= 0x01
    tampered.write_bytes(bytes(data))
    slot_a_before = slot_a.read_bytes()
    run(tool("bundle-tool"), "verify", tampered, "--keyring", OUT / "keys/ca.pem", expect=3)
    # Slot B already holds this very image: a plain re-run would keep B's blocks
    # (each one checked against the signed tree) and never read the tampered one.
    # --no-delta reads the whole bundle, as a first install of it does.
    run(
        tool("updater"),
        "install",
        tampered,
        "--no-delta",
        "--config",
        dev / "device.toml",
        expect=3,
    )
    run(tool("updater"), "status", "--config", dev / "device.toml")
    assert slot_a.read_bytes() == slot_a_before
    print(
        "The bad block was found before it was written. The booted slot A is byte-identical,\n"
        "and slot B, partly rewritten, has no tries and no root hash: the next boot is A."
    )
    print(f"\ndemo done; files are in {OUT}/")


if __name__ == "__main__":
    main()
