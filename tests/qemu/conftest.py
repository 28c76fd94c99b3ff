"""Fixtures of the QEMU flows: images built once per session, one device per test.

Options:
  --qemu-arch arm64|amd64   run only that architecture (default both; run two pytest
                            processes, one per architecture, to use two cores)
  --device-port URL         drive a real board instead of QEMU (e.g. /dev/ttyUSB0 or
                            socket://HOST:PORT); tests that need power control or a disk
                            image are skipped
  --device-arch ARCH        the real board's architecture (default arm64)
The same settings as environment variables (usable from the repository root, where these
options are unknown): ABUPDATE_QEMU_ARCH, ABUPDATE_DEVICE_PORT, ABUPDATE_DEVICE_ARCH.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.tlsca import CertificateAuthority, TlsFiles
from tests.qemu.device import BOARDS, REPO, Device, copy_disk

BUILD = REPO / "qemu" / "build"
UPDATE_SERVER = "updates.abupdate.test"  # the host, as the images' /etc/hosts names it
ARCHES = ("arm64", "amd64")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qemu", "QEMU device flows")
    group.addoption("--qemu-arch", choices=ARCHES, help="run the QEMU flows for one architecture")
    group.addoption("--device-port", help="serial port (pyserial URL) of a real board")
    group.addoption("--device-arch", choices=ARCHES, help="the real board's architecture (arm64)")


def option(config: pytest.Config, name: str) -> str | None:
    """A command line option of this directory, or its ABUPDATE_* environment variable.

    The options exist only when pytest is pointed at tests/qemu (this conftest is then
    loaded at start-up); the environment variables work from anywhere, e.g. in CI.
    """
    value = config.getoption(name, default=None)
    if value is None:
        value = os.environ.get("ABUPDATE_" + name.lstrip("-").upper().replace("-", "_"))
    return str(value) if value else None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "arch" in metafunc.fixturenames:
        config = metafunc.config
        if option(config, "--device-port"):
            arches: tuple[str, ...] = (option(config, "--device-arch") or "arm64",)
        elif option(config, "--qemu-arch"):
            arches = (str(option(config, "--qemu-arch")),)
        else:
            arches = ARCHES
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
    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / f".lock-{arch}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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
        self.keys = BUILD / "keys"  # the development keys the images trust
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
            board = REPO / "board-configs" / f"{BOARDS[arch]}.toml"
            subprocess.run(
                [
                    str(REPO / ".venv/bin/bundle-tool"),
                    "create",
                    "--image",
                    str(info["rootfs"]),
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


@pytest.fixture
def device(
    request: pytest.FixtureRequest, arch: str, images: Images, tmp_path: Path
) -> Iterator[Device]:
    """A powered-off device with a private copy of the base image (or a real board)."""
    log = tmp_path / f"console-{arch}.log"
    request.node.console_logs = [log]
    port = option(request.config, "--device-port")
    if port:
        dev = Device(arch, log, port=port)
    else:
        info = images.base(arch)
        dev = Device(arch, log, disk=copy_disk(Path(str(info["disk"])), tmp_path / "disk.img"))
    try:
        yield dev
    finally:
        dev.power_off()


@pytest.fixture
def qemu_only(device: Device) -> Device:
    """The device, for tests that need QEMU's power control or its disk image."""
    if not device.is_qemu:
        pytest.skip("needs QEMU (power control or disk image access)")
    return device
