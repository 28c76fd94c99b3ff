"""A CONNECT proxy on 127.0.0.1, plain or over TLS, that can trickle its answer.

With `HTTPS_PROXY` set to its `url`, a client's HTTPS requests go through it:
it reads `CONNECT host:port`, answers `200 Connection established`, and passes
bytes both ways until either side closes. With `trickle`, the answer is sent a
byte every `trickle` seconds (well within any read timeout), after a long
header, and the upstream is never reached. With `tls`, it is an HTTPS proxy: the
client's TLS to the server runs inside its TLS to the proxy.

`answered` lists, per connection, how many bytes of the answer were sent before
the client went away (the whole answer's length: the client waited for it all).
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading

from tests.helpers.loopback import LoopbackServer

ANSWER = b"HTTP/1.1 200 Connection established\r\n"


class ConnectProxy(LoopbackServer):
    """Tunnels CONNECT requests; see the module docstring."""

    def __init__(self, *, tls: ssl.SSLContext | None = None, trickle: float | None = None) -> None:
        self.tls = tls
        self.trickle = trickle
        padding = b"X-Slow: " + b"a" * 40 + b"\r\n" if trickle is not None else b""
        self.answer = ANSWER + padding + b"\r\n"
        self.answered: list[int] = []
        self._lock = threading.Lock()
        self.scheme = "https" if tls else "http"
        super().__init__()

    def serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            if self.tls is not None:
                client = self.tls.wrap_socket(client, server_side=True)
            request = b""
            while b"\r\n\r\n" not in request:
                data = client.recv(4096)
                if not data:
                    return
                request += data
            target = request.split(b" ", 2)[1].decode()
            sent = self._send_answer(client)
            with self._lock:
                self.answered.append(sent)
            if sent < len(self.answer) or self.trickle is not None:
                return
            host, _, port = target.rpartition(":")
            upstream = socket.create_connection((host, int(port)))
            _pipe(client, upstream)
        except (OSError, ValueError):
            pass
        finally:
            client.close()
            if upstream is not None:
                upstream.close()

    def _send_answer(self, client: socket.socket) -> int:
        """Bytes of the answer sent before the client left."""
        if self.trickle is None:
            client.sendall(self.answer)
            return len(self.answer)
        for i in range(len(self.answer)):
            readable, _, _ = select.select([client], [], [], self.trickle)
            try:
                if readable and not client.recv(1):
                    return i  # the client shut the connection down
                client.sendall(self.answer[i : i + 1])
            except OSError:
                return i
        return len(self.answer)


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Pass bytes both ways, in one thread (a TLS socket is not for two), until one side ends."""
    while True:
        pending = [s for s in (a, b) if isinstance(s, ssl.SSLSocket) and s.pending()]
        ready = pending or select.select([a, b], [], [], 30)[0]
        if not ready:
            return
        for src in ready:
            data = src.recv(65536)
            if not data:
                with contextlib.suppress(OSError):
                    (b if src is a else a).shutdown(socket.SHUT_RDWR)
                return
            (b if src is a else a).sendall(data)
