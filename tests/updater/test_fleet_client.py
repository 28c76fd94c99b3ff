"""The DDI client's requests: where its token goes, and what a hostile answer gets.

Real HTTP servers on 127.0.0.1 (a second port is another origin, as another host is).
"""

from __future__ import annotations

import dataclasses
import http.server
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.connectproxy import ConnectProxy
from tests.helpers.faultserver import FaultServer
from tests.helpers.tlsca import TlsFiles
from updater import byteranges
from updater.errors import TransportError
from updater.fleet.client import MAX_ANSWER, DdiClient, retry_after, same_origin
from updater.fleet.settings import parse_fleet
from updater.httpsettings import HttpSettings


class Recorder:
    """Answers every GET with `body`, and records each request's Authorization header."""

    def __init__(self, body: bytes = b"{}") -> None:
        self.body = body
        self.authorization: list[str | None] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                recorder.authorization.append(self.headers.get("Authorization"))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(recorder.body)))
                self.end_headers()
                self.wfile.write(recorder.body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers() -> Iterator[tuple[Recorder, Recorder]]:
    ours, other = Recorder(), Recorder()
    yield ours, other
    ours.close()
    other.close()


def fleet_table(server: str, **more: Any) -> dict[str, Any]:
    return {"server": server, "allow_http": True, "controller_id": "dev-1", **more}


def client_of(server: str, **more: Any) -> DdiClient:
    return DdiClient(parse_fleet(fleet_table(server, **more)), HttpSettings())


def test_the_token_goes_to_the_configured_server_only(servers: tuple[Recorder, Recorder]) -> None:
    """A link in an answer (deploymentBase, a download) may name another host."""
    ours, other = servers
    client = client_of(ours.url, gateway_token="tenant-wide-secret")
    client.get_json(f"{ours.url}/DEFAULT/controller/v1/dev-1")
    client.get_json(f"{other.url}/DEFAULT/controller/v1/dev-1/deploymentBase/7")
    assert ours.authorization == ["GatewayToken tenant-wide-secret"]
    assert other.authorization == [None]
    assert client.auth_headers(f"{ours.url}/file.bundle") == {
        "Authorization": "GatewayToken tenant-wide-secret"
    }
    assert client.auth_headers(f"{other.url}/file.bundle") == {}


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("https://fleet.example", "https://fleet.example:443/x", True),
        ("https://fleet.example", "http://fleet.example/x", False),
        ("https://fleet.example", "https://fleet.example.evil/x", False),
        ("https://fleet.example", "https://user@evil.example/x", False),
        ("https://fleet.example", "https://fleet.example:8443/x", False),
        ("https://fleet.example", "https://fleet.example:port/x", False),
    ],
)
def test_same_origin(a: str, b: str, same: bool) -> None:
    assert same_origin(a, b) is same


def test_json_nested_deeper_than_the_parser_goes_is_a_transport_error() -> None:
    server = Recorder(b"[" * 200_000 + b"]" * 200_000)
    try:
        with pytest.raises(TransportError, match="nested too deep"):
            client_of(server.url).get_json(f"{server.url}/DEFAULT/controller/v1/dev-1")
    finally:
        server.close()


@pytest.mark.parametrize("value", ["\u00b9", "9" * 5000, "-1", "1.5", "", " "])
def test_a_header_number_is_ascii_digits_that_int_takes(value: str) -> None:
    assert byteranges.header_number(value) is None
    assert byteranges.content_range(f"bytes 0-{value}/10") is None
    assert retry_after(value, 0.0) is None


def test_header_numbers_that_are_numbers() -> None:
    assert byteranges.header_number(" 4096 ") == 4096
    assert byteranges.content_range("bytes 0-4095/1082205383") == (0, 4095, 1082205383)
    assert retry_after("120", 0.0) == 120.0


class Trickler:
    """Answers each request with `answer`: its first `at_once` bytes at once, then the
    rest one byte every 0.25 s (under any read timeout), then it closes the connection."""

    def __init__(self, answer: bytes, at_once: int) -> None:
        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.recv(65536)
                try:
                    self.request.sendall(answer[:at_once])
                    for i in range(at_once, len(answer)):
                        time.sleep(0.25)
                        self.request.sendall(answer[i : i + 1])
                except OSError:  # the client gave up
                    pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


SHORT = HttpSettings(connect_timeout=1, read_timeout=1)  # each request ends within 2 s
SLOW_BODY = b"{" + b" " * 18 + b"}"  # 20 bytes: 5 s when trickled


@pytest.mark.parametrize("part", ["headers", "body"])
def test_an_answer_trickled_under_the_read_timeout_ends_at_the_deadline(part: str) -> None:
    """Every byte comes within the read timeout; the answer would take 5 s, or 7 s."""
    status = b"HTTP/1.1 200 OK\r\n"
    head = status + f"Content-Length: {len(SLOW_BODY)}\r\nX-Slow: abcdef\r\n\r\n".encode()
    server = Trickler(head + SLOW_BODY, len(status) if part == "headers" else len(head))
    try:
        with (
            DdiClient(parse_fleet(fleet_table(server.url)), SHORT) as client,
            pytest.raises(
                TransportError, match=r"^GET http://\S+/x: no complete answer within 2 s$"
            ),
        ):
            client.get_json(f"{server.url}/x")
    finally:
        server.close()


def test_a_trickled_answer_over_tls_ends_at_the_deadline(fault_server: FaultServer) -> None:
    fault_server.data = SLOW_BODY
    fault_server.mode = "trickle"
    fault_server.trickle_interval = 0.25
    table = {"server": fault_server.url(""), "controller_id": "dev-1"}
    http = dataclasses.replace(SHORT, ca_file=fault_server.ca_file)
    with (
        DdiClient(parse_fleet(table), http) as client,
        pytest.raises(TransportError, match="no complete answer within 2 s"),
    ):
        client.get_json(fault_server.url("x"))


def _through_proxy(monkeypatch: pytest.MonkeyPatch, proxy: str) -> None:
    for name in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, proxy)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "")


def _settled(records: list[Any]) -> list[Any]:
    """`records` once a server thread has added one (it does so when its client has left)."""
    for _ in range(100):
        if records:
            break
        time.sleep(0.05)
    return records


def test_a_proxy_trickling_its_answer_to_connect_ends_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The proxy's answer, a byte every 0.1 s, would take 9 s: the request ends before it."""
    fleet = parse_fleet({"server": "https://fleet.example", "controller_id": "dev-1"})
    with ConnectProxy(trickle=0.1) as proxy:
        _through_proxy(monkeypatch, proxy.url)
        with (
            DdiClient(fleet, SHORT) as client,
            pytest.raises(
                TransportError, match=r"^GET https://fleet.example/x: no complete answer within 2 s"
            ),
        ):
            client.get_json("https://fleet.example/x")
        assert _settled(proxy.answered)[0] < len(proxy.answer)


def test_a_trickled_answer_through_an_https_proxy_ends_at_the_deadline(
    fault_server: FaultServer, tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS inside TLS: the connection urllib3 holds has no shutdown of its own."""
    fault_server.data = b"{" + b" " * 38 + b"}"  # 40 bytes: 10 s when trickled
    fault_server.mode = "trickle"
    fault_server.trickle_interval = 0.25
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tls_files.server_cert, tls_files.server_key)
    table = {"server": fault_server.url(""), "controller_id": "dev-1"}
    http = dataclasses.replace(SHORT, ca_file=fault_server.ca_file)
    with ConnectProxy(tls=tls) as proxy:
        _through_proxy(monkeypatch, proxy.url)
        with (
            DdiClient(parse_fleet(table), http) as client,
            pytest.raises(TransportError, match="no complete answer within 2 s"),
        ):
            client.get_json(fault_server.url("x"))
    assert proxy.answered == [len(proxy.answer)]  # the request did go through the proxy
    assert _settled(fault_server.served)[0].body_bytes_sent < len(fault_server.data)


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "until-close"])
def test_an_answer_larger_than_the_bound_is_refused(declared: bool) -> None:
    """Whether the answer says its length or not, at most MAX_ANSWER bytes are taken."""
    body = b" " * MAX_ANSWER + b"{}"
    length = f"Content-Length: {len(body)}" if declared else "Connection: close"
    answer = f"HTTP/1.1 200 OK\r\n{length}\r\n\r\n".encode() + body
    server = Trickler(answer, len(answer))
    try:
        with pytest.raises(TransportError, match=f"answered more than {MAX_ANSWER} bytes"):
            client_of(server.url).get_json(f"{server.url}/x")
    finally:
        server.close()


def test_an_answer_of_the_bound_is_taken() -> None:
    body = b"{}" + b" " * (MAX_ANSWER - 2)
    server = Trickler(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body, 1 << 30)
    try:
        assert client_of(server.url).get_json(f"{server.url}/x") == {}
    finally:
        server.close()


def test_a_link_from_the_server_is_one_line_in_messages() -> None:
    """urlsplit drops line feeds; other control characters are escaped."""
    fleet = parse_fleet({"server": "https://fleet.example", "controller_id": "dev-1"})
    with pytest.raises(TransportError) as e:
        DdiClient(fleet, HttpSettings()).get_json("http://elsewhere.example/a\x85b\x1b[2K")
    assert str(e.value) == "refusing the non-HTTPS URL http://elsewhere.example/a\\x85b\\x1b[2K"
