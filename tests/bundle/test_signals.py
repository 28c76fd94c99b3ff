"""SIGINT and SIGTERM during `bundle-tool create`: one error line, 130 or 143, no partial output."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.bundle.bundles import run_tool, write_image

REPO = Path(__file__).resolve().parents[2]
STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


@pytest.mark.parametrize("signum", list(STATUS), ids=lambda s: s.name)
def test_a_signal_during_create_removes_the_partial_bundle(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """The signal comes while `create` writes its output, held there on purpose.

    Its progress bar goes to a terminal as wide as one can be that nobody reads: the
    first redraw fills the terminal's buffer, so `create` waits in it, its temporary
    output open, until the signal.
    """
    keys = tmp_path / "keys"
    assert run_tool("keygen", "-o", keys).returncode == 0
    image = write_image(tmp_path / "rootfs.img", 1024)
    out = tmp_path / "out" / "update.bundle"
    out.parent.mkdir()
    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 65000, 0, 0))
    create = [sys.executable, "-m", "bundle_tool.cli", "create", "--image", str(image)]
    create += ["--version", "1.0.0", "--compatible", "board", "-o", str(out)]
    create += ["--key", str(keys / "signer.key"), "--cert", str(keys / "signer.pem")]
    with subprocess.Popen(
        create, cwd=REPO, stdout=subprocess.PIPE, stderr=terminal, text=True
    ) as proc:
        os.close(terminal)
        while proc.poll() is None and not list(out.parent.iterdir()):
            time.sleep(0.01)  # the temporary output appears before the image is hashed
        assert proc.poll() is None, "create ended before its output was begun"
        proc.send_signal(signum)
        shown = b""
        with open(master, "rb", buffering=0) as screen:
            while True:
                try:
                    chunk = screen.read(1 << 16)
                except OSError:  # EIO: the terminal's last writer is gone
                    break
                if not chunk:
                    break
                shown += chunk
        stdout, _ = proc.communicate(timeout=60)
    name = signal.Signals(signum).name
    assert proc.returncode == STATUS[signum]
    # The last thing on the terminal, after the bar's last frame (cleared or ended).
    frames = re.split(r"\x1b\[K|\r|\n", shown.decode())
    assert [f.strip() for f in frames if f.strip()][-1] == (
        f"bundle-tool: error: interrupted by {name}"
    )
    assert stdout == ""
    assert list(out.parent.iterdir()) == []
