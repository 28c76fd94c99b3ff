"""Commands and progress lines of the image build."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any


def log(msg: str) -> None:
    """Progress line on stderr."""
    print(f"build-image: {msg}", file=sys.stderr, flush=True)


def run(*args: object, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command (text mode), raising `CalledProcessError` when it fails.

    Args:
        args: The command and its arguments (each made a string: paths, numbers).
        kw: Passed to `subprocess.run` (`capture_output`, `stdout`, `cwd`, `env`, `input`).
    """
    result: subprocess.CompletedProcess[str] = subprocess.run(
        [str(a) for a in args], check=True, text=True, **kw
    )
    return result


def compileall(root: Path, *folders: Path, jobs: int = 0, force: bool = False) -> None:
    """Precompile the Python files under `folders` (inside the target tree `root`).

    With the host's python3.11 (the target's version), unchecked-hash `.pyc` files, paths as
    the target sees them. A read-only root cannot cache them, so they are made here.
    """
    subprocess.run(
        [
            "/usr/bin/python3.11",
            "-m",
            "compileall",
            "-q",
            *(["-f"] if force else []),
            f"-j{jobs}",
            "--invalidation-mode",
            "unchecked-hash",
            "-s",
            str(root),
            "-p",
            "/",
            *map(str, folders),
        ],
        check=False,
        stdout=subprocess.DEVNULL,
    )
