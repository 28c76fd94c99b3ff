"""Board config files for tests: a shipped board with a verified chain and artifact places."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bootctl.state import SlotVerity
from bundle_tool.bootimage import FitKey, build_fit

REPO = Path(__file__).resolve().parents[2]
ARM64_BOARD = REPO / "board-configs" / "qemu-arm64-uboot.toml"
#: The kernel load address of the QEMU arm64 board (as its verified images use).
FIT_KERNEL_LOAD = 0x40400000


def fit_board(out: Path, artifacts: Mapping[str, str] | None = None, *, chain: str = "fit") -> Path:
    """The QEMU arm64 board booting signed FITs (`boot.chain = "fit"`), written to `out`.

    Args:
        out: the board file to write.
        artifacts: `boot.artifacts` (artifact name to path in a slot's boot folder).
        chain: `script` keeps the board's unverified chain (no boot image to install).
    """
    text = ARM64_BOARD.read_text()
    if chain == "fit":
        text = text.replace(
            "[boot]\n", f'[boot]\nchain = "fit"\nfit_kernel_load = {FIT_KERNEL_LOAD:#x}\n', 1
        )
    if artifacts:
        text += "\n[boot.artifacts]\n" + "".join(f'"{k}" = "{v}"\n' for k, v in artifacts.items())
    out.write_text(text)
    return out


def signed_fit(work: Path, key: FitKey, version: str, blocks: int = 16) -> Path:
    """A FIT signed with `key` by the real `mkimage`, recording `version` (`work/boot.itb`).

    Its kernel and initramfs are filler: what U-Boot does with them is tested
    elsewhere. Its length is not whole 4096-byte blocks.
    """
    (work / "Image").write_bytes(f"kernel {version} ".encode() * 3001)
    (work / "initrd").write_bytes(f"initramfs {version} ".encode() * 777)
    out = work / "boot.itb"
    build_fit(
        work / "Image",
        work / "initrd",
        SlotVerity("ab" * 32, "cd" * 32, blocks),
        out,
        arch="arm64",
        key=key,
        load_address=FIT_KERNEL_LOAD,
        version=version,
    )
    assert out.stat().st_size % 4096
    return out
