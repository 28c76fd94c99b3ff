"""Ending HTTP requests from another thread when their time is up.

A read timeout bounds each socket read, not their sum: a server, or a proxy
answering `CONNECT`, that sends a byte now and then holds a request for as long
as it likes. A `SocketCut` is a timer that, when it passes, shuts down every
socket its connections told it of, which ends any read or write on them; a
socket named after that is shut down at once. A `WatchedAdapter` (requests'
adapter) opens connections that tell the cut in force each socket they take, as
soon as the socket exists: before a proxy's tunnel or the TLS handshake, not
only once the request is sent.

Used by the HTTPS bundle source (one cut for a whole download) and the DDI
client (one cut for each request).
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import weakref
from collections.abc import Callable
from typing import Any

import requests.adapters
import urllib3
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
        """Note that connection `owner` now holds `sock` (None: no socket).

        Holding the same socket again is harmless: it is noted once, and shut
        down again (which does nothing) if the time passed.
        """
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


CutInForce = Callable[[], SocketCut | None]
"""Gives the cut in force for what a connection does now; None: none (as urllib3's own)."""


class WatchedConnection(urllib3.connection.HTTPConnection):
    """A connection that shows each socket it holds to the cut `socket_cut()` gives.

    urllib3 sets `sock` as soon as the TCP connection exists, then again after
    the TLS handshake; a proxy's answer to `CONNECT` is read in between. A
    kept-alive socket is shown again when a request is sent on it: the cut in
    force may be another one than the one it was opened under.
    """

    _held: Any = None

    def __init__(self, *args: Any, socket_cut: CutInForce, **kwargs: Any) -> None:
        self._socket_cut = socket_cut  # before urllib3's __init__, which sets `sock`
        super().__init__(*args, **kwargs)

    @property
    def sock(self) -> Any:
        return self._held

    @sock.setter
    def sock(self, value: Any) -> None:
        self._held = value
        cut = self._socket_cut()
        if cut is not None:
            cut.hold(self, value)

    def request(self, *args: Any, **kwargs: Any) -> None:
        cut = self._socket_cut()
        if cut is not None:
            cut.hold(self, self.sock)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(WatchedConnection, urllib3.connection.HTTPSConnection):
    pass


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = WatchedConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class WatchedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter, whose connections, direct or through an HTTP proxy, are watched.

    Each connection shows its sockets to the cut `socket_cut()` gives (see
    `WatchedConnection`). A SOCKS proxy's own pools are kept: a request through
    them is not cut short.

    Args:
        socket_cut: Gives the cut in force (one for the adapter's whole life, or
            one for each request).
    """

    def __init__(self, socket_cut: CutInForce) -> None:
        # Pools are made as pool_cls(host, port, **context); keyword arguments a
        # pool does not know go to its connections.
        self._watched: dict[type[urllib3.HTTPConnectionPool], Any] = {
            urllib3.HTTPConnectionPool: functools.partial(_WatchedHTTPPool, socket_cut=socket_cut),
            urllib3.HTTPSConnectionPool: functools.partial(
                _WatchedHTTPSPool, socket_cut=socket_cut
            ),
        }
        super().__init__()  # calls init_poolmanager

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self._watch(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        self._watch(manager)
        return manager

    def _watch(self, manager: urllib3.PoolManager) -> None:
        """Make `manager` open watched connections (again: no change; SOCKS: its own kept)."""
        manager.pool_classes_by_scheme = {
            scheme: self._watched.get(cls, cls)
            for scheme, cls in manager.pool_classes_by_scheme.items()
        }
