"""A SoftHSM2 token of its own for a test: its own config and token folder, nothing shared."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Where Debian (and most distributions) install the SoftHSM2 PKCS#11 module.
MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)


def find_module() -> str | None:
    """The SoftHSM2 module, or None when the package `softhsm2` is not installed."""
    if shutil.which("softhsm2-util") is None:
        return None
    return next((m for m in MODULE_CANDIDATES if Path(m).is_file()), None)


@dataclass(frozen=True)
class Token:
    """An initialised token: label, user PIN, module and the environment that finds it."""

    label: str
    pin: str
    module: str
    env: dict[str, str]

    def import_key(self, key: Path, label: str, key_id: str) -> None:
        """Put a PKCS#8 private key on the token (as a key ceremony would)."""
        self._util("--import", key, "--token", self.label, "--label", label, "--id", key_id,
                   "--pin", self.pin)  # fmt: skip

    def _util(self, *args: str | Path) -> None:
        done = subprocess.run(["softhsm2-util", *map(str, args)], capture_output=True,
                              text=True, env=self.env)  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(f"softhsm2-util {args[0]} failed: {done.stderr}{done.stdout}")


def make_token(folder: Path, module: str, label: str = "build-hsm", pin: str = "1234") -> Token:
    """A fresh token in ``folder`` (SOFTHSM2_CONF points at a config written there)."""
    tokens = folder / "tokens"
    tokens.mkdir(parents=True)
    conf = folder / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )

    token = Token(label, pin, module, {**os.environ, "SOFTHSM2_CONF": str(conf)})
    token._util("--init-token", "--free", "--label", label, "--so-pin", "0000", "--pin", pin)
    return token
