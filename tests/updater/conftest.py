"""Fixtures for the updater's tests: the run's TLS files, a real nginx, a faulty HTTPS server.

* `tls_files` (session): a CA made for this run, a server certificate for
  127.0.0.1/localhost and a client certificate, as `TlsFiles` of PEM paths.
* `nginx_server`: nginx on 127.0.0.1 serving a fresh directory `.root` over
  HTTPS; `.url(name)`, `.ca_file`, `.client_cert`, `.client_key`,
  `.body_bytes_served()`, `.log_entries()`, `.reset_log()`.
* `nginx_factory`: starts more nginx instances, e.g.
  `nginx_factory(require_client_cert=True)` for mutual TLS, `proxy_to=PORT` for
  TLS in front of a server on 127.0.0.1.
* `fault_server`: `FaultServer` serving `.data` (3 MiB of seeded random bytes
  unless a test assigns other bytes), with `.mode`, `.drops`, `.served`.
* `pki` (session, from tests/conftest.py): a development CA and signer.
* `device`: a device on plain files (tests/updater/device.py) booted from slot A,
  which holds a 700-block image; slot B empty and not bootable.
* `artifact_device`: the same on a board that places the artifacts `kernel.img`
  and `notes.txt` in a slot's boot folder.

Servers live on 127.0.0.1, so the proxy variables are told to leave it alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bundle_tool import keygen
from tests.helpers.boards import fit_board
from tests.helpers.faultserver import FaultServer
from tests.helpers.nginx import NginxServer
from tests.helpers.tlsca import TlsFiles, make_tls_files
from tests.updater.device import Device, image_bytes, make_device

FAULT_DATA_SIZE = 3 * 1024 * 1024


DEVICE_BLOCKS = 700  # 2.8 MiB: several 1 MiB spans and leaf blocks, two tree levels


@pytest.fixture
def device(tmp_path: Path, pki: keygen.DevPki) -> Device:
    return make_device(tmp_path / "device", pki, image_bytes(DEVICE_BLOCKS, seed=1))


@pytest.fixture
def artifact_device(tmp_path: Path, pki: keygen.DevPki) -> Device:
    """As `device`, on a board placing the artifacts `kernel.img` and `notes.txt`."""
    board = fit_board(
        tmp_path / "board.toml",
        {"kernel.img": "kernel.img", "notes.txt": "notes.txt"},
        chain="script",
    )
    return make_device(tmp_path / "device", pki, image_bytes(DEVICE_BLOCKS, seed=1), board=board)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA and certificates made once per test run."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture
def nginx_factory(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles
) -> Iterator[Callable[..., NginxServer]]:
    """Start nginx instances (`require_client_cert=True` for mTLS); all stop at teardown."""
    started: list[NginxServer] = []

    def start(
        *, root: Path | None = None, require_client_cert: bool = False, proxy_to: int | None = None
    ) -> NginxServer:
        work = tmp_path_factory.mktemp("nginx")
        if root is None:
            root = work / "root"
            root.mkdir()
        server = NginxServer(
            work, root, tls_files, require_client_cert=require_client_cert, proxy_to=proxy_to
        )
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def nginx_server(nginx_factory: Callable[..., NginxServer]) -> NginxServer:
    """A running nginx serving the empty directory `.root` over HTTPS."""
    return nginx_factory()


@pytest.fixture
def fault_server(tls_files: TlsFiles) -> Iterator[FaultServer]:
    """A running fault-injecting HTTPS server for 3 MiB of seeded random data."""
    data = random.Random(4).randbytes(FAULT_DATA_SIZE)
    with FaultServer(data, tls_files) as server:
        yield server
