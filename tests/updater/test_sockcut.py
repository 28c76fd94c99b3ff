"""The socket cut and the adapter whose connections show it their sockets.

A real HTTP server on 127.0.0.1 keeps connections alive and trickles the body
of `/slow`; a SOCKS proxy's manager is stood in for by one with its own pools.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import urllib3

from tests.helpers.loopback import LoopbackServer
from updater.sockcut import SocketCut, WatchedAdapter, WatchedConnection

TRICKLE = 40  # body bytes of /slow, one every 0.1 s: 4 s in all


class KeepAliveServer(LoopbackServer):
    """Answers `/quick` at once and `/slow` a byte at a time, on kept-alive connections."""

    connections = 0

    def serve(self, client: socket.socket) -> None:
        self.connections += 1
        with client, client.makefile("rb") as requests_in:
            for line in requests_in:
                slow = line.split()[1:2] == [b"/slow"]
                while requests_in.readline() not in (b"\r\n", b""):
                    pass  # the request's header lines
                body = b"x" * TRICKLE if slow else b"ok"
                try:
                    client.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                    for i in range(len(body)):
                        client.sendall(body[i : i + 1])
                        time.sleep(0.1 if slow else 0)
                except OSError:
                    return


@pytest.fixture
def keep_alive_server() -> Iterator[KeepAliveServer]:
    with KeepAliveServer() as server:
        yield server


class _Owner:
    """Stands for a connection (the cut holds its owners weakly)."""


def _passed(cut: SocketCut) -> bool:
    for _ in range(100):
        if cut.passed:
            return True
        time.sleep(0.01)
    return False


def test_holding_a_socket_again_is_harmless_before_and_after_the_time_passes() -> None:
    mine, theirs = socket.socketpair()
    with mine, theirs:
        cut, owner = SocketCut(), _Owner()
        cut.hold(owner, mine)
        cut.hold(owner, mine)
        cut.start(0)
        assert _passed(cut)
        assert mine.recv(1) == b""  # shut down: reads end at once
        cut.hold(owner, mine)  # shut down again: nothing happens
        assert mine.recv(1) == b""


def test_a_kept_alive_socket_is_held_by_the_cut_of_the_request_it_serves(
    keep_alive_server: KeepAliveServer,
) -> None:
    """The first request's cut is not the second's; the second still ends at its deadline."""
    in_force: list[SocketCut | None] = [SocketCut()]
    with requests.Session() as session:
        session.mount("http://", WatchedAdapter(lambda: in_force[0]))
        assert session.get(f"{keep_alive_server.url}/quick", timeout=5).content == b"ok"
        second = SocketCut()
        in_force[0] = second
        second.start(0.5)
        started = time.monotonic()
        with pytest.raises(requests.exceptions.RequestException):
            session.get(f"{keep_alive_server.url}/slow", timeout=5)
    assert time.monotonic() - started < 3  # not the 4 s the server trickles for
    assert second.passed
    assert keep_alive_server.connections == 1  # the second request went on the first's socket


def test_direct_and_http_proxy_pools_are_watched() -> None:
    adapter = WatchedAdapter(lambda: None)
    proxied = adapter.proxy_manager_for("http://127.0.0.1:3128")
    assert adapter.proxy_manager_for("http://127.0.0.1:3128") is proxied  # watched once
    for manager in (adapter.poolmanager, proxied):
        for url in ("http://example.invalid/", "https://example.invalid/"):
            pool = manager.connection_from_url(url)
            assert issubclass(pool.ConnectionCls, WatchedConnection)
            assert isinstance(pool._new_conn(), WatchedConnection)


class _OwnPool(urllib3.HTTPConnectionPool):
    pass


class _OwnHttpsPool(urllib3.HTTPSConnectionPool):
    pass


def test_a_socks_managers_own_pools_are_kept() -> None:
    """A SOCKS proxy manager (urllib3.contrib.socks) makes pools of its own classes."""
    adapter = WatchedAdapter(lambda: None)
    own: dict[str, Any] = {"http": _OwnPool, "https": _OwnHttpsPool}
    socks = urllib3.PoolManager()
    socks.pool_classes_by_scheme = dict(own)
    adapter.proxy_manager["socks5h://127.0.0.1:1080"] = socks  # as requests caches it
    assert adapter.proxy_manager_for("socks5h://127.0.0.1:1080") is socks
    assert socks.pool_classes_by_scheme == own
