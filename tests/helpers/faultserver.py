"""A small HTTPS server on 127.0.0.1 that serves one bytes object and misbehaves on demand.

Modes (set `FaultServer.mode` between requests):

`served` lists each answer once it is written (`Served`), `requests` each
request as it arrives.

* `normal`: correct `206` answers to byte ranges (`200` without Range); a
  request for several ranges gets a `multipart/byteranges` answer.
* `single_ranges`: as `normal`, but a request for several ranges gets `200`
  with the whole body (as servers without multi-range support answer).
* `single_ranges_416`: as `normal`, but a request for several ranges gets
  `416 Range Not Satisfiable` (as servers limiting the number of ranges answer).
* `unterminated`: as `normal`, but a multipart answer stops (the connection is
  closed) after the last part's bytes, before its closing boundary.
* `ignore_range`: `200` with the whole body, whatever the Range header says.
* `lie`: a body of the right length but a `Content-Range` one byte off (in
  each part of a multipart answer).
* `overrun`: the right `Content-Range`, then everything up to the end of the
  data plus `OVERRUN_EXTRA` junk bytes, with a matching (too large) `Content-Length`.
* `trickle`: the right answer, one body byte every `trickle_interval` seconds.

Also: `busy` (the next N requests get 503), `refuse_head` (HEAD gets 405) and
`etag` (the ETag of every answer).

Independently of the mode, `drops` is a list of body byte counts: request
number i (counting GET requests) sends at most `drops[i]` body bytes and then
closes the connection (`Served.dropped` tells whether that cut the answer
short); requests past the end of the list are not dropped.
"""

from __future__ import annotations

import http.server
import random
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from .tlsca import TlsFiles

MODES = (
    "normal",
    "single_ranges",
    "single_ranges_416",
    "unterminated",
    "ignore_range",
    "lie",
    "overrun",
    "trickle",
)
BOUNDARY = "fault-parts"
_CLOSING = f"\r\n--{BOUNDARY}--\r\n".encode()
_WHOLE_FILE = ("ignore_range", "single_ranges")  # modes that answer several ranges with 200
OVERRUN_EXTRA = 64 * 1024
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_RANGES = re.compile(r"bytes=\d+-\d+(,\d+-\d+)+")


@dataclass
class Served:
    """One request as the fault server saw it."""

    method: str
    range: str | None
    status: int
    body_bytes_sent: int
    dropped: bool


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TlsServer

    def setup(self) -> None:
        self.request.settimeout(10)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, *, head: bool) -> None:
        owner = self.server.owner
        data = owner.data
        mode = owner.mode
        header = self.headers.get("Range")
        owner.record_request(self.command, header)
        refusal = 405 if head and owner.refuse_head else 503 if owner.take_busy() else None
        if refusal is not None:
            self._send_head(refusal, 0, {})
            owner.record(Served(self.command, header, refusal, 0, False))
            return
        m = _RANGE.fullmatch(header.strip()) if header else None
        extra: dict[str, str] = {}
        several = bool(header and _RANGES.fullmatch(header.strip()))
        if several and mode == "single_ranges_416":
            self._send_head(416, 0, {"Content-Range": f"bytes */{len(data)}"})
            owner.record(Served(self.command, header, 416, 0, False))
            return
        if several and mode not in _WHOLE_FILE:
            parts = self._parts(header.strip(), mode == "lie")
            if mode == "overrun":
                parts += b"\xee" * OVERRUN_EXTRA
            status, body = 206, memoryview(parts)
            extra["Content-Type"] = f"multipart/byteranges; boundary={BOUNDARY}"
        elif m is None or mode == "ignore_range":
            status, body = 200, memoryview(data)
        else:
            first = int(m.group(1))
            last = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            if first >= len(data):
                self._send_head(416, 0, {"Content-Range": f"bytes */{len(data)}"})
                owner.record(Served(self.command, header, 416, 0, False))
                return
            status, body = 206, memoryview(data)[first : last + 1]
            shown = (first + 1, last + 1) if mode == "lie" else (first, last)
            extra["Content-Range"] = f"bytes {shown[0]}-{shown[1]}/{len(data)}"
            if mode == "overrun":
                body = memoryview(bytes(data[first:]) + b"\xee" * OVERRUN_EXTRA)
        drop = None if head else owner.next_drop()
        if several and mode == "unterminated":
            drop = len(body) - len(_CLOSING)
        self._send_head(status, len(body), extra)
        if head:
            owner.record(Served(self.command, header, status, 0, False))
            return
        cut = drop is not None and drop < len(body)
        if cut:
            body = body[:drop]
        sent = 0
        try:
            if mode == "trickle":
                for i in range(len(body)):
                    self.wfile.write(body[i : i + 1])
                    sent += 1
                    time.sleep(owner.trickle_interval)
            else:
                self.wfile.write(body)
                sent = len(body)
        except OSError:
            self.close_connection = True
        # Record before closing, so the record precedes the client's next request.
        owner.record(Served(self.command, header, status, sent, cut))
        if cut:
            self.close_connection = True
            self.request.shutdown(socket.SHUT_RDWR)

    def _parts(self, header: str, lie: bool) -> bytes:
        """A multipart/byteranges body (the framing nginx uses) for `bytes=a-b,c-d,...`."""
        data = self.server.owner.data
        out = b""
        for spec in header.removeprefix("bytes=").split(","):
            first, last = (int(x) for x in spec.split("-"))
            shown = (first + 1, last + 1) if lie else (first, last)
            out += (
                f"\r\n--{BOUNDARY}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Range: bytes {shown[0]}-{shown[1]}/{len(data)}\r\n\r\n"
            ).encode() + data[first : last + 1]
        return out + _CLOSING

    def _send_head(self, status: int, length: int, extra: dict[str, str]) -> None:
        self.send_response(status)
        if "Content-Type" not in extra:
            self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", self.server.owner.etag)
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()


class _TlsServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: FaultServer, context: ssl.SSLContext) -> None:
        self.owner = owner
        self.context = context
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        # The handshake happens in the handler's thread, on the first read.
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gives up mid-answer is what these tests are about


class FaultServer:
    """A threaded HTTPS/1.1 server for `data`, with fault modes.

    Args:
        data: The bytes served at every path.
        tls: The run's TLS files; the server presents `tls.server_cert`.
    """

    def __init__(self, data: bytes, tls: TlsFiles) -> None:
        self.data = data
        self.tls = tls
        self.mode = "normal"
        self.drops: list[int] = []
        self.trickle_interval = 0.2
        self.busy = 0
        """How many of the next requests get `503 Service Unavailable`."""
        self.refuse_head = False
        """Answer HEAD requests with `405 Method Not Allowed`."""
        self.etag = '"fault-1"'
        """The ETag sent with every answer; change it to simulate a new upload."""
        self.served: list[Served] = []
        self.requests: list[tuple[str, str | None]] = []
        """(method, Range header) of each request, in arrival order."""
        self._gets = 0
        self._lock = threading.Lock()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.server_cert, tls.server_key)
        self._server = _TlsServer(self, context)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def ca_file(self) -> str:
        """The CA certificate that signed the server certificate."""
        return str(self.tls.ca_file)

    def url(self, name: str = "bundle") -> str:
        """An https:// URL on this server (every path serves `data`)."""
        return f"https://127.0.0.1:{self.port}/{name}"

    def drop_randomly(self, seed: int, count: int, max_bytes: int) -> None:
        """Drop the next `count` GET answers after 1..max_bytes-1 body bytes, chosen by `seed`."""
        rng = random.Random(seed)
        self.drops = [rng.randrange(1, max_bytes) for _ in range(count)]

    def next_drop(self) -> int | None:
        with self._lock:
            i = self._gets
            self._gets += 1
            return self.drops[i] if i < len(self.drops) else None

    def take_busy(self) -> bool:
        with self._lock:
            if self.busy > 0:
                self.busy -= 1
                return True
            return False

    def record_request(self, method: str, range_header: str | None) -> None:
        with self._lock:
            self.requests.append((method, range_header))

    def record(self, served: Served) -> None:
        with self._lock:
            self.served.append(served)

    def body_bytes_served(self) -> int:
        """Body bytes written to clients so far."""
        with self._lock:
            return sum(s.body_bytes_sent for s in self.served)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
