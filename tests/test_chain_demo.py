"""The chain demo (`make demo`, after the quick start) runs to its end with the real tools."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHAIN = Path(__file__).resolve().parent.parent / "demo" / "bootchain.py"


def test_chain_demo_runs(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(CHAIN)], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert "Sign algo:    sha256,rsa2048:dev" in r.stdout
    assert "Signature verification OK" in r.stdout
    assert "BAD signature" in r.stderr + r.stdout
    assert "slot B: tries left 3, bootable, version 1.1.0, boot image 1.1.0" in r.stdout
    out = tmp_path / "demo-out" / "chain"
    installed = out / "device" / "boot" / "slot-B" / "boot.itb"
    assert installed.read_bytes() == (out / "boot.itb").read_bytes()
