"""A TCP server on 127.0.0.1 that accepts connections and never sends a byte.

A TLS client waits in its handshake for an answer that never comes: what a
server that is up but stuck looks like, or a middlebox that lets the TCP
handshake through and then swallows everything.
"""

from __future__ import annotations

import socket
import threading


class SilentServer:
    """Accepts connections, counts them in `accepted`, holds them open until stopped."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def url(self, name: str = "bundle") -> str:
        """An https:// URL on this server."""
        return f"https://127.0.0.1:{self.port}/{name}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            self._held.append(conn)

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for conn in self._held:
            conn.close()
