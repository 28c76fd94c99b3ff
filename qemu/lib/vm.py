"""Start the QEMU device images and drive them: command line, QMP and the serial console.

Used by `qemu/run` (a person at the console) and by the tests in tests/qemu: the serial
console on a TCP socket (reached with a pyserial URL) or on a pseudo-terminal (opened like a
board's serial adapter), and QMP on a unix socket.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import serial
from settings import (
    ARCHES,
    GUEST_SERVER_IP,
    OVMF_CODE,
    OVMF_SECURE_CODE,
    OVMF_VARS,
    UBOOT,
    sidecar,
)

#: The arm64 machine and firmware; its DTB (`chain.control_dtb`) depends on them.
ARM64_MACHINE = ("-M", "virt", "-cpu", "cortex-a57", "-bios", str(UBOOT))
#: Guest RAM in MiB unless a VmConfig says otherwise (the control DTB describes this much).
DEFAULT_MEMORY = 1024


@dataclass
class VmConfig:
    """How to start one device.

    Attributes:
        arch: `arm64` or `amd64`.
        disk: The device's disk image (written by the guest).
        usb: Optional file attached read-only as a second virtio disk (a USB stick).
        serial: QEMU `-serial` backend (e.g. `mon:stdio`, `pty` or
            `tcp:127.0.0.1:PORT,server=on,wait=on`).
        qmp: Optional unix socket path for QMP.
        forward: Host TCP ports the guest reaches at GUEST_SERVER_IP:<same port>;
            with any, the guest gets a user-mode network card (restricted: nothing else).
        memory: Guest RAM in MiB.
        accel: `tcg` (default; KVM does not work with these firmwares here) or `kvm`.
        paused: Start with the CPU stopped (`-S`) until QMP `cont`.
    """

    arch: str
    disk: Path
    usb: Path | None = None
    serial: str = "mon:stdio"
    qmp: Path | None = None
    forward: list[int] = field(default_factory=list)
    memory: int = DEFAULT_MEMORY
    accel: str = "tcg"
    paused: bool = False


def ovmf_vars_for(disk: Path) -> Path:
    """The writable OVMF variable store kept next to a disk image."""
    path = sidecar(disk, ".ovmf-vars")
    if not path.exists():
        shutil.copyfile(OVMF_VARS, path)
    return path


def kvm_usable() -> bool:
    """Whether /dev/kvm can be opened (it may still fail later; see docs/qemu.md)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def qemu_command(cfg: VmConfig) -> list[str]:
    """The QEMU command line for `cfg`."""
    accel = cfg.accel if cfg.accel != "kvm" or kvm_usable() else "tcg"
    if cfg.arch not in ARCHES:
        raise ValueError(f"unknown architecture {cfg.arch!r} (one of {', '.join(ARCHES)})")
    if cfg.arch == "arm64":
        cmd = ["qemu-system-aarch64", *ARM64_MACHINE]
        dtb = sidecar(cfg.disk, ".dtb")
        if dtb.exists():
            # boot.chain fit: U-Boot's control DTB holds the FIT key and the boot command.
            cmd += ["-dtb", str(dtb)]
    elif sidecar(cfg.disk, ".secure-boot").exists():
        # boot.chain uki: our keys are enrolled in the variable store, Secure Boot is on.
        cmd = [
            *("qemu-system-x86_64", "-M", "q35,smm=on"),
            *("-global", "driver=cfi.pflash01,property=secure,value=on"),
            *("-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_SECURE_CODE}"),
            *("-drive", f"if=pflash,format=raw,file={ovmf_vars_for(cfg.disk)}"),
        ]
    else:
        cmd = [
            "qemu-system-x86_64",
            "-M",
            "q35",
            "-drive",
            f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive",
            f"if=pflash,format=raw,file={ovmf_vars_for(cfg.disk)}",
        ]
    cmd += [
        "-accel",
        accel,
        "-smp",
        "1",
        "-m",
        str(cfg.memory),
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        cfg.serial,
        "-drive",
        f"file={cfg.disk},if=virtio,format=raw,cache=unsafe",
    ]
    if cfg.usb is not None:
        cmd += ["-drive", f"file={cfg.usb},if=virtio,format=raw,readonly=on"]
    if cfg.forward:
        # One bridge process per guest connection (a `tcp:` target would be a single
        # connection shared by all of them).
        bridge = f"{sys.executable} {Path(__file__).with_name('tcpbridge.py')}"
        fwd = ",".join(f"guestfwd=tcp:{GUEST_SERVER_IP}:{p}-cmd:{bridge} {p}" for p in cfg.forward)
        model = "virtio-net-pci"
        cmd += ["-nic", f"user,model={model},restrict=on,{fwd}"]
    else:
        cmd += ["-nic", "none"]
    if cfg.qmp is not None:
        cmd += ["-qmp", f"unix:{cfg.qmp},server=on,wait=off"]
    if cfg.paused:
        cmd.append("-S")
    return cmd


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ConsoleTimeout(AssertionError):
    """The expected text did not appear on the console in time."""


class Console(abc.ABC):
    """A serial console with expect: the text received so far, searched from a cursor.

    A transport (a subclass) delivers the bytes it reads to `received` and sends with
    `_write`; the `\\r` of the guest's `\\r\\r\\n` line ends and terminal escapes are
    removed before anything is matched, so patterns are written against plain lines.
    Everything received is also appended to `log_file`.
    """

    def __init__(self, log_file: Path | None = None) -> None:
        self.log = ""
        self.cursor = 0
        self._lock = threading.Lock()
        self._log_file = open(log_file, "a", encoding="utf-8") if log_file else None  # noqa: SIM115

    # --- the transport's side -------------------------------------------------------------

    @abc.abstractmethod
    def _write(self, data: bytes) -> None:
        """Send bytes to the device."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Stop receiving and release the port."""

    @property
    @abc.abstractmethod
    def alive(self) -> bool:
        """Whether bytes can still arrive (False once the other end closed the link)."""

    def received(self, data: bytes) -> None:
        """Append bytes the transport read."""
        text = data.decode("utf-8", "replace").replace("\r", "")
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
        with self._lock:
            self.log += text
        if self._log_file:
            self._log_file.write(text)
            self._log_file.flush()

    # --- the flows' side ------------------------------------------------------------------

    def expect(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait until `pattern` (a regex) appears after the cursor; move the cursor past it."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                m = rx.search(self.log, self.cursor)
            if m:
                self.cursor = m.end()
                return m
            if time.monotonic() > deadline:
                tail = self.log[self.cursor :][-1500:]
                raise ConsoleTimeout(
                    f"no {pattern!r} on the console within {timeout:.0f} s; last output:\n{tail}"
                )
            if not self.alive and not rx.search(self.log, self.cursor):
                raise ConsoleTimeout(f"console closed while waiting for {pattern!r}")
            time.sleep(0.05)

    def send(self, text: str) -> None:
        """Type `text` on the console."""
        self._write(text.encode())

    def run(self, command: str, timeout: float = 60) -> tuple[int, str]:
        """Run a shell command; return its exit status and output.

        The command is framed as `echo "S""N"; CMD; echo "M""N=$?"` with a fresh N: the
        shell's echo of that line (which the terminal may wrap) never matches the markers
        the commands print, so the output and exit status are read reliably.
        """
        n = time.monotonic_ns() % 10**9
        self.send(f'echo "S""{n}"; {command}; echo "M""{n}=$?"\n')
        start = self.expect(rf"S{n}\n", timeout).end()
        m = self.expect(rf"M{n}=(\d+)\n", timeout)
        with self._lock:
            output = self.log[start : m.start()]
        return int(m.group(1)), output.strip("\n")

    def check(self, command: str, timeout: float = 60) -> str:
        """Run a command that must succeed; return its output."""
        rc, out = self.run(command, timeout)
        if rc != 0:
            raise AssertionError(f"`{command}` exited {rc}:\n{out}")
        return out

    def close(self) -> None:
        """Stop reading, close the port and the log file."""
        self._close()
        if self._log_file:
            self._log_file.close()
            self._log_file = None


class PyserialConsole(Console):
    """A console read by our own thread from a pyserial URL (`socket://HOST:PORT`, a tty)."""

    def __init__(self, url: str, log_file: Path | None = None, baudrate: int = 115200) -> None:
        super().__init__(log_file)
        self.url = url
        self.port = serial.serial_for_url(url, baudrate=baudrate, timeout=0.2)
        self._stop = False
        self._thread = threading.Thread(target=self._reader, daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        while not self._stop:
            try:
                data = self.port.read(4096)
            except (serial.SerialException, OSError):
                break
            if data:
                self.received(data)

    @property
    def alive(self) -> bool:
        """Whether the reader still receives (False once QEMU closed the socket)."""
        return self._thread.is_alive()

    def _write(self, data: bytes) -> None:
        self.port.write(data)

    def _close(self) -> None:
        # The reader wakes at least every 0.2 s (the read timeout) and sees _stop: let
        # it leave before the port goes, or its read meets a port half closed.
        self._stop = True
        self._thread.join(timeout=2)
        with contextlib.suppress(serial.SerialException, OSError):
            self.port.close()


#: Opens the console of a device whose serial port is the pty at the given path.
ConsoleOpener = Callable[[str, Path], Console]


class Qmp:
    """Minimal QMP client on a unix socket."""

    def __init__(self, path: Path, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.file = self.sock.makefile("rw", encoding="utf-8")
        json.loads(self.file.readline())
        self.command("qmp_capabilities")

    def command(self, name: str, **arguments: object) -> object:
        """Execute one QMP command; return its result."""
        msg: dict[str, object] = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        self.file.write(json.dumps(msg) + "\n")
        self.file.flush()
        while True:
            line = self.file.readline()
            if not line:
                return None
            reply = json.loads(line)
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(f"QMP {name}: {reply['error']}")

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()


class Machine:
    """A QEMU device with QMP on a unix socket and its serial console on a TCP socket.

    With `open_console`, the serial port is a pseudo-terminal instead, opened with that
    function as a board's serial adapter would be: QEMU starts paused, the pty is looked
    up over QMP and opened, then the CPU runs, so no output is lost.
    """

    def __init__(
        self,
        arch: str,
        disk: Path,
        log_file: Path,
        *,
        usb: Path | None = None,
        forward: list[int] | None = None,
        open_console: ConsoleOpener | None = None,
    ) -> None:
        self.arch = arch
        self.disk = disk
        self.usb = usb
        self.forward = forward or []
        self.log_file = log_file
        self.open_console = open_console
        self.proc: subprocess.Popen[bytes] | None = None
        self.console: Console | None = None
        self.qmp: Qmp | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="abupdate-qemu-"))

    def start(self) -> Console:
        """Power on; return the console (connected before the guest runs)."""
        port = free_port()
        on_pty = self.open_console is not None
        cfg = VmConfig(
            self.arch,
            self.disk,
            usb=self.usb,
            serial="pty" if on_pty else f"tcp:127.0.0.1:{port},server=on,wait=on",
            qmp=self._tmp / "qmp.sock",
            forward=self.forward,
            paused=on_pty,
        )
        stderr = open(self._tmp / "qemu.stderr", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            qemu_command(cfg), stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
        )
        if self.open_console is not None:
            try:
                self.qmp = Qmp(self._tmp / "qmp.sock")
            except OSError:
                raise RuntimeError(f"QEMU did not start: {self._stderr()}") from None
            self.console = self.open_console(self.pty(), self.log_file)
            self.qmp.command("cont")
            return self.console
        deadline = time.monotonic() + 20
        while True:
            try:
                self.console = PyserialConsole(f"socket://127.0.0.1:{port}", self.log_file)
                break
            except serial.SerialException:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"QEMU did not start: {self._stderr()}") from None
                time.sleep(0.1)
        self.qmp = Qmp(self._tmp / "qmp.sock")
        return self.console

    def pty(self) -> str:
        """The pseudo-terminal QEMU made for the serial port (`-serial pty`)."""
        assert self.qmp is not None
        chardevs = self.qmp.command("query-chardev")
        assert isinstance(chardevs, list)
        for dev in chardevs:
            name = str(dev.get("filename", ""))
            if name.startswith("pty:"):
                return name.removeprefix("pty:")
        raise RuntimeError(f"QEMU has no pty serial port: {chardevs}")

    def _stderr(self) -> str:
        return (self._tmp / "qemu.stderr").read_text(errors="replace")

    def reset(self) -> None:
        """Hard reset (the reset button)."""
        assert self.qmp is not None
        self.qmp.command("system_reset")

    def power_cut(self) -> None:
        """Kill QEMU at once: nothing the guest did not write reaches the disk."""
        # The console goes first: a pty read after QEMU is gone only fails.
        if self.console:
            self.console.close()
            self.console = None
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._close()

    def stop(self) -> None:
        """Quit QEMU (QMP `quit`), killing it if it does not go."""
        if self.console and self.open_console is not None:
            self.console.close()
            self.console = None
        if self.proc and self.proc.poll() is None:
            try:
                if self.qmp:
                    self.qmp.command("quit")
                self.proc.wait(timeout=10)
            except (OSError, RuntimeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._close()

    def _close(self) -> None:
        if self.console:
            self.console.close()
            self.console = None
        if self.qmp:
            self.qmp.close()
            self.qmp = None
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
