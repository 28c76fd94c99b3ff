"""A power switch for QEMU as a board: `on` starts it in the background, `off` kills it.

    python tests/qemu/qemupower.py --arch arm64 --disk DISK --port 5555 --state DIR on|off

With `on`, QEMU runs detached with its serial port on `tcp:127.0.0.1:PORT` (a server that
does not wait for a client, as a board's UART does not wait for a reader): the serial
target reaches it as `--port socket://127.0.0.1:PORT`. With `off`, the process recorded in
STATE/qemu.pid is killed at once, as a cut power would. This lets the serial target's whole
path (pytest-embedded's serial service, the power command) run on QEMU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "qemu" / "lib"))

import settings
import vm


def power_on(arch: str, disk: Path, port: int, pidfile: Path) -> None:
    """Start QEMU detached (`-daemonize`), its pid in `pidfile`."""
    cfg = vm.VmConfig(arch, disk, serial=f"tcp:127.0.0.1:{port},server=on,wait=off")
    cmd = [*vm.qemu_command(cfg), "-daemonize", "-pidfile", str(pidfile)]
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)


def power_off(pidfile: Path) -> None:
    """Kill the QEMU recorded in `pidfile` (if it runs) and wait until it is gone."""
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    pidfile.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=sorted(settings.ARCHES), required=True)
    p.add_argument("--disk", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--state", type=Path, required=True, help="folder for the pid file")
    p.add_argument("action", choices=["on", "off"])
    a = p.parse_args(argv)
    a.state.mkdir(parents=True, exist_ok=True)
    pidfile = a.state / "qemu.pid"
    if a.action == "on":
        power_off(pidfile)
        power_on(a.arch, a.disk, a.port, pidfile)
    else:
        power_off(pidfile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
