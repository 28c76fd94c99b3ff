"""Running a tool whose standard output nobody reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def closed_pipe_run(*command: str) -> subprocess.CompletedProcess[str]:
    """Run a tool whose standard output is a pipe nobody reads (as `| head -0`)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", *command],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            check=False,
            timeout=120,
        )
    finally:
        os.close(write_end)
