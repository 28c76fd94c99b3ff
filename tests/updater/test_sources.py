"""Bundle sources: local file, forward-only stream, and HTTPS against nginx and a faulty server."""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import shutil
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bundle_tool import keygen
from bundle_tool.errors import BundleError
from tests.helpers.faultserver import FaultServer
from tests.helpers.nginx import NginxServer, free_port
from tests.helpers.silentserver import SilentServer
from tests.helpers.tlsca import CertificateAuthority
from tests.updater.device import REPO, Device, image_bytes, make_device
from updater.errors import TransportError, UsageError
from updater.filesource import FileSource, StdinSource
from updater.httpsettings import HttpSettings
from updater.httpsource import HttpSource
from updater.install import Installer
from updater.source import BundleSource
from updater.sources import open_source

SIZE = 3 * 1024 * 1024 + 12345  # not a multiple of the chunk size


def payload(size: int = SIZE, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def random_ranges(size: int, count: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    ranges = [(0, size), (size - 1, 1), (0, 1), (size, 0)]
    for _ in range(count):
        offset = rng.randrange(size)
        ranges.append((offset, rng.randrange(1, size - offset + 1)))
    return ranges


def read_all(source: BundleSource, offset: int, length: int) -> bytes:
    chunks = list(source.read(offset, length))
    assert all(0 < len(c) <= BundleSource.CHUNK for c in chunks)
    return b"".join(chunks)


def fast_settings(ca_file: str, **overrides: float | int | str | None) -> HttpSettings:
    """Small timeouts and back-off so fault tests finish in a few seconds."""
    fields: dict[str, float | int | str | None] = {
        "ca_file": ca_file,
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
        "deadline": 30.0,
        "retries": 3,
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
    }
    fields.update(overrides)
    return HttpSettings(**fields)  # type: ignore[arg-type]


def fault_source(server: FaultServer) -> HttpSource:
    """An HTTPS source for the fault server's bundle, with `fast_settings`."""
    return HttpSource(server.url(), fast_settings(server.ca_file))


# -- local file ----------------------------------------------------------------


def test_file_source_reads_random_ranges(tmp_path: Path) -> None:
    data = payload()
    path = tmp_path / "b.bundle"
    path.write_bytes(data)
    with FileSource(path) as source:
        assert source.size() == SIZE
        total = 0
        for offset, length in random_ranges(SIZE, 40, seed=2):
            assert read_all(source, offset, length) == data[offset : offset + length]
            total += length
        assert source.bytes_fetched == total


def test_file_source_reads_into_a_buffer(tmp_path: Path) -> None:
    data = payload()
    path = tmp_path / "b.bundle"
    path.write_bytes(data)
    with FileSource(path) as source:
        total = 0
        for offset, length in random_ranges(SIZE, 40, seed=3):
            buffer = bytearray(length)
            source.read_into(offset, memoryview(buffer))
            assert buffer == data[offset : offset + length]
            total += length
        assert source.bytes_fetched == total
        with pytest.raises(BundleError, match=f"has {SIZE} bytes, {SIZE + 1} needed"):
            source.read_into(SIZE - 100, memoryview(bytearray(101)))


def take_range(source: BundleSource, offset: int, sizes: list[int]) -> bytes:
    """Take consecutive pieces of `sizes` bytes from `offset` through `open_range`."""
    reader = source.open_range(offset, sum(sizes))
    out = bytearray()
    for n in sizes:
        buffer = bytearray(b"\xee" * n)
        reader.take_into(memoryview(buffer))
        out += buffer
    return bytes(out)


def test_a_range_is_taken_in_order_into_the_callers_buffers(tmp_path: Path) -> None:
    data = payload()
    path = tmp_path / "b.bundle"
    path.write_bytes(data)
    sizes = [4096, 1 << 20, 5, 300_000, 1 << 20]
    with FileSource(path) as source:
        assert take_range(source, 1000, sizes) == data[1000 : 1000 + sum(sizes)]
        assert source.bytes_fetched == sum(sizes)
        with pytest.raises(ValueError, match="the range ends at byte 1010"):
            source.open_range(1000, 10).take_into(memoryview(bytearray(11)))
    for stdin in pipe_with(data):
        assert take_range(stdin, 1000, sizes) == data[1000 : 1000 + sum(sizes)]
        assert stdin.bytes_fetched == 1000 + sum(sizes)  # the skipped bytes were read too


def test_file_source_refuses_reads_past_the_end(tmp_path: Path) -> None:
    path = tmp_path / "b.bundle"
    path.write_bytes(payload(1000))
    with FileSource(path) as source, pytest.raises(BundleError, match="ends early"):
        read_all(source, 900, 101)


def test_file_source_refuses_missing_paths_and_directories(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        FileSource(tmp_path / "nothing.bundle")
    with pytest.raises(UsageError, match="not a regular file"):
        FileSource(tmp_path)


# -- forward-only stream ---------------------------------------------------------


def pipe_with(data: bytes) -> Iterator[StdinSource]:
    """A StdinSource on a real pipe that a thread fills with `data`, then closes."""
    rfd, wfd = os.pipe()

    def feed() -> None:
        # A test may stop reading before the end; the reader closing its end is fine.
        with contextlib.suppress(BrokenPipeError), open(wfd, "wb") as w:
            w.write(data)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    with open(rfd, "rb") as stream:
        yield StdinSource(stream)
    thread.join(timeout=5)


@pytest.fixture
def stdin_source() -> Iterator[StdinSource]:
    yield from pipe_with(payload())


def test_stdin_source_reads_forward_and_skips(stdin_source: StdinSource) -> None:
    data = payload()
    rng = random.Random(3)
    pos = 0
    while pos < SIZE:
        offset = min(SIZE, pos + rng.choice([0, 0, 1, 4096, 1_500_000]))
        length = min(SIZE - offset, rng.randrange(0, 1_200_000))
        assert read_all(stdin_source, offset, length) == data[offset : offset + length]
        pos = offset + length
    assert stdin_source.size() is None
    assert stdin_source.at_eof()
    assert stdin_source.bytes_fetched == SIZE  # skipped bytes were read too


def test_stdin_source_refuses_going_back(stdin_source: StdinSource) -> None:
    read_all(stdin_source, 100, 100)
    with pytest.raises(ValueError, match="only reads forward"):
        read_all(stdin_source, 150, 10)


def test_stdin_source_early_eof_is_a_bundle_error(stdin_source: StdinSource) -> None:
    with pytest.raises(BundleError, match="ends early"):
        read_all(stdin_source, SIZE - 10, 11)


def test_stdin_source_at_eof_keeps_the_byte_it_peeked(stdin_source: StdinSource) -> None:
    data = payload()
    read_all(stdin_source, 0, SIZE - 2)
    assert not stdin_source.at_eof()
    assert not stdin_source.at_eof()
    assert read_all(stdin_source, SIZE - 2, 2) == data[-2:]
    assert stdin_source.at_eof()


def test_a_stream_is_read_through_to_its_signed_end(stdin_source: StdinSource) -> None:
    read_all(stdin_source, 0, 1000)
    stdin_source.check_end(SIZE)  # the bytes after those read (artifacts) are read through
    assert stdin_source.bytes_fetched == SIZE


@pytest.mark.parametrize(
    ("end", "message"),
    [(SIZE - 1, "does not account for"), (SIZE + 1, "ends early")],
)
def test_a_stream_that_does_not_end_at_its_signed_end_is_refused(
    stdin_source: StdinSource, end: int, message: str
) -> None:
    read_all(stdin_source, 0, 1000)
    with pytest.raises(BundleError, match=message):
        stdin_source.check_end(end)


def test_a_non_blocking_stream_is_waited_on(tmp_path: Path) -> None:
    """A pipe made O_NONBLOCK by its maker reads as a blocking one: the source waits.

    The feeder writes each piece only once the pipe is empty, so the reader finds it
    empty (no bytes yet, not the end) between pieces.
    """
    data = payload(200_000)
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)

    def queued() -> int:
        buf = bytearray(4)
        fcntl.ioctl(wfd, termios.FIONREAD, buf)
        return int.from_bytes(buf, sys.byteorder)

    def feed() -> None:
        for start in range(0, len(data), 30_000):
            while queued():
                time.sleep(0.001)
            os.write(wfd, data[start : start + 30_000])
        os.close(wfd)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    with open(rfd, "rb") as stream, StdinSource(stream) as source:
        assert read_all(source, 0, len(data) - 1) == data[:-1]
        assert not source.at_eof()
        assert read_all(source, len(data) - 1, 1) == data[-1:]
        assert source.at_eof()
    thread.join(timeout=5)


def test_a_file_has_its_end_checked_with_the_head(tmp_path: Path) -> None:
    """read_head compares a file's size with the signed total: nothing is left to read."""
    path = tmp_path / "b.bundle"
    path.write_bytes(payload(1000))
    with FileSource(path) as source:
        source.check_end(1000)
        assert source.bytes_fetched == 0


def test_a_file_cut_or_grown_since_it_was_opened_is_refused_at_its_end(tmp_path: Path) -> None:
    """The installer does not read every byte (zero spans), so the size is taken again."""
    path = tmp_path / "b.bundle"
    path.write_bytes(payload(1000))
    with FileSource(path) as source:
        os.truncate(path, 999)
        with pytest.raises(BundleError, match=r"ends early: .* has 999 bytes, 1000 needed"):
            source.check_end(1000)
        os.truncate(path, 1001)
        with pytest.raises(BundleError, match=r"changed while it was read: .* has 1001 bytes"):
            source.check_end(1000)
        assert source.bytes_fetched == 0


# -- choosing a source -----------------------------------------------------------


def test_open_source_picks_by_spec(tmp_path: Path) -> None:
    bundle = tmp_path / "usb" / "update.bundle"
    bundle.parent.mkdir()
    bundle.write_bytes(b"x" * 10)
    assert isinstance(open_source("-"), StdinSource)
    with open_source(str(bundle)) as s:
        assert isinstance(s, FileSource)
    with open_source(str(bundle.parent)) as s:  # a mount point with one bundle
        assert isinstance(s, FileSource) and s.path == str(bundle)
    with open_source("https://updates.example.com/b.bundle") as s:
        assert isinstance(s, HttpSource)
    (bundle.parent / "other.bundle").write_bytes(b"")
    with pytest.raises(UsageError, match=r"2 \*.bundle files"):
        open_source(str(bundle.parent))
    with pytest.raises(UsageError, match="only https://"):
        open_source("http://updates.example.com/b.bundle")
    with pytest.raises(UsageError, match="not found"):
        open_source(str(tmp_path / "missing.bundle"))


def test_open_source_reads_a_fifo_as_a_stream(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    data = payload(100_000)

    def feed() -> None:
        with fifo.open("wb") as w:
            w.write(data)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    with open_source(str(fifo)) as s:
        assert isinstance(s, StdinSource)
        assert read_all(s, 10, 99_990) == data[10:]
        assert s.at_eof()
    thread.join(timeout=5)


def test_install_from_a_closed_standard_input_is_a_usage_error(device: Device) -> None:
    """`updater install - <&-`: nothing to read a bundle from; said, as a usage error."""
    closed = ["sh", "-c", 'exec "$@" <&-', "sh"]  # runs the command with fd 0 closed
    install = [sys.executable, "-m", "updater.cli", "install", "-"]
    r = subprocess.run(
        [*closed, *install, "--config", str(device.config_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr == (
        "updater: error: standard input is closed: give the bundle on it (SOURCE -),"
        " or name its file\n"
    )


def test_http_urls_are_refused_unless_allowed_for_tests() -> None:
    with pytest.raises(UsageError, match="https://"):
        HttpSource("http://127.0.0.1/b.bundle")
    HttpSource("http://127.0.0.1/b.bundle", allow_insecure_http=True).close()
    for bad in ("https://", "https://host:99999/b", "https://[::1/b", "ftp://host/b"):
        with pytest.raises(UsageError, match="must start with https://"):
            HttpSource(bad)


def test_messages_never_show_credentials_or_query(fault_server: FaultServer) -> None:
    fault_server.mode = "ignore_range"
    url = f"https://user:secret@127.0.0.1:{fault_server.port}/b.bundle?token=hidden"
    source = HttpSource(url, fast_settings(fault_server.ca_file))
    with source, pytest.raises(TransportError) as info:
        read_all(source, 0, 10)
    message = str(info.value)
    assert f"https://127.0.0.1:{fault_server.port}/b.bundle " in message
    assert "secret" not in message and "hidden" not in message


def test_http_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="read_timeout"):
        HttpSettings(read_timeout=0)
    with pytest.raises(UsageError, match="client_key needs client_cert"):
        HttpSettings(client_key="k.pem")
    with pytest.raises(UsageError, match="ca_file: file not found"):
        HttpSource("https://127.0.0.1/b", HttpSettings(ca_file=str(tmp_path / "none.pem")))


# -- HTTPS from nginx ------------------------------------------------------------


@pytest.fixture
def served(nginx_server: NginxServer) -> tuple[NginxServer, bytes]:
    data = payload()
    (nginx_server.root / "b.bundle").write_bytes(data)
    return nginx_server, data


def test_https_from_nginx_full_and_random_ranges(served: tuple[NginxServer, bytes]) -> None:
    nginx, data = served
    with HttpSource(nginx.url("b.bundle"), HttpSettings(ca_file=nginx.ca_file)) as source:
        assert source.size() == SIZE
        for offset, length in random_ranges(SIZE, 30, seed=5):
            assert read_all(source, offset, length) == data[offset : offset + length]
        fetched = source.bytes_fetched
    entries = nginx.log_entries()
    gets = [e for e in entries if e["method"] == "GET"]
    assert all(e["status"] == 206 for e in gets)
    assert nginx.body_bytes_served() == fetched
    assert len({e["connection"] for e in entries}) == 1  # one kept-alive connection


def test_https_read_past_the_end_is_a_bundle_error(served: tuple[NginxServer, bytes]) -> None:
    nginx, _ = served
    settings = HttpSettings(ca_file=nginx.ca_file)
    source = HttpSource(nginx.url("b.bundle"), settings)  # size not known yet
    with source, pytest.raises(BundleError, match=f"has {SIZE} bytes"):
        read_all(source, SIZE - 5, 10)  # nginx answers a shorter range
    with HttpSource(nginx.url("b.bundle"), settings) as source:
        with pytest.raises(BundleError, match=f"has {SIZE} bytes"):
            read_all(source, SIZE + 5, 10)  # nginx answers 416
        with pytest.raises(BundleError, match="ends early"):
            read_all(source, SIZE, 1)  # size now known: refused without a request


def test_https_missing_file_is_not_retried(served: tuple[NginxServer, bytes]) -> None:
    nginx, _ = served
    with HttpSource(nginx.url("nope.bundle"), HttpSettings(ca_file=nginx.ca_file)) as source:
        with pytest.raises(TransportError, match="404"):
            read_all(source, 0, 10)
        assert source.retry_count == 0


def test_untrusted_server_certificate_is_refused(
    served: tuple[NginxServer, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nginx, _ = served
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    other_ca = CertificateAuthority("another CA").write(tmp_path / "other-ca.pem")
    for settings in (HttpSettings(), HttpSettings(ca_file=str(other_ca))):
        with HttpSource(nginx.url("b.bundle"), settings) as source:
            with pytest.raises(TransportError, match="certificate") as info:
                read_all(source, 0, 10)
            assert "certificate verify failed" in str(info.value)
            assert source.retry_count == 0
    assert nginx.body_bytes_served() == 0


def hashed_ca_dir(ca_file: str, directory: Path) -> Path:
    """A directory in OpenSSL's c_rehash layout (`<subject hash>.0`) holding `ca_file`."""
    directory.mkdir()
    subject_hash = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", ca_file],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    shutil.copy(ca_file, directory / f"{subject_hash}.0")
    return directory


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "SSL_CERT_DIR"])
def test_install_without_ca_file_trusts_the_system_store(
    served: tuple[NginxServer, bytes],
    tmp_path: Path,
    pki: keygen.DevPki,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
) -> None:
    nginx, _ = served
    blocks = 300
    device = make_device(tmp_path / "device", pki, image_bytes(blocks, seed=1))
    image = image_bytes(blocks, seed=2)
    (nginx.root / "u.bundle").write_bytes(device.bundle(image).read_bytes())
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    # The run's CA stands for the operating system's store, found the way OpenSSL finds it.
    nowhere = tmp_path / "nowhere"
    if variable == "SSL_CERT_FILE":
        monkeypatch.setenv("SSL_CERT_FILE", nginx.ca_file)
        monkeypatch.setenv("SSL_CERT_DIR", str(nowhere))
    else:
        monkeypatch.setenv("SSL_CERT_FILE", str(nowhere / "cert.pem"))
        monkeypatch.setenv("SSL_CERT_DIR", str(hashed_ca_dir(nginx.ca_file, tmp_path / "certs")))
    settings = HttpSettings()
    assert settings.ca_file is None
    with HttpSource(nginx.url("u.bundle"), settings) as source:
        result = Installer(device.config()).install(source)
    assert result.slot == "B" and result.bytes_fetched >= len(image)
    assert device.slot("B").read_bytes()[: len(image)] == image
    # The same store without the run's CA: the server is refused.
    stranger = CertificateAuthority("stranger CA").write(tmp_path / "stranger.pem")
    monkeypatch.setenv("SSL_CERT_FILE", str(stranger))
    monkeypatch.setenv("SSL_CERT_DIR", str(nowhere))
    source = HttpSource(nginx.url("u.bundle"), settings)
    with source, pytest.raises(TransportError, match="certificate verify failed"):
        Installer(device.config()).install(source)


def test_mutual_tls_needs_the_client_certificate(
    nginx_factory: Callable[..., NginxServer], tmp_path: Path
) -> None:
    nginx = nginx_factory(require_client_cert=True)
    data = payload(200_000)
    (nginx.root / "b.bundle").write_bytes(data)
    url = nginx.url("b.bundle")
    source = HttpSource(url, HttpSettings(ca_file=nginx.ca_file))
    with source, pytest.raises(TransportError, match="400"):
        read_all(source, 0, 10)
    # A certificate from a CA that nginx does not trust is refused too.
    stranger = CertificateAuthority("stranger CA")
    cert, key = stranger.issue(tmp_path, "intruder", client=True)
    settings = HttpSettings(ca_file=nginx.ca_file, client_cert=str(cert), client_key=str(key))
    with HttpSource(url, settings) as source, pytest.raises(TransportError, match="400"):
        read_all(source, 0, 10)
    settings = HttpSettings(
        ca_file=nginx.ca_file, client_cert=nginx.client_cert, client_key=nginx.client_key
    )
    with HttpSource(url, settings) as source:
        assert read_all(source, 0, len(data)) == data
    assert [e["client_verify"] for e in nginx.log_entries()][-1] == "SUCCESS"


def test_proxy_environment_is_honoured(
    served: tuple[NginxServer, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    nginx, data = served
    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, dead)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    settings = fast_settings(nginx.ca_file, retries=1)
    source = HttpSource(nginx.url("b.bundle"), settings)
    with source, pytest.raises(TransportError, match="proxy"):
        read_all(source, 0, 10)
    assert nginx.body_bytes_served() == 0
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with HttpSource(nginx.url("b.bundle"), settings) as source:
        assert read_all(source, 0, 10) == data[:10]


# -- HTTPS faults ----------------------------------------------------------------


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_dropped_connections_resume_from_the_byte_reached(
    fault_server: FaultServer, seed: int
) -> None:
    data = fault_server.data
    fault_server.drop_randomly(seed, count=30, max_bytes=200_000)
    with fault_source(fault_server) as source:
        got = read_all(source, 0, len(data) // 2)
        got += read_all(source, len(data) // 2, len(data) - len(data) // 2)
        assert got == data
        retries = source.retry_count
        assert source.bytes_fetched == len(data)  # nothing fetched twice
    gets = [s for s in fault_server.served if s.method == "GET"]
    assert retries == sum(s.dropped for s in gets) >= 20
    # Each resumed request starts exactly where the dropped one stopped.
    pos = 0
    for s in gets:
        assert s.range is not None
        assert s.range.startswith(f"bytes={pos}-")
        pos += s.body_bytes_sent
    assert pos == len(data)


def test_retries_back_off_exponentially_then_give_up(fault_server: FaultServer) -> None:
    fault_server.drops = [0] * 10  # headers, then the connection closes: no progress
    delays: list[float] = []
    settings = fast_settings(
        fault_server.ca_file, retries=5, backoff_initial=0.5, backoff_max=3.0, deadline=1000.0
    )
    source = HttpSource(fault_server.url(), settings, sleep=delays.append)
    with source, pytest.raises(TransportError, match="after 5 retries"):
        read_all(source, 0, 100)
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_deadline_stops_retries_before_it_passes(fault_server: FaultServer) -> None:
    fault_server.drops = [0] * 10
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    settings = fast_settings(
        fault_server.ca_file, retries=9, backoff_initial=1.0, backoff_max=100.0, deadline=10.0
    )
    source = HttpSource(fault_server.url(), settings, clock=lambda: now[0], sleep=sleep)
    with source, pytest.raises(TransportError, match="deadline of 10 s"):
        read_all(source, 0, 100)
    assert source.retry_count == 3  # waited 1 + 2 + 4; waiting 8 more would pass 10 s


def test_server_ignoring_range_is_refused(fault_server: FaultServer) -> None:
    fault_server.mode = "ignore_range"
    with fault_source(fault_server) as source:
        with pytest.raises(TransportError, match="ignored the Range request"):
            read_all(source, 1000, 1000)
        assert source.retry_count == 0
        assert source.bytes_fetched == 0


def test_wrong_content_range_is_refused(fault_server: FaultServer) -> None:
    fault_server.mode = "lie"
    with fault_source(fault_server) as source:
        with pytest.raises(TransportError, match="wrong Content-Range 'bytes 1001-2000/"):
            read_all(source, 1000, 1000)
        assert source.bytes_fetched == 0


def test_server_sending_more_than_asked_is_cut_at_the_range_end(
    fault_server: FaultServer,
) -> None:
    fault_server.mode = "overrun"
    data = fault_server.data
    with fault_source(fault_server) as source:
        for offset, length in [(1000, 5000), (2_000_000, 1_000_000), (len(data) - 10, 10)]:
            before = source.bytes_fetched
            assert read_all(source, offset, length) == data[offset : offset + length]
            assert source.bytes_fetched - before == length
        assert source.retry_count == 0


def test_trickling_server_hits_the_deadline(fault_server: FaultServer) -> None:
    fault_server.mode = "trickle"
    fault_server.trickle_interval = 0.05  # each byte well within the read timeout
    settings = fast_settings(fault_server.ca_file, read_timeout=1.0, deadline=1.5)
    start = time.monotonic()
    with HttpSource(fault_server.url(), settings) as source:
        with pytest.raises(TransportError, match=r"deadline of 1\.5 s passed"):
            read_all(source, 0, 1000)
        assert 0 < source.bytes_fetched < 1000
    assert time.monotonic() - start < 10  # all 1000 bytes would take 50 s


def test_read_timeout_resumes_from_the_byte_reached(fault_server: FaultServer) -> None:
    fault_server.mode = "trickle"
    fault_server.trickle_interval = 3.0  # one byte, then a stall longer than the timeout
    data = fault_server.data
    settings = fast_settings(fault_server.ca_file, read_timeout=0.5, deadline=20.0)
    with HttpSource(fault_server.url(), settings) as source:
        assert read_all(source, 500, 3) == data[500:503]
        assert source.retry_count == 3
    ranges = [r for _, r in fault_server.requests]
    # The first answer is read a whole chunk per call: its one byte is lost with
    # the timeout. From then on every byte received counts.
    assert ranges == ["bytes=500-502", "bytes=500-502", "bytes=501-502", "bytes=502-502"]


def test_connect_timeout_bounds_a_tls_handshake_that_never_completes() -> None:
    settings = HttpSettings(
        connect_timeout=0.5,
        read_timeout=60.0,  # were it used for the handshake, the test would time out
        deadline=600.0,
        retries=2,
        backoff_initial=0.01,
        backoff_max=0.05,
    )
    attempts = settings.retries + 1
    bound = attempts * settings.connect_timeout + settings.retries * settings.backoff_max + 10.0
    failures: list[Exception] = []
    with SilentServer() as server:

        def fetch() -> None:
            with HttpSource(server.url(), settings) as source:
                try:
                    read_all(source, 0, 10)
                except Exception as e:  # the test looks at it
                    failures.append(e)

        start = time.monotonic()
        worker = threading.Thread(target=fetch, daemon=True)
        worker.start()
        worker.join(timeout=bound)
        elapsed = time.monotonic() - start
        assert not worker.is_alive(), f"still connecting after {bound:.1f} s"
    (failure,) = failures
    assert isinstance(failure, TransportError), failure
    assert "after 2 retries" in str(failure) and "timed out" in str(failure)
    assert server.accepted == attempts  # each attempt connected, then waited in the handshake
    assert elapsed >= attempts * settings.connect_timeout * 0.9


def test_bundle_replaced_during_download_is_refused(fault_server: FaultServer) -> None:
    with fault_source(fault_server) as source:
        read_all(source, 0, 100)
        fault_server.data = fault_server.data + b"new"
        with pytest.raises(TransportError, match="changed size"):
            read_all(source, 100, 100)


def test_busy_server_is_retried(fault_server: FaultServer) -> None:
    fault_server.busy = 2
    data = fault_server.data
    with fault_source(fault_server) as source:
        assert read_all(source, 10, 20) == data[10:30]
        assert source.retry_count == 2
    assert [s.status for s in fault_server.served] == [503, 503, 206]


def test_size_falls_back_to_a_range_request_without_head(fault_server: FaultServer) -> None:
    fault_server.refuse_head = True
    with fault_source(fault_server) as source:
        assert source.size() == len(fault_server.data)
    assert fault_server.requests == [("HEAD", None), ("GET", "bytes=0-0")]


def test_bundle_replaced_with_same_size_is_refused(fault_server: FaultServer) -> None:
    with fault_source(fault_server) as source:
        assert source.size() == len(fault_server.data)
        fault_server.etag = '"fault-2"'
        with pytest.raises(TransportError, match="changed during the download"):
            read_all(source, 0, 100)


# --- several ranges in one request (multipart/byteranges) ---------------------------

SPANS = [(10, 100), (5000, 3000), (70000, 5), (1_000_000, 600_000), (3_100_000, 7)]


def read_spans_all(source: BundleSource, spans: list[tuple[int, int]]) -> bytes:
    chunks = list(source.read_spans(spans))
    assert all(0 < len(c) <= BundleSource.CHUNK for c in chunks)
    return b"".join(chunks)


def expected_spans(data: bytes, spans: list[tuple[int, int]]) -> bytes:
    return b"".join(data[offset : offset + length] for offset, length in spans)


def test_nginx_answers_many_ranges_in_one_request(served: tuple[NginxServer, bytes]) -> None:
    nginx_server, data = served
    nginx_server.reset_log()
    with HttpSource(nginx_server.url("b.bundle"), HttpSettings(nginx_server.ca_file)) as source:
        assert source.merge_gap == 0  # a gap costs a part header, not a request
        assert read_spans_all(source, SPANS) == expected_spans(data, SPANS)
        assert read_spans_all(source, SPANS[1:3]) == expected_spans(data, SPANS[1:3])
        fetched = source.bytes_fetched
    entries = nginx_server.log_entries()
    assert [e["range"].count(",") + 1 for e in entries] == [5, 2]
    assert len({e["connection"] for e in entries}) == 1  # each answer read to its end
    # Every byte nginx sent was counted; the framing is a small share.
    assert fetched == sum(int(e["body_bytes_sent"]) for e in entries)
    assert fetched - sum(n for _, n in SPANS + SPANS[1:3]) < 7 * 150


def test_server_without_multirange_support_is_asked_one_range_at_a_time(
    fault_server: FaultServer,
) -> None:
    fault_server.mode = "single_ranges"
    data = fault_server.data
    with fault_source(fault_server) as source:
        assert read_spans_all(source, SPANS) == expected_spans(data, SPANS)
        assert read_spans_all(source, SPANS[:2]) == expected_spans(data, SPANS[:2])
        # The whole file it sent instead was not read; gaps are bridged from now on.
        assert source.bytes_fetched == sum(n for _, n in SPANS + SPANS[:2])
        assert source.merge_gap == BundleSource.MERGE_GAP
        assert source.retry_count == 0
    ranges = [r for _, r in fault_server.requests]
    assert ranges[0] is not None and ranges[0].count(",") == len(SPANS) - 1
    assert ranges[1:] == [f"bytes={o}-{o + n - 1}" for o, n in SPANS + SPANS[:2]]


def test_many_ranges_resume_after_dropped_connections(fault_server: FaultServer) -> None:
    data = fault_server.data
    spans = [(offset, 999) for offset in range(0, len(data) - 999, 50_000)]
    # Five drops of at most 8 kB each, within an answer of about 70 kB: all five happen.
    fault_server.drop_randomly(seed=5, count=5, max_bytes=8_000)
    settings = fast_settings(fault_server.ca_file, retries=9)
    with HttpSource(fault_server.url(), settings) as source:
        assert read_spans_all(source, spans) == expected_spans(data, spans)
        assert source.retry_count == 5
    assert [s.dropped for s in fault_server.served] == [True] * 5 + [False]
    # Each retry asks again, in one request, for what was still missing.
    ranges = [r or "" for _, r in fault_server.requests]
    assert all(r.count(",") > 30 for r in ranges)
    assert [len(r) for r in ranges] == sorted((len(r) for r in ranges), reverse=True)


def test_parts_other_than_those_asked_for_are_not_used(fault_server: FaultServer) -> None:
    fault_server.mode = "lie"
    with fault_source(fault_server) as source:
        # The multipart answer is given up for single ranges, whose lie is refused.
        with pytest.raises(TransportError, match="wrong Content-Range 'bytes 11-110/"):
            read_spans_all(source, SPANS)
        assert source.bytes_fetched < 2 * 1024  # no part's bytes were taken


def test_junk_after_the_last_part_is_not_read(fault_server: FaultServer) -> None:
    fault_server.mode = "overrun"
    data = fault_server.data
    with fault_source(fault_server) as source:
        assert read_spans_all(source, SPANS[:3]) == expected_spans(data, SPANS[:3])
        framing = source.bytes_fetched - sum(n for _, n in SPANS[:3])
        assert 0 < framing < 3 * 150 + 1024  # at most one framing line's worth of junk
        assert source.retry_count == 0


def test_server_refusing_many_ranges_with_416_is_asked_one_at_a_time(
    fault_server: FaultServer,
) -> None:
    fault_server.mode = "single_ranges_416"
    data = fault_server.data
    with fault_source(fault_server) as source:
        assert read_spans_all(source, SPANS) == expected_spans(data, SPANS)
        assert source.retry_count == 0
    statuses = [s.status for s in fault_server.served]
    assert statuses == [416] + [206] * len(SPANS)


def test_answer_cut_before_its_closing_boundary_loses_nothing(fault_server: FaultServer) -> None:
    fault_server.mode = "unterminated"
    data = fault_server.data
    with fault_source(fault_server) as source:
        for _ in range(2):  # each answer ends early; nothing is asked again
            assert read_spans_all(source, SPANS[:3]) == expected_spans(data, SPANS[:3])
        assert source.retry_count == 0
        assert source.merge_gap == 0  # multi-range answers still count as working
    assert [r.count(",") for _, r in fault_server.requests if r] == [2, 2]
