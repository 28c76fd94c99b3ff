"""What the device flows run on: a target, split as labgrid splits it.

- Resources: where the device is — a QEMU disk image (with an optional USB stick and
  forwarded ports), or a serial port and a power command.
- Drivers: a console (`vm.Console`: expect and framed shell commands) and a power control
  (on, off, cut, reset).
- Strategy: `tests.qemu.device.Device`, the state machine every flow uses
  (power on -> booted -> shell -> reboot ...), the same on every target.

`QemuTarget` is QEMU with its console on a TCP socket, or on a pseudo-terminal read
through pytest-embedded's serial service exactly as a board's serial adapter is.
`SerialTarget` is a board on a serial port (pytest-embedded's serial service) whose power
is switched by a configured command (a relay, a USB hub port, a lab controller).
"""

from __future__ import annotations

import abc
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import serial
from pytest_embedded_serial.serial import Serial
from serial.urlhandler import protocol_socket

from bootctl.board import BoardConfig
from tests.qemu.qemulib import settings, vm


class SocketPort(protocol_socket.Serial):  # type: ignore[misc]
    """pyserial's `socket://` port, reading in `read_all` everything that has arrived.

    The service reads with `read_all()` every 50 ms, which reads `in_waiting` bytes; on a
    socket pyserial can only tell whether something is there, so that is one byte: a
    kernel's boot messages would then arrive at 20 bytes a second.
    """

    def read_all(self) -> bytes:
        """What the socket holds now (empty when nothing arrived)."""
        if not self.in_waiting:
            return b""
        data: bytes = self._socket.recv(65536)
        if not data:
            raise serial.SerialException("socket disconnected")
        return data


def open_port(url: str, baud: int) -> serial.SerialBase:
    """The port the serial service reads: any pyserial URL, at `baud`."""
    config = {**Serial.DEFAULT_PORT_CONFIG, "baudrate": baud}
    if url.startswith("socket://"):
        port = SocketPort(None, **config)
        port.port = url
        port.open()
        return port
    opened: serial.SerialBase = serial.serial_for_url(url, **config)
    return opened


class EmbeddedSerialConsole(vm.Console):
    """A console read through pytest-embedded's serial service (`Serial`).

    The service opens the port (any pyserial URL: `/dev/ttyUSB0`, a pty, `socket://...`)
    and its redirect thread delivers what it reads to a message queue; here that queue is
    the console itself (`put`), so matching is the same as on every other console.
    """

    def __init__(self, port: str, log_file: Path | None = None, baud: int = 115200) -> None:
        opened = open_port(port, baud)  # first: a port that is not there yet leaks nothing
        super().__init__(log_file)
        self.serial = Serial(self, port=opened, baud=baud)  # type: ignore[arg-type]

    def put(self, data: bytes, **_: object) -> None:
        """The service's message-queue hook: bytes read from the port."""
        if data:
            self.received(data)

    @property
    def alive(self) -> bool:
        """Whether the service's reader still runs."""
        thread = self.serial._redirect_thread
        return bool(thread and thread.is_alive())

    def _write(self, data: bytes) -> None:
        self.serial.proc.write(data)

    def _close(self) -> None:
        self.serial.close()


class Target(abc.ABC):
    """A device the flows can power and talk to.

    Attributes:
        board: The board config the device's image was built from (boot mount, env tool).
        boot_timeout: Seconds one boot may take.
        log_file: Where the console's output of the whole test goes.
    """

    def __init__(self, board: BoardConfig, boot_timeout: float, log_file: Path) -> None:
        self.board = board
        self.boot_timeout = boot_timeout
        self.log_file = log_file

    #: Whether `power_cut` cuts the power (else the flows that need it are skipped).
    can_cut_power = False

    @abc.abstractmethod
    def power_on(self) -> vm.Console:
        """Switch the device on (it boots); return its console, open before the first byte."""

    @abc.abstractmethod
    def power_off(self) -> None:
        """Switch the device off and close the console."""

    @abc.abstractmethod
    def power_cut(self) -> None:
        """Cut the power at once: what the device did not write is lost."""

    @abc.abstractmethod
    def reset(self, console: vm.Console) -> vm.Console:
        """Hard reset of a running device; return its console (the same, or reopened)."""


@dataclass
class QemuResource:
    """An emulated device: its disk image and what the harness plugs in."""

    arch: str
    disk: Path
    usb: Path | None = None
    forward: list[int] = field(default_factory=list)


class QemuTarget(Target):
    """QEMU: power with QMP and by killing the process; the console on a socket or a pty."""

    can_cut_power = True

    def __init__(
        self,
        resource: QemuResource,
        board: BoardConfig,
        log_file: Path,
        *,
        open_console: vm.ConsoleOpener | None = None,
    ) -> None:
        super().__init__(board, settings.ARCHES[resource.arch].boot_timeout, log_file)
        self.resource = resource
        self.open_console = open_console
        self.machine: vm.Machine | None = None

    def power_on(self) -> vm.Console:
        r = self.resource
        self.machine = vm.Machine(
            r.arch,
            r.disk,
            self.log_file,
            usb=r.usb,
            forward=r.forward,
            open_console=self.open_console,
        )
        return self.machine.start()

    def power_off(self) -> None:
        if self.machine:
            self.machine.stop()
            self.machine = None

    def power_cut(self) -> None:
        if self.machine:
            self.machine.power_cut()
            self.machine = None

    def reset(self, console: vm.Console) -> vm.Console:
        assert self.machine is not None, "the device is off"
        self.machine.reset()
        return console


@dataclass(frozen=True)
class PowerCommand:
    """A configured power switch: a shell command run with `on` or `off`.

    `{action}` in the command is replaced by the action; without it, the action is added as
    the last argument. A power cut is `off` at once, without shutting down first.
    """

    command: str

    def argv(self, action: str) -> list[str]:
        """The command line for `action` (`on` or `off`)."""
        if "{action}" in self.command:
            return shlex.split(self.command.replace("{action}", action))
        return [*shlex.split(self.command), action]

    def __call__(self, action: str) -> None:
        """Switch; a failing command fails the test with its output."""
        proc = subprocess.run(self.argv(action), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(
                f"power command {shlex.join(self.argv(action))!r} exited {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()}"
            )


class SerialTarget(Target):
    """A board on a serial port, powered by a configured command (or rebooted from its shell).

    The port is opened after each power on (waiting up to `port_timeout` for it to appear:
    a board's own USB UART comes and goes with its power) and closed at power off.
    Without a power command the board is assumed running: power on types `reboot -f`, and
    a power cut is not available.
    """

    def __init__(
        self,
        port: str,
        board: BoardConfig,
        log_file: Path,
        *,
        power: PowerCommand | None = None,
        baud: int = 115200,
        boot_timeout: float = 300.0,
        port_timeout: float = 30.0,
    ) -> None:
        super().__init__(board, boot_timeout, log_file)
        self.port = port
        self.power = power
        self.baud = baud
        self.port_timeout = port_timeout
        self.can_cut_power = power is not None
        self.console: vm.Console | None = None

    def _open(self) -> vm.Console:
        deadline = time.monotonic() + self.port_timeout
        while True:
            try:
                return EmbeddedSerialConsole(self.port, self.log_file, self.baud)
            except Exception as e:  # pyserial's SerialException, or OSError
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cannot open the serial port {self.port}: {e}") from e
                time.sleep(0.5)

    def power_on(self) -> vm.Console:
        if self.power is None:
            self.console = self._open()
            # A running board: reboot it so the test starts at power-on.
            self.console.send("\nreboot -f\n")
            return self.console
        self.power("on")
        self.console = self._open()
        return self.console

    def _close(self) -> None:
        if self.console:
            self.console.close()
            self.console = None

    def power_off(self) -> None:
        self._close()
        if self.power is not None:
            self.power("off")

    def power_cut(self) -> None:
        if self.power is None:
            raise RuntimeError("a power cut needs a power command (--power-cmd)")
        self._close()
        self.power("off")

    def reset(self, console: vm.Console) -> vm.Console:
        if self.power is None:
            console.send("reboot -f\n")
            return console
        self.power_cut()
        time.sleep(1)
        return self.power_on()
