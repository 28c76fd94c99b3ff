"""The development keys: the bundle signers the images trust, and the boot keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cache import cached
from settings import BOOT_KEYS, DEV_KEYS
from shell import log, run


def dev_keys() -> Path:
    """The development keys (`DEV_KEYS`: ca.pem, signer.key, signer.pem), made once."""

    def make(tmp: Path) -> None:
        log(f"making development keys in {DEV_KEYS}")
        run(sys.executable, "-m", "bundle_tool.cli", "keygen", "-o", tmp, stdout=subprocess.DEVNULL)

    return cached(DEV_KEYS, make, folder=True)


def boot_keys() -> Path:
    """The development boot keys (`BOOT_KEYS`, laid out as `bundle-tool keygen --boot`)."""

    def make(tmp: Path) -> None:
        log(f"making development boot keys in {BOOT_KEYS}")
        run(
            *(sys.executable, "-m", "bundle_tool.cli", "keygen", "--boot", "-o", tmp),
            stdout=subprocess.DEVNULL,
        )

    return cached(BOOT_KEYS, make, folder=True)
