"""A slot image: the root filesystem followed by its dm-verity hash area."""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from cache import cached
from shell import run

from bootctl.state import SlotVerity

IMAGE = "slot.img"
VERITY = "verity"


@dataclass(frozen=True)
class Slot:
    """A built slot image and its verity string `<root hash>:<salt>:<data blocks>`."""

    image: Path
    verity: str


def verity_format(rootfs: Path, out: Path) -> str:
    """Write rootfs + its dm-verity hash area to `out`; return `<root>:<salt>:<blocks>`."""
    blocks = rootfs.stat().st_size // 4096
    salt = hashlib.sha256(b"abupdate-qemu-salt" + rootfs.name.encode()).hexdigest()
    shutil.copyfile(rootfs, out)
    res = run(
        *("veritysetup", "format", f"--hash-offset={blocks * 4096}", f"--data-blocks={blocks}"),
        *(f"--salt={salt}", f"--uuid={uuid.UUID(salt[:32])}", out, out),
        capture_output=True,
    )
    m = re.search(r"Root hash:\s+([0-9a-f]+)", res.stdout)
    if not m:
        raise RuntimeError(f"veritysetup printed no root hash: {res.stdout}")
    return SlotVerity(m.group(1), salt, blocks).to_env()


def make_slot(rootfs: Path) -> Slot:
    """Slot image of `rootfs` (a folder next to it: the image and its verity string), cached."""

    def make(folder: Path) -> None:
        verity = verity_format(rootfs, folder / IMAGE)
        (folder / VERITY).write_text(verity + "\n")

    folder = cached(rootfs.with_name(rootfs.stem.replace("rootfs-", "slot-")), make, folder=True)
    return Slot(folder / IMAGE, (folder / VERITY).read_text().strip())
