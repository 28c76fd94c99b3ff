"""Ending HTTP requests from another thread when their time is up.

A read timeout bounds each socket read, not their sum: a server, or a proxy
answering `CONNECT`, that sends a byte now and then holds a request for as long
as it likes. A `SocketCut` is a timer that, when it passes, shuts down every
socket its connections told it of, which ends any read or write on them; a
socket named after that is shut down at once. A `WatchedConnection` tells its
cut each socket it takes, as soon as the socket exists: before a proxy's tunnel
or the TLS handshake, not only once the request is sent.

Used by the HTTPS bundle source (one cut for a whole download) and the DDI
client (one cut for each request).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import weakref
from typing import Any

import urllib3.connection
from urllib3.util.ssltransport import SSLTransport


def shut_down(sock: Any) -> None:
    """End every read and write on `sock` (a plain or TLS socket, or a TLS-in-TLS transport).

    urllib3 wraps a TLS connection through an HTTPS proxy in an `SSLTransport`,
    which has no `shutdown`: its socket to the proxy is shut down instead.
    """
    if isinstance(sock, SSLTransport):
        sock = sock.socket
    # Closed, or detached by a TLS handshake in progress (which its own timeout
    # bounds): nothing left to wake.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class SocketCut:
    """Shuts down the sockets of the connections it was told of when its time passes.

    Each connection names the socket it holds (`hold`); when the time passes,
    those sockets are shut down, and so is every socket named after that. One
    timer thread serves a cut; connections are held weakly.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: weakref.WeakKeyDictionary[object, Any] = weakref.WeakKeyDictionary()
        self._passed = False
        self._timer: threading.Timer | None = None

    def start(self, seconds: float) -> None:
        """Shut the connections down `seconds` from now (once: later calls do nothing)."""
        with self._lock:
            if self._timer is None:
                self._timer = threading.Timer(seconds, self._cut)
                self._timer.daemon = True
                self._timer.start()

    def hold(self, owner: object, sock: Any) -> None:
        """Note that connection `owner` now holds `sock` (None: no socket)."""
        with self._lock:
            if sock is None:
                self._held.pop(owner, None)
                return
            self._held[owner] = sock
            if self._passed:
                shut_down(sock)

    @property
    def passed(self) -> bool:
        """Whether the time passed (and the connections were shut down)."""
        return self._passed

    def _cut(self) -> None:
        with self._lock:
            self._passed = True
            for sock in self._held.values():
                shut_down(sock)

    def cancel(self) -> None:
        """Stop the timer; the sockets are left as they are."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()


class WatchedConnection(urllib3.connection.HTTPConnection):
    """A connection that tells the cut `socket_cut()` names each socket it takes.

    urllib3 sets `sock` as soon as the TCP connection exists, then again after
    the TLS handshake; a proxy's answer to `CONNECT` is read in between.
    """

    _held: Any = None

    def socket_cut(self) -> SocketCut | None:
        """The cut this connection's sockets are shown to; None: none (as urllib3's own)."""
        return None

    @property
    def sock(self) -> Any:
        return self._held

    @sock.setter
    def sock(self, value: Any) -> None:
        self._held = value
        cut = self.socket_cut()
        if cut is not None:
            cut.hold(self, value)
