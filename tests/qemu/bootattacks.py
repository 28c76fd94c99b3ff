"""Boot files an attacker could put into a slot, made from the slot's good ones.

Each function takes a slot's boot files (name -> bytes, as `BootPartition.slot_files`
reads them) and returns the attacker's set: one byte of the kernel changed, no
signatures, or signatures by a key the firmware does not hold. The tools are the real
ones (`fdtput`, `mkimage -F`, `sbattach`, `sbsign`, gpg).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from bootctl.board import BoardConfig
from bundle_tool import bootimage, bootkeys

#: The arm64 kernel `Image` header's magic, 56 bytes into the kernel.
ARM64_MAGIC = b"ARM\x64"


def _run(*cmd: str | Path) -> str:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True).stdout


def _section(pe: Path, name: str) -> tuple[int, int]:
    """(file offset, size) of a PE file's section, from `objdump -h`."""
    for line in _run("objdump", "-h", pe).splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1] == name:
            return int(fields[5], 16), int(fields[2], 16)
    raise AssertionError(f"{pe} has no {name} section")


def tampered_kernel(board: BoardConfig, files: dict[str, bytes]) -> dict[str, bytes]:
    """One byte of the kernel changed after signing (signatures kept)."""
    image = board.boot.image
    data = bytearray(files[image])
    if board.boot.chain == "fit":
        at = data.find(ARM64_MAGIC) + 4096
    else:
        with tempfile.TemporaryDirectory() as tmp:
            pe = Path(tmp) / image
            pe.write_bytes(data)
            offset, size = _section(pe, ".linux")
        at = offset + size // 2
    data[at] ^= 0x01
    return {**files, image: bytes(data)}


def unsigned(board: BoardConfig, files: dict[str, bytes]) -> dict[str, bytes]:
    """The same boot image without any signature (FIT: no signature node; UKI: no PE
    signature and no gpg `.sig`)."""
    image = board.boot.image
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / image
        path.write_bytes(files[image])
        if board.boot.chain == "fit":
            _run("fdtput", "-r", path, "/configurations/conf-1/signature")
        else:
            _run("sbattach", "--remove", path)
        return {image: path.read_bytes()}


def signed_by(
    board: BoardConfig, files: dict[str, bytes], keys: bootkeys.DevBootKeys
) -> dict[str, bytes]:
    """The same boot image signed with `keys` instead (FIT: `mkimage -F` re-signs the
    configuration; UKI: a new db signature and a new gpg `.sig`)."""
    image = board.boot.image
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / image
        path.write_bytes(files[image])
        if board.boot.chain == "fit":
            _run("mkimage", "-F", "-k", keys.fit.directory, "-r", path)
            return {image: path.read_bytes()}
        signer = keys.uefi_signer
        _run("sbattach", "--remove", path)
        signed = path.with_name("signed.efi")
        _run("sbsign", "--key", signer.db_key, "--cert", signer.db_cert, "--output", signed, path)
        sig = path.with_name(image + ".sig")
        assert signer.gpg_home is not None
        bootimage.gpg_sign(signed, sig, signer.gpg_home)
        return {image: signed.read_bytes(), sig.name: sig.read_bytes()}
