"""A device on plain files for installer tests: slots, U-Boot or GRUB env, cmdline, keyring, state.

Slot A holds a release and is booted. Slot B is either empty and not bootable, as
on a freshly flashed device, or (`make_device(..., b_image=...)`) holds an older
release, verified and bootable after A, as on a device updated before. Bundles
are built with the real `bundle_tool` writer.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from bootctl.board import load_board
from bootctl.control import SlotControl
from bootctl.envstore import GrubEnvStore, UBootEnvStore
from bootctl.state import SlotVerity, parse_state
from bundle_tool import keygen, signing, verity
from bundle_tool.writer import CreateOptions, create_bundle
from tests.helpers.boards import fit_board
from updater.config import DeviceConfig, load_config
from updater.filesource import FileSource
from updater.install import Installer
from updater.statedir import FLOOR_FILE, SLOTS_FILE

REPO = Path(__file__).resolve().parents[2]
BOARD = REPO / "board-configs" / "qemu-arm64-uboot.toml"
COMPATIBLE = "qemu-arm64-uboot"
GRUB_BOARD = REPO / "board-configs" / "qemu-x86_64-grub.toml"
BUILD_TIME = 1_700_000_000
SALT = bytes(range(32))
#: What slot B's boot folder holds on a device of `fit_device`, before an install.
OLD_FIT = b"the boot image B had before\n"
GROUP_BLOCKS = 300


def image_bytes(blocks: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(blocks * 4096)


@dataclass
class Device:
    """Paths of one file-backed device."""

    root: Path
    pki: keygen.DevPki
    board: Path = BOARD

    @property
    def config_path(self) -> Path:
        return self.root / "device.toml"

    @property
    def env_file(self) -> Path:
        return self.root / "uboot.env"

    def slot(self, name: str) -> Path:
        return self.root / f"slot-{name}.img"

    def boot_dir(self, name: str) -> Path:
        """Slot `name`'s folder of the boot partition (`boot_mount` is `boot`)."""
        return self.root / "boot" / f"slot-{name}"

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
        compatible: str | None = None,
        expires: int | None = None,
        signer: signing.Signer | None = None,
        leaf_summary: bool = True,
        data_padding: bool = True,
        artifacts: Sequence[Path] = (),
        extra_images: Sequence[tuple[str, Path]] = (),
        slot_class: str = "rootfs",
    ) -> Path:
        image = self.root / f"{name}.img"
        image.write_bytes(data)
        out = self.root / name
        create_bundle(
            CreateOptions(
                image=image,
                version=version,
                compatible=compatible or load_board(self.board).compatible,
                signers=[signer or self.signer()],
                build_time=BUILD_TIME,
                security_version=security_version,
                salt=SALT,
                architecture=load_board(self.board).architecture,
                expires=expires,
                leaf_summary=leaf_summary,
                data_padding=data_padding,
                artifacts=artifacts,
                extra_images=extra_images,
                slot_class=slot_class,
            ),
            out,
        )
        image.unlink()
        return out

    def cli(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        stdin: IO[bytes] | int | None = subprocess.DEVNULL,
    ) -> subprocess.CompletedProcess[str]:
        """Run `updater ARGS --config DEVICE.toml` in a child process; its output."""
        return subprocess.run(
            [sys.executable, "-m", "updater.cli", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            env=env,
            stdin=stdin,
            cwd=REPO,
            timeout=120,
        )

    def env_files(self) -> list[Path]:
        """Every file holding a copy of the boot environment (two for a redundant one)."""
        store = self.control().store
        if isinstance(store, UBootEnvStore):
            return [Path(loc.device) for loc in store.locations]
        assert isinstance(store, GrubEnvStore)
        return [store.path]

    def snapshot(self, *, target: bool = False) -> dict[str, bytes | None]:
        """The bytes a refused install must leave as they were (None: the file is absent).

        Always slot A, every environment copy (the first under "env") and the
        anti-rollback floor; never last-install.json, which records the refusal.

        Args:
            target: also slot B (the target) and the slot records (slots.json).
                Use it for every refusal made before writing (signatures, policy,
                the booted slot, a wrong bundle size, transport): those touch
                nothing. A bundle found corrupt while B is written (a bad tree or
                data block) refuses after writing the blocks checked before it and
                forgetting B's record, so those compare with the default.
        """
        files = {"A": self.slot("A")}
        for i, path in enumerate(self.env_files()):
            files["env" if i == 0 else f"env{i}"] = path
        state = self.config().state_dir
        files[FLOOR_FILE] = state / FLOOR_FILE
        if target:
            files["B"] = self.slot("B")
            files[SLOTS_FILE] = state / SLOTS_FILE
        return {key: path.read_bytes() if path.exists() else None for key, path in files.items()}


def make_device(
    root: Path,
    pki: keygen.DevPki,
    a_image: bytes,
    *,
    b_image: bytes | None = None,
    board: Path = BOARD,
    state_dir: str = "state",
) -> Device:
    """A device booted from slot A holding `a_image` (with its hash tree).

    Slot B is empty and not bootable; with `b_image`, it holds that image (version
    1.0.0, installed by the real Installer) with its root hash recorded and full
    tries, second in the boot order: bootable, but A boots first. The environment
    is a U-Boot one (`uboot.env`), or with a GRUB board a GRUB environment block
    (`grubenv`). The state directory is `state_dir` below `root`; the first install
    (or `b_image`'s) creates it.
    """
    root.mkdir(parents=True, exist_ok=True)
    dev = Device(root, pki, board)
    shutil.copy(pki.ca_cert, root / "keyring.pem")
    blocks = len(a_image) // 4096
    dev.slot("A").write_bytes(a_image)
    with verity.build_tree(str(dev.slot("A")), blocks, SALT) as tree:
        with dev.slot("A").open("ab") as f:
            f.write(tree.area())
        a_verity = SlotVerity(tree.root_hash.hex(), SALT.hex(), blocks)
    dev.slot("B").write_bytes(b"")
    dev.config_path.write_text(
        f'board = "{board}"\n'
        'keyring = "keyring.pem"\n'
        f'state_dir = "{state_dir}"\n'
        'cmdline = "cmdline"\n'
        'boot_mount = "boot"\n'
        '[slots.A]\ndevice = "slot-A.img"\n'
        '[slots.B]\ndevice = "slot-B.img"\n'
        + (
            '[env]\ngrubenv = "grubenv"\n'
            if load_board(board).bootloader == "grub"
            else '[env]\nfw_env_config = ["uboot.env 0x0000 0x4000"]\n'
        )
    )
    dev.boot("A")
    assert load_board(BOARD).compatible == COMPATIBLE
    ctl = dev.control()
    ctl.init({"A": a_verity})
    env = ctl.env()
    ctl.store.save({**env, "BOOT_ORDER": "A B", "BOOT_B_LEFT": "0"})
    if b_image is not None:
        install_older_b(dev, b_image)
    return dev


def fit_device(root: Path, pki: keygen.DevPki, artifacts: dict[str, str] | None = None) -> Device:
    """A device of the FIT board booted from A; B's boot folder holds an older boot image."""
    root.mkdir(parents=True)
    board = fit_board(root.parent / f"{root.name}-board.toml", artifacts)
    device = make_device(root, pki, image_bytes(GROUP_BLOCKS, seed=1), board=board)
    device.boot_dir("B").mkdir(parents=True)
    (device.boot_dir("B") / "boot.itb").write_bytes(OLD_FIT)
    return device


def group_bundle(device: Device, fit: Path, *, boot_first: bool = False, **kw: object) -> Path:
    """A bundle of a new rootfs and `fit` (the rootfs first, unless `boot_first`)."""
    rootfs = device.root / "new-rootfs.img"
    rootfs.write_bytes(image_bytes(GROUP_BLOCKS, seed=2))
    if boot_first:
        return device.bundle(
            fit.read_bytes(), slot_class="boot", extra_images=(("rootfs", rootfs),), **kw
        )
    return device.bundle(image_bytes(GROUP_BLOCKS, seed=2), extra_images=(("boot", fit),), **kw)


def install_older_b(dev: Device, image: bytes) -> None:
    """Install `image` into slot B for real, then put A first again with full tries.

    What a device looks like after an earlier update to B that was rolled back
    (or a factory image in both slots): B verifies against its recorded root
    hash and would boot if A failed.
    """
    bundle = dev.bundle(image, "older-b.bundle", version="1.0.0")
    with FileSource(bundle) as src:
        Installer(dev.config()).install(src, slot="B")
    bundle.unlink()
    ctl = dev.control()
    ctl.reset()  # BOOT_ORDER "A B", full tries for both; root hashes kept
    st = parse_state(ctl.env(), ctl.board.slot_names)
    b = st.slot("B")
    assert st.order == ("A", "B") and b.bootable and b.verity is not None, st
    assert veritysetup_verify(dev.slot("B"), b.verity).returncode == 0


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


def straight_reads(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What each `AlignedReader.read_into` of this process answers from now on: True for
    a span read by direct I/O straight into its buffer, False for one left to copy."""
    from updater import directio

    answers: list[bool] = []
    real = directio.AlignedReader.read_into

    def spy(self: directio.AlignedReader, offset: int, view: memoryview) -> bool:
        answers.append(real(self, offset, view))
        return answers[-1]

    monkeypatch.setattr(directio.AlignedReader, "read_into", spy)
    return answers
