"""The flows as a board runs them, on QEMU: the serial path proven without a board.

Two ways, running the boot flow and the good update unchanged:

- `qemu-pty`: QEMU's serial port is a pseudo-terminal (`-serial pty`) that
  pytest-embedded's serial service opens as it opens `/dev/ttyUSB0`; QEMU's own power
  control and USB stick as in every flow. Both flows run there; the good update from the
  first boot of slot B (its install is the session's `installed` disk).
- `serial-target`: the serial target itself, as `--target serial` makes it, on QEMU:
  the port `socket://127.0.0.1:PORT` and `--power-cmd` running `qemupower.py` (QEMU started
  detached on `on`, killed on `off`). Nothing here is QEMU's but the board behind the port,
  so only the boot flow runs: the good update needs a disk image the harness made.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootctl.board import load_board
from tests.qemu.conftest import (
    Images,
    InstalledDisks,
    installed_source,
    qemu_device,
    target_kind,
)
from tests.qemu.device import Device, copy_disk
from tests.qemu.qemulib import settings, vm
from tests.qemu.target import EmbeddedSerialConsole, PowerCommand, SerialTarget
from tests.qemu.test_boot import test_boots_slot_a_on_a_verity_root  # noqa: F401 (run here)
from tests.qemu.test_flows import test_good_update_from_usb  # noqa: F401 (run here)

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

POWER_SCRIPT = Path(__file__).with_name("qemupower.py")


def pty_device(
    request: pytest.FixtureRequest,
    arch: str,
    images: Images,
    tmp_path: Path,
    source: Path | None = None,
) -> Iterator[Device]:
    """QEMU whose console is its pty, opened by pytest-embedded's serial service."""
    ports: list[str] = []

    def open_pty(port: str, log_file: Path) -> vm.Console:
        console = EmbeddedSerialConsole(port, log_file)
        ports.append(console.serial.port)
        return console

    yield from qemu_device(request, arch, images, tmp_path, open_pty, source=source)
    # Every power on went through the service, on one of QEMU's pseudo-terminals.
    assert ports, "the device was never powered on"
    assert all(p.startswith("/dev/pts/") for p in ports), ports


def serial_target_device(
    request: pytest.FixtureRequest, arch: str, images: Images, tmp_path: Path
) -> Iterator[Device]:
    """The serial target with a power command, on QEMU started and killed by that command."""
    log = tmp_path / f"console-{arch}.log"
    request.node.console_logs = [log]
    disk = copy_disk(Path(str(images.base(arch)["disk"])), tmp_path / "disk.img")
    port = vm.free_port()
    switch = [sys.executable, str(POWER_SCRIPT), "--arch", arch, "--disk", str(disk)]
    switch += ["--port", str(port), "--state", str(tmp_path / "power")]
    target = SerialTarget(
        f"socket://127.0.0.1:{port}",
        load_board(settings.ARCHES[arch].board_path),
        log,
        power=PowerCommand(shlex.join(switch) + " {action}"),
        boot_timeout=settings.ARCHES[arch].boot_timeout,
    )
    dev = Device(target)
    try:
        yield dev
    finally:
        dev.power_off()


@pytest.fixture(params=["qemu-pty", "serial-target"])
def device(
    request: pytest.FixtureRequest, arch: str, images: Images, tmp_path: Path
) -> Iterator[Device]:
    """A device reached only through pytest-embedded's serial service (see the docstring)."""
    if target_kind(request.config) != "qemu":
        pytest.skip("these run the serial path on QEMU")
    make = pty_device if request.param == "qemu-pty" else serial_target_device
    yield from make(request, arch, images, tmp_path)


@pytest.fixture
def installed(
    request: pytest.FixtureRequest,
    arch: str,
    images: Images,
    installed_disks: InstalledDisks,
    tmp_path: Path,
) -> Iterator[Device]:
    """The disk just updated to 2.0.0 in slot B (conftest's `installed`), on QEMU whose
    console is its pty."""
    source = installed_source(request, arch, installed_disks)
    yield from pty_device(request, arch, images, tmp_path, source)
