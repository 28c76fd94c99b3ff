"""`updater install -` in a child process, fed from a pipe as slowly as a test wants.

The child runs in a session of its own, so a signal can go to its whole process
group (its forked helpers too), as Ctrl-C on a terminal or systemd's stop does.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

from tests.updater.device import REPO, Device
from updater.installlock import LOCK_FILE

#: How long to wait for the child to get somewhere (not a speed check: only a hang ends it).
PATIENCE = 30.0


class PipedInstall:
    """`updater install - --json` of `bundle` on `device`, fed by `feed`."""

    def __init__(self, device: Device, bundle: Path) -> None:
        self.data = bundle.read_bytes()
        self.sent = 0
        self.lock = device.config().state_dir / LOCK_FILE
        self.events: list[dict[str, Any]] = []
        config = str(device.config_path)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "updater.cli", "install", "-", "--json", "--config", config],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            start_new_session=True,
        )

    def _until(self, done: Any, what: str) -> None:
        deadline = time.monotonic() + PATIENCE
        while not done():
            assert self.proc.poll() is None, f"the install ended before {what}"
            assert time.monotonic() < deadline, f"the install did not get to {what}"
            time.sleep(0.02)

    def wait_for_lock(self) -> None:
        """Until the child holds the install lock (its signal handlers are in place then)."""

        def holds() -> bool:
            try:
                return self.lock.read_text().strip() == str(self.proc.pid)
            except FileNotFoundError:
                return False

        self._until(holds, "the lock")

    def feed(self, upto: int) -> None:
        """Send the bundle's bytes up to offset `upto`, and wait until the child read them."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(self.data[self.sent : upto])
        self.proc.stdin.flush()
        self.sent = max(self.sent, upto)
        fd = self.proc.stdin.fileno()

        def drained() -> bool:
            left = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
            return int.from_bytes(left, sys.byteorder) == 0

        self._until(drained, f"reading byte {upto}")

    def wait_for_phase(self, phase: str) -> dict[str, Any]:
        """Read the progress lines up to the first of `phase`; that line."""
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            assert line, f"the output ended before phase {phase}"
            event = json.loads(line)
            self.events.append(event)
            if event.get("phase") == phase:
                return event

    def signal(self, signum: signal.Signals) -> None:
        os.killpg(self.proc.pid, signum)

    def finish(self) -> tuple[int, list[dict[str, Any]], str]:
        """Close the pipe (after the rest of the bundle, or not); status, events, stderr."""
        out, err = self.proc.communicate(timeout=PATIENCE)
        self.events += [json.loads(line) for line in out.splitlines()]
        return self.proc.returncode, self.events, err.decode()

    def send_rest(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(self.data[self.sent :])
        self.sent = len(self.data)
