"""Helpers for bundle tests: an in-memory source and deterministic images."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bundle_tool import container, signing
from bundle_tool.errors import BundleError

BUILD_TIME = 1_700_000_000


def now() -> datetime:
    """The time to verify at: read when used, never at import (keys are made later)."""
    return datetime.now(UTC)


class BytesReader:
    """An in-memory bundle source with the reader's interface."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> Iterator[bytes]:
        if offset + length > len(self.data):
            raise BundleError("bundle ends early")
        for pos in range(offset, offset + length, 1 << 16):
            yield self.data[pos : min(pos + (1 << 16), offset + length)]


def resign(data: bytes, signer: signing.Signer, edit: Callable[[dict], None]) -> bytes:
    """Change the manifest JSON and sign it again, as a malicious or buggy builder might."""
    h = container.parse_header(data)
    obj = json.loads(data[64 : 64 + h.manifest_size])
    edit(obj)
    raw = json.dumps(obj).encode()
    sigs = container.build_signature_block([signing.sign(raw, signer)])
    header = container.Header(len(raw), len(sigs), h.payload_size)
    return header.to_bytes() + raw + sigs + data[h.head_size :]


def minimal_manifest() -> dict[str, Any]:
    """The JSON of the smallest valid manifest: one image of one block, no artifact
    (unsigned: for tests of the manifest parser alone)."""
    return {
        "artifacts": [],
        "build_time": 0,
        "compatible": "board",
        "format": 1,
        "images": [
            {
                "size": 4096,
                "slot_class": "rootfs",
                "verity": {
                    "data_block_size": 4096,
                    "data_blocks": 1,
                    "hash_algorithm": "sha256",
                    "hash_block_size": 4096,
                    "root_hash": "19" * 32,
                    "salt": "00",
                    "tree_size": 4096,
                },
            }
        ],
        "security_version": 0,
        "version": "1.0.0",
    }


def write_image(path: Path, blocks: int, seed: int = 0) -> Path:
    path.write_bytes(random.Random(seed).randbytes(blocks * 4096))
    return path


def run_tool(
    *args: str | Path, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `bundle-tool` as a user does, in a new process."""
    return subprocess.run(
        [sys.executable, "-m", "bundle_tool.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        input=stdin,
    )
