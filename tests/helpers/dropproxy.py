"""A TCP proxy on 127.0.0.1 that cuts one connection off in the middle of an answer.

Put in front of a real server (goosebit), it injects the connection drop a
download must resume from: once `armed`, the first connection that has sent
more than `drop_after` bytes towards the client is closed there. `drops`
counts the cuts made.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.helpers.loopback import LoopbackServer


class DropProxy(LoopbackServer):
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target`, cutting one answer short when armed."""

    def __init__(self, target: int, drop_after: int = 256 * 1024) -> None:
        self.target = target
        self.drop_after = drop_after
        self.armed = False
        self.drops = 0
        self._lock = threading.Lock()
        super().__init__()

    def serve(self, client: socket.socket) -> None:
        server = socket.create_connection(("127.0.0.1", self.target))
        threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
        self._pipe(server, client, True)

    def _pipe(self, src: socket.socket, dst: socket.socket, answer: bool) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if answer:
                    with self._lock:
                        cut = self.armed and sent + len(data) > self.drop_after
                        if cut:
                            self.armed = False
                            self.drops += 1
                    if cut:
                        dst.sendall(data[: self.drop_after - sent])
                        break
                    sent += len(data)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
