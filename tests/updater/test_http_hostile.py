"""HTTPS servers that answer in ways a plain fault cannot: slow header lines, redirects, 416.

Each server here is a small HTTP/1.1 server on 127.0.0.1 whose every answer is
written by a function of the test (`ScriptedServer`); the bytes it serves and
the requests it saw are at hand for the checks.
"""

from __future__ import annotations

import http.server
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from bundle_tool.errors import BundleError
from tests.helpers.silentserver import SilentServer
from tests.helpers.tlsca import TlsFiles
from updater.errors import TransportError
from updater.httpsettings import HttpSettings
from updater.httpsource import MAX_REDIRECTS, HttpSource

DATA = bytes(range(256)) * 64  # 16 KiB


@dataclass
class Seen:
    """One request as the scripted server saw it."""

    method: str
    path: str
    headers: dict[str, str]


Answer = Callable[["_Handler"], None]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        self.request.settimeout(10)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.seen.append(Seen(self.command, self.path, dict(self.headers)))
        self.server.answer(self)

    do_HEAD = do_CONNECT = do_GET

    def send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        """Answer with `status`, `headers`, a Content-Length and `body`."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_range(self) -> None:
        """A correct 206 answer from DATA for the single range asked for."""
        first, last = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
        self.send(
            206, {"Content-Range": f"bytes {first}-{last}/{len(DATA)}"}, DATA[first : last + 1]
        )


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, answer: Answer, context: ssl.SSLContext | None) -> None:
        self.answer = answer
        self.context = context
        self.seen: list[Seen] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        if self.context is None:
            return sock, addr
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-answer is what these tests are about


class ScriptedServer:
    """Serves HTTPS (plain HTTP when `tls` is None) with `answer(handler)` writing each answer."""

    def __init__(self, answer: Answer, tls: TlsFiles | None) -> None:
        context = None
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.server_cert, tls.server_key)
        self._server = _Server(answer, context)
        self.scheme = "http" if tls is None else "https"
        self.port: int = self._server.server_address[1]
        self.seen = self._server.seen
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str = "/bundle") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def serve(tls_files: TlsFiles) -> Iterator[Callable[..., ScriptedServer]]:
    """Start scripted servers: `serve(answer)` for HTTPS, `serve(answer, tls=False)` for HTTP."""
    started: list[ScriptedServer] = []

    def start(answer: Answer, *, tls: bool = True) -> ScriptedServer:
        server = ScriptedServer(answer, tls_files if tls else None)
        server.__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__()


def settings(tls_files: TlsFiles, **overrides: float) -> HttpSettings:
    fields: dict[str, Any] = {
        "ca_file": str(tls_files.ca_file),
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
        "deadline": 30.0,
        "retries": 0,
    }
    fields.update(overrides)
    return HttpSettings(**fields)


def read(source: HttpSource, offset: int, length: int) -> bytes:
    return b"".join(source.read(offset, length))


# -- the deadline ------------------------------------------------------------------


@pytest.mark.parametrize("via", ["server", "proxy"])
def test_the_deadline_bounds_header_lines_that_trickle(
    serve: Callable[..., ScriptedServer],
    tls_files: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
    via: str,
) -> None:
    """A header byte every 0.1 s never lets the read timeout pass; the deadline still
    does, in the server's answer or in a proxy's answer to CONNECT."""
    finished = threading.Event()
    status = b"HTTP/1.1 200 Connection established" if via == "proxy" else b"HTTP/1.1 206 OK"

    def trickle(h: _Handler) -> None:
        h.wfile.write(status + b"\r\nX-Slow: ")
        for _ in range(300):  # 30 s, unless the client hangs up
            h.wfile.write(b"a")
            time.sleep(0.1)
        h.wfile.write(b"\r\nContent-Range: bytes 0-0/1\r\nContent-Length: 1\r\n\r\nx")
        finished.set()

    server = serve(trickle, tls=via == "server")
    url = server.url()
    if via == "proxy":
        url = "https://127.0.0.1:9/bundle"  # the proxy is asked to connect there
        for name in ("https_proxy", "HTTPS_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{server.port}")
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
    src = HttpSource(url, settings(tls_files, read_timeout=1.0, deadline=1.5))
    with src, pytest.raises(TransportError, match=r"download deadline of 1\.5 s passed at byte 0"):
        read(src, 0, 1)
    assert not finished.is_set()  # the client hung up before the header lines ended
    assert [s.method for s in server.seen] == ["CONNECT" if via == "proxy" else "GET"]


# -- redirects ---------------------------------------------------------------------


def redirect_to(url: str, status: int = 302) -> Answer:
    return lambda h: h.send(status, {"Location": url})


@pytest.mark.parametrize("method", ["read", "size"])
def test_a_redirect_to_plain_http_is_refused_before_anything_is_sent(
    serve: Callable[..., ScriptedServer], tls_files: TlsFiles, method: str
) -> None:
    """Nothing reaches the plain-HTTP target: not its path and query, the Range or the headers."""
    with SilentServer() as plain:
        target = f"http://127.0.0.1:{plain.port}/secret/update.bundle?token=abc"
        server = serve(redirect_to(target))
        src = HttpSource(server.url(), settings(tls_files), headers={"X-Device-Secret": "s3cr3t"})
        with src, pytest.raises(TransportError, match="redirected to a non-HTTPS URL; refused"):
            read(src, 0, 1) if method == "read" else src.size()
        assert plain.accepted == 0
        assert src.request_count == 1


def test_redirects_to_http_are_followed_when_insecure_http_is_allowed(
    serve: Callable[..., ScriptedServer], tls_files: TlsFiles
) -> None:
    plain = serve(lambda h: h.send_range(), tls=False)
    server = serve(redirect_to(plain.url("/moved")))
    src = HttpSource(server.url(), settings(tls_files), allow_insecure_http=True)
    with src:
        assert read(src, 100, 50) == DATA[100:150]
    assert [(s.path, s.headers["Range"]) for s in plain.seen] == [("/moved", "bytes=100-149")]


def test_an_https_redirect_is_followed_without_the_authorization_for_another_host(
    serve: Callable[..., ScriptedServer], tls_files: TlsFiles
) -> None:
    """A relative redirect stays on the server and keeps every header; one to another
    server (here another port) keeps the others, not Authorization."""
    other = serve(lambda h: h.send_range())

    def first(h: _Handler) -> None:
        if h.path == "/bundle":
            h.send(307, {"Location": "/here"})
        else:
            h.send(301, {"Location": other.url("/there")})

    server = serve(first)
    headers = {"Authorization": "TargetToken t0k", "X-Device": "d1"}
    with HttpSource(server.url(), settings(tls_files), headers=headers) as src:
        assert read(src, 0, 10) == DATA[:10]
        assert src.size() == len(DATA)  # known from the answer's Content-Range
    assert [s.path for s in server.seen] == ["/bundle", "/here"]
    assert all(s.headers.get("Authorization") == "TargetToken t0k" for s in server.seen)
    (there,) = other.seen
    assert there.path == "/there" and there.headers["Range"] == "bytes=0-9"
    assert there.headers["X-Device"] == "d1" and "Authorization" not in there.headers


def test_a_redirect_loop_is_refused(
    serve: Callable[..., ScriptedServer], tls_files: TlsFiles
) -> None:
    server = serve(lambda h: h.send(302, {"Location": h.path}))
    src = HttpSource(server.url(), settings(tls_files))
    with src, pytest.raises(TransportError, match=f"redirected more than {MAX_REDIRECTS} times"):
        read(src, 0, 1)
    assert len(server.seen) == MAX_REDIRECTS + 1


# -- 416 ---------------------------------------------------------------------------


def unsatisfiable(size: int) -> Answer:
    return lambda h: h.send(416, {"Content-Range": f"bytes */{size}"})


def test_416_for_a_range_within_the_size_the_server_names_is_the_servers_fault(
    serve: Callable[..., ScriptedServer], tls_files: TlsFiles
) -> None:
    server = serve(unsatisfiable(5_000_000))
    src = HttpSource(server.url(), settings(tls_files))
    with src, pytest.raises(TransportError, match=r"416 .* bytes 0-63 of its 5000000 bytes"):
        read(src, 0, 64)


def test_416_for_a_range_past_the_size_the_server_names_is_a_short_bundle(
    serve: Callable[..., ScriptedServer], tls_files: TlsFiles
) -> None:
    server = serve(unsatisfiable(5_000_000))
    src = HttpSource(server.url(), settings(tls_files))
    with src, pytest.raises(BundleError, match="has 5000000 bytes, 5000001 needed"):
        read(src, 5_000_000, 1)
