"""The development signing keys the images trust unless told otherwise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cache import cached
from settings import DEV_KEYS
from shell import log, run


def dev_keys() -> Path:
    """The development keys (`DEV_KEYS`: ca.pem, signer.key, signer.pem), made once."""

    def make(tmp: Path) -> None:
        log(f"making development keys in {DEV_KEYS}")
        run(sys.executable, "-m", "bundle_tool.cli", "keygen", "-o", tmp, stdout=subprocess.DEVNULL)

    return cached(DEV_KEYS, make, folder=True)
