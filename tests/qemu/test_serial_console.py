"""The flows as a board runs them: QEMU's console on a pty, read through pytest-embedded.

The serial target drives a board through pytest-embedded's serial service on a tty. Here
QEMU exposes its serial port as a pseudo-terminal (`-serial pty`) and the same service
opens it, as it opens `/dev/ttyUSB0`: the boot flow and the good update run unchanged
over that path, so CI shows the serial path works without a board.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.qemu.conftest import Images, qemu_device, target_kind
from tests.qemu.device import Device
from tests.qemu.qemulib import vm
from tests.qemu.target import EmbeddedSerialConsole, open_embedded_console

# The flows themselves, collected here again to run on this module's `device`.
from tests.qemu.test_boot import test_boots_slot_a_on_a_verity_root  # noqa: F401
from tests.qemu.test_flows import test_good_update_from_usb  # noqa: F401

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


@pytest.fixture
def device(
    request: pytest.FixtureRequest, arch: str, images: Images, tmp_path: Path
) -> Iterator[Device]:
    """A QEMU device whose console is its pty, opened by pytest-embedded's serial service."""
    if target_kind(request.config) != "qemu":
        pytest.skip("the pty console is QEMU's")
    ports: list[str] = []

    def open_pty(port: str, log_file: Path) -> vm.Console:
        console = open_embedded_console(port, log_file)
        assert isinstance(console, EmbeddedSerialConsole)
        ports.append(console.serial.port)
        return console

    yield from qemu_device(request, arch, images, tmp_path, open_pty)
    # Every power on went through the service, on one of QEMU's pseudo-terminals.
    assert ports, "the device was never powered on"
    assert all(p.startswith("/dev/pts/") for p in ports), ports
