"""A TCP server on 127.0.0.1 for tests: each connection is served in a thread of its own."""

from __future__ import annotations

import socket
import threading
from typing import Self


class LoopbackServer:
    """Listens on a free port of 127.0.0.1 while used as a context manager.

    Subclasses define `serve(client)`, run in a new thread for each connection.
    """

    scheme = "http"

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(client,), daemon=True).start()

    def serve(self, client: socket.socket) -> None:
        raise NotImplementedError
