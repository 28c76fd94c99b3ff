"""Fixtures of the device flows: images built once per session, one device per test.

Options (the flows run on QEMU unless told otherwise):
  --qemu-arch arm64|amd64   run only that architecture (default both; run two pytest
                            processes, one per architecture, to use two cores)
  --target qemu|serial      pytest-embedded's option: `serial` drives a board on a serial
                            port instead of QEMU (see docs/hardware.md)
  --port PORT               pytest-embedded's option: the board's serial port (pyserial
                            URL: /dev/ttyUSB0, socket://HOST:PORT); --baud its speed
  --board FILE              the board's config (board-configs/NAME.toml): its architecture,
                            boot mount and boot environment tool
  --power-cmd CMD           switches the board's power: run with `on` / `off` in place of
                            `{action}` (or appended); without it the board is rebooted from
                            its shell and power-cut flows are skipped
  --boot-timeout SECONDS    how long one boot of the board may take (default 300)
The same settings as environment variables (usable from the repository root, where this
directory's options are unknown): ABUPDATE_QEMU_ARCH, ABUPDATE_TARGET, ABUPDATE_PORT,
ABUPDATE_BOARD, ABUPDATE_POWER_CMD, ABUPDATE_BOOT_TIMEOUT.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootctl.board import BoardConfig, load_board
from tests.helpers.tlsca import CertificateAuthority, TlsFiles
from tests.qemu.device import Boot, Device, copy_disk, release_line, usb_stick
from tests.qemu.qemulib import cache, settings, vm
from tests.qemu.target import PowerCommand, QemuResource, QemuTarget, SerialTarget

REPO = settings.REPO
BUILD = settings.BUILD
UPDATE_SERVER = settings.UPDATE_SERVER
TARGETS = ("qemu", "serial")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qemu", "device flows (QEMU or a board)")
    group.addoption(
        "--qemu-arch", choices=sorted(settings.ARCHES), help="run the QEMU flows for one arch"
    )
    group.addoption("--board", help="board config of the serial target (board-configs/*.toml)")
    group.addoption("--power-cmd", help="power switch of the serial target: CMD {action}")
    group.addoption("--boot-timeout", help="seconds one boot of the serial target may take")


def option(config: pytest.Config, name: str) -> str | None:
    """A command line option, or its ABUPDATE_* environment variable.

    This directory's options exist only when pytest is pointed at tests/qemu (this conftest
    is then loaded at start-up); the environment variables work from anywhere, e.g. in CI.
    `--target`, `--port` and `--baud` are pytest-embedded's, known everywhere.
    """
    try:
        value = config.getoption(name, default=None)
    except ValueError:
        value = None
    if value is None:
        value = os.environ.get("ABUPDATE_" + name.lstrip("-").upper().replace("-", "_"))
    return str(value) if value else None


def target_kind(config: pytest.Config) -> str:
    """`qemu` (the default) or `serial`."""
    kind = option(config, "--target") or "qemu"
    if kind not in TARGETS:
        raise pytest.UsageError(f"--target {kind}: the device flows run on {' or '.join(TARGETS)}")
    return kind


def serial_board(config: pytest.Config) -> tuple[Path, BoardConfig]:
    """The board config of the serial target (--board)."""
    path = option(config, "--board")
    if not path:
        raise pytest.UsageError("--target serial needs --board board-configs/NAME.toml")
    return Path(path), load_board(path)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "arch" in metafunc.fixturenames:
        config = metafunc.config
        if target_kind(config) == "serial":
            arches: tuple[str, ...] = (serial_board(config)[1].architecture,)
        elif option(config, "--qemu-arch"):
            arches = (str(option(config, "--qemu-arch")),)
        else:
            arches = tuple(settings.ARCHES)
        metafunc.parametrize("arch", arches)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        for log in getattr(item, "console_logs", []):
            if log.exists():
                text = log.read_text(errors="replace")
                report.sections.append((f"device console {log.name}", text[-20000:]))


def _locked_build(arch: str, out: Path, *args: str) -> dict[str, object]:
    """Run qemu/build-image under a per-architecture lock (parallel sessions share it)."""
    with cache.locked(BUILD / f".lock-{arch}"):
        proc = subprocess.run(
            [str(REPO / "qemu" / "build-image"), "--arch", arch, "--out", str(out), *args],
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        pytest.fail(f"qemu/build-image --arch {arch} {' '.join(args)} failed:\n{proc.stderr}")
    info: dict[str, object] = json.loads(proc.stdout)
    return info


class Images:
    """Images and root filesystems built on demand, once per session.

    Every image trusts the session's update-server CA, so any slot can install over HTTPS.
    """

    def __init__(self, tls: TlsFiles) -> None:
        self.tls = tls
        self._done: dict[tuple[str, ...], dict[str, object]] = {}

    def get(self, arch: str, name: str, *args: str) -> dict[str, object]:
        """Build (or reuse) variant `name` of `arch` made with build-image `args`."""
        key = (arch, name, *args)
        if key not in self._done:
            self._done[key] = _locked_build(
                arch,
                BUILD / arch / f"test-{name}",
                "--server-ca",
                str(self.tls.ca_file),
                *args,
            )
        return self._done[key]

    def base(self, arch: str) -> dict[str, object]:
        """The device image: version 1.0.0 in slot A, slot B empty."""
        return self.get(arch, "base")


class Bundles:
    """Signed bundles of root filesystem variants, made once per session."""

    def __init__(self, images: Images, workdir: Path) -> None:
        self.images = images
        self.dir = workdir
        self.keys = settings.DEV_KEYS  # the development keys the images trust
        self._done: dict[tuple[object, ...], Path] = {}

    def other_keys(self) -> Path:
        """A signing key and certificate from a CA no image trusts."""
        keys = self.dir / "other-keys"
        if not keys.exists():
            subprocess.run(
                [str(REPO / ".venv/bin/bundle-tool"), "keygen", "-o", str(keys)],
                check=True,
                capture_output=True,
            )
        return keys

    def get(
        self,
        arch: str,
        version: str,
        security_version: int,
        *,
        health_fails: bool = False,
        untrusted: bool = False,
        image_version: str | None = None,
    ) -> Path:
        """A bundle labelled `version` of a root filesystem built with qemu/build-image.

        The root filesystem is of `image_version` (default: `version`); a bundle that is
        only ever refused can reuse another version's image.
        """
        key = (arch, version, security_version, health_fails, untrusted, image_version)
        if key not in self._done:
            built = image_version or version
            args = ["--rootfs-only", "--version", built]
            if health_fails:
                args.append("--health-fails")
            name = f"v{built}" + ("-bad" if health_fails else "")
            info = self.images.get(arch, name, *args)
            keys = self.other_keys() if untrusted else self.keys
            trust = "-untrusted" if untrusted else ""
            out = self.dir / f"{arch}-{name}-as-{version}-sv{security_version}{trust}.bundle"
            board = settings.ARCHES[arch].board_path
            # A verified board's release carries its signed boot image, which holds the
            # root hash of the rootfs under the salt build-image used: the same here.
            boot_images = dict(info.get("boot_images") or {})  # type: ignore[call-overload]
            salt = str(info["verity"]).split(":")[1]
            subprocess.run(
                [
                    str(REPO / ".venv/bin/bundle-tool"),
                    "create",
                    "--image",
                    f"rootfs={info['rootfs']}",
                    *(f"--image={c}={f}" for c, f in sorted(boot_images.items())),
                    "--salt",
                    salt,
                    "--version",
                    version,
                    "--board-config",
                    str(board),
                    "--key",
                    str(keys / "signer.key"),
                    "--cert",
                    str(keys / "signer.pem"),
                    "--security-version",
                    str(security_version),
                    "-o",
                    str(out),
                ],
                check=True,
                capture_output=True,
            )
            self._done[key] = out
        return self._done[key]


@pytest.fixture(scope="session")
def bundles(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    return Bundles(images, tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="session")
def update_server_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA and a server certificate for the name the images give the host."""
    d = tmp_path_factory.mktemp("update-server-tls")
    ca = CertificateAuthority("abupdate QEMU update server CA")
    cert, key = ca.issue(d, "server", server_names=(UPDATE_SERVER, "127.0.0.1", "localhost"))
    client_cert, client_key = ca.issue(d, "device-client", client=True)
    return TlsFiles(ca.write(d / "ca.pem"), cert, key, client_cert, client_key)


@pytest.fixture(scope="session")
def images(update_server_tls: TlsFiles) -> Images:
    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("QEMU is not installed (./.ci/setup installs it)")
    return Images(update_server_tls)


class InstalledDisks:
    """The base image after its first update: 1.0.0 booted from slot A, the 2.0.0 bundle
    installed into slot B from a USB stick, the power switched off before B's first boot.

    Made once per architecture and session on QEMU (one boot and one install that every
    flow starting from "B just installed" would repeat), then copied for each test. The
    making is a flow of its own: its checks fail the test that first asks for the disk,
    with the console log of the making attached.
    """

    def __init__(self, images: Images, bundles: Bundles, workdir: Path) -> None:
        self.images = images
        self.bundles = bundles
        self.dir = workdir
        #: The disk made, or why it could not be (then every test asking fails at once).
        self._done: dict[str, Path | str] = {}

    def get(self, arch: str) -> Path:
        """The installed disk of `arch` (read-only: copy it with `copy_disk`)."""
        if arch not in self._done:
            try:
                self._done[arch] = self._make(arch)
            except (Exception, pytest.fail.Exception) as e:
                self._done[arch] = f"{type(e).__name__}: {e}"
        done = self._done[arch]
        if isinstance(done, str):
            pytest.fail(f"the {arch} disk with 2.0.0 installed in slot B was not made: {done}")
        return done

    def console_log(self, arch: str) -> Path:
        return self.dir / f"console-{arch}-install.log"

    def _make(self, arch: str) -> Path:
        # Imported here: the flows' modules import this conftest.
        from tests.qemu.test_flows import BUNDLE, install, mount_usb

        work = self.dir / arch
        work.mkdir(exist_ok=True)  # a making that was skipped left it
        disk = copy_disk(Path(str(self.images.base(arch)["disk"])), work / "disk.img")
        board = load_board(settings.ARCHES[arch].board_path)
        dev = Device(QemuTarget(QemuResource(arch, disk), board, self.console_log(arch)))
        dev.usb = usb_stick({"update.bundle": self.bundles.get(arch, "2.0.0", 2)}, work / "usb.img")
        try:
            dev.power_on()
            assert dev.wait_booted() == Boot("A", "1.0.0")
            assert release_line("1.0.0") in dev.con.log
            mount_usb(dev)
            rc, result = install(dev, BUNDLE)
            assert rc == 0, result
            assert result["slot"] == "B" and result["version"] == "2.0.0", result
            env = dev.env()
            assert env["BOOT_ORDER"].split()[0] == "B", env
            assert env["BOOT_B_VERITY"].count(":") == 2, env
            dev.sh("sync")
        finally:
            dev.power_off()
        return disk


@pytest.fixture(scope="session")
def installed_disks(
    images: Images, bundles: Bundles, tmp_path_factory: pytest.TempPathFactory
) -> InstalledDisks:
    return InstalledDisks(images, bundles, tmp_path_factory.mktemp("installed"))


def qemu_device(
    request: pytest.FixtureRequest,
    arch: str,
    images: Images,
    tmp_path: Path,
    open_console: vm.ConsoleOpener | None = None,
    *,
    source: Path | None = None,
) -> Iterator[Device]:
    """A powered-off QEMU device with a private copy of the base image (or of `source`)."""
    log = tmp_path / f"console-{arch}.log"
    request.node.console_logs = [log]
    if source is None:
        source = Path(str(images.base(arch)["disk"]))
    disk = copy_disk(source, tmp_path / "disk.img")
    board = load_board(settings.ARCHES[arch].board_path)
    dev = Device(QemuTarget(QemuResource(arch, disk), board, log, open_console=open_console))
    try:
        yield dev
    finally:
        dev.power_off()


@pytest.fixture
def device(
    request: pytest.FixtureRequest, arch: str, images: Images, tmp_path: Path
) -> Iterator[Device]:
    """A powered-off device: QEMU with a private copy of the base image, or the board."""
    config = request.config
    if target_kind(config) == "qemu":
        yield from qemu_device(request, arch, images, tmp_path)
        return
    log = tmp_path / f"console-{arch}.log"
    request.node.console_logs = [log]
    port = option(config, "--port")
    if not port:
        raise pytest.UsageError("--target serial needs --port (e.g. /dev/ttyUSB0)")
    power = option(config, "--power-cmd")
    target = SerialTarget(
        port,
        serial_board(config)[1],
        log,
        power=PowerCommand(power) if power else None,
        baud=int(option(config, "--baud") or 115200),
        boot_timeout=float(option(config, "--boot-timeout") or 300),
    )
    dev = Device(target)
    try:
        yield dev
    finally:
        dev.power_off()


@pytest.fixture
def qemu_only(device: Device) -> Device:
    """The device, for tests that need QEMU (its disk image, a USB stick, forwarded ports)."""
    if not device.is_qemu:
        pytest.skip("needs QEMU (disk image, USB stick or port forwarding)")
    return device


@pytest.fixture
def installed(
    request: pytest.FixtureRequest,
    arch: str,
    images: Images,
    installed_disks: InstalledDisks,
    tmp_path: Path,
) -> Iterator[Device]:
    """A powered-off QEMU device whose slot B has just been updated to 2.0.0 from a USB
    stick and not booted yet (`InstalledDisks`); its console log starts at the next boot."""
    source = installed_source(request, arch, installed_disks)
    yield from qemu_device(request, arch, images, tmp_path, source=source)


def installed_source(
    request: pytest.FixtureRequest, arch: str, installed_disks: InstalledDisks
) -> Path:
    """The installed disk of `arch` for a test (skipped but on QEMU); if the disk cannot
    be made, the test fails with the console log of the making."""
    if target_kind(request.config) != "qemu":
        pytest.skip("needs QEMU (a disk image made on an emulated device)")
    request.node.console_logs = [installed_disks.console_log(arch)]
    return installed_disks.get(arch)
