"""A device on plain files for installer tests: slots, U-Boot env, cmdline, keyring, state.

Slot A holds a release and is booted; slot B is empty and not bootable, as on a
freshly flashed device. Bundles are built with the real `bundle_tool` writer.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bootctl.board import load_board
from bootctl.control import SlotControl
from bootctl.state import SlotVerity
from bundle_tool import keygen, signing, verity
from bundle_tool.writer import CreateOptions, create_bundle
from updater.config import DeviceConfig, load_config

REPO = Path(__file__).resolve().parents[2]
BOARD = REPO / "board-configs" / "qemu-arm64-uboot.toml"
COMPATIBLE = "qemu-arm64-uboot"
BUILD_TIME = 1_700_000_000
SALT = bytes(range(32))


def image_bytes(blocks: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(blocks * 4096)


@dataclass
class Device:
    """Paths of one file-backed device."""

    root: Path
    pki: keygen.DevPki

    @property
    def config_path(self) -> Path:
        return self.root / "device.toml"

    @property
    def env_file(self) -> Path:
        return self.root / "uboot.env"

    def slot(self, name: str) -> Path:
        return self.root / f"slot-{name}.img"

    def config(self) -> DeviceConfig:
        return load_config(self.config_path)

    def control(self) -> SlotControl:
        cfg = self.config()
        return SlotControl.open(cfg.board, env_override=cfg.env_override, cmdline_path=cfg.cmdline)

    def boot(self, slot: str) -> None:
        """Pretend the bootloader started `slot` (what the kernel command line says)."""
        (self.root / "cmdline").write_text(f"console=ttyAMA0 abupdate.slot={slot}\n")

    def signer(self) -> signing.Signer:
        return signing.load_signer(
            self.pki.signer_key.read_bytes(), self.pki.signer_cert.read_bytes()
        )

    def bundle(
        self,
        data: bytes,
        name: str = "update.bundle",
        *,
        version: str = "2.0.0",
        security_version: int = 1,
        compatible: str = COMPATIBLE,
        expires: int | None = None,
        signer: signing.Signer | None = None,
    ) -> Path:
        image = self.root / f"{name}.img"
        image.write_bytes(data)
        out = self.root / name
        create_bundle(
            CreateOptions(
                image=image,
                version=version,
                compatible=compatible,
                signers=[signer or self.signer()],
                build_time=BUILD_TIME,
                security_version=security_version,
                salt=SALT,
                architecture="arm64",
                expires=expires,
            ),
            out,
        )
        image.unlink()
        return out

    def snapshot(self) -> dict[str, bytes]:
        """Bytes of the booted slot and the environment (must survive any refusal)."""
        return {"A": self.slot("A").read_bytes(), "env": self.env_file.read_bytes()}


def make_device(root: Path, pki: keygen.DevPki, a_image: bytes) -> Device:
    """A device booted from slot A holding `a_image` (with its hash tree), B empty."""
    root.mkdir(parents=True, exist_ok=True)
    dev = Device(root, pki)
    shutil.copy(pki.ca_cert, root / "keyring.pem")
    blocks = len(a_image) // 4096
    dev.slot("A").write_bytes(a_image)
    with verity.build_tree(str(dev.slot("A")), blocks, SALT) as tree:
        with dev.slot("A").open("ab") as f:
            f.write(tree.area())
        a_verity = SlotVerity(tree.root_hash.hex(), SALT.hex(), blocks)
    dev.slot("B").write_bytes(b"")
    dev.config_path.write_text(
        f'board = "{BOARD}"\n'
        'keyring = "keyring.pem"\n'
        'state_dir = "state"\n'
        'cmdline = "cmdline"\n'
        '[slots.A]\ndevice = "slot-A.img"\n'
        '[slots.B]\ndevice = "slot-B.img"\n'
        '[env]\nfw_env_config = ["uboot.env 0x0000 0x4000"]\n'
    )
    dev.boot("A")
    assert load_board(BOARD).compatible == COMPATIBLE
    ctl = dev.control()
    ctl.init({"A": a_verity})
    env = ctl.env()
    ctl.store.save({**env, "BOOT_ORDER": "A B", "BOOT_B_LEFT": "0"})
    return dev


def veritysetup_verify(slot: Path, v: SlotVerity) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            "veritysetup",
            "verify",
            str(slot),
            str(slot),
            v.root_hash,
            f"--hash-offset={v.hash_offset}",
        ],
        capture_output=True,
    )
