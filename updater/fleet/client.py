"""The DDI server over HTTPS, with the `[http]` table's TLS files, proxy and timeouts.

Every request carries the configured token in its `Authorization` header; no
message, log line or exception text ever holds it (they name the server and the
path only).

The server's answers are bounded: a body of at most `MAX_ANSWER` bytes (a DDI
answer is a few KiB: a deployment with its links), and each request, a proxy's
answer to `CONNECT`, answer headers and body included, ends within
`connect_timeout + read_timeout` seconds. The read timeout alone bounds each
wait for the next bytes, not their sum: a server or proxy sending a byte now and
then would hold a request for as long as it liked. When the time is up, a timer
shuts the request's connection down (`updater.sockcut`).
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Self
from urllib.parse import urlsplit

import requests
import urllib3
import urllib3.exceptions

from .. import byteranges
from ..errors import ServerRefused, TransportError, UsageError
from ..httpsettings import HttpSettings
from ..httpsource import _reason, system_ca_store
from ..sockcut import SocketCut, WatchedAdapter
from .ddi import printable
from .settings import FleetSettings

_BUSY = frozenset({409, 429, 503})
MAX_ANSWER = 1 << 20  # bytes of one answer's body (after Content-Encoding is undone)
_CHUNK = 64 << 10


_CUT: ContextVar[SocketCut | None] = ContextVar("ddi_request_cut", default=None)


class ServerBusy(TransportError):
    """The server asked us to come back later (429, 409, 503, perhaps with Retry-After)."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a `Retry-After` header asks for (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    seconds = byteranges.header_number(value)
    if seconds is not None:
        return float(seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def same_origin(a: str, b: str) -> bool:
    """Whether two URLs name the same scheme, host and port (RFC 6454's origin)."""
    x, y = urlsplit(a), urlsplit(b)
    default = {"https": 443, "http": 80}
    try:
        ports = (x.port or default.get(x.scheme), y.port or default.get(y.scheme))
    except ValueError:  # a port that is not a number
        return False
    return (x.scheme, x.hostname, ports[0]) == (y.scheme, y.hostname, ports[1])


def _where(url: str) -> str:
    parts = urlsplit(url)
    return printable(f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}")


class DdiClient:
    """JSON requests to one DDI server.

    Args:
        fleet: The `[fleet]` settings (server, token).
        http: The `[http]` settings (CA file, client certificate, timeouts).
        clock: Seconds since the epoch (for Retry-After dates).
    """

    def __init__(self, fleet: FleetSettings, http: HttpSettings, *, clock: Any = time.time) -> None:
        self.fleet = fleet
        self.http = http
        self._clock = clock
        self._session = requests.Session()
        for prefix in ("https://", "http://"):
            self._session.mount(prefix, WatchedAdapter(_CUT.get))
        self._session.headers["Accept"] = "application/hal+json, application/json"
        for name in ("ca_file", "client_cert", "client_key"):
            path = getattr(http, name)
            if path is not None:
                try:
                    open(path, "rb").close()
                except OSError as e:
                    raise UsageError(
                        f"HTTP setting {name}: cannot read {path}: {e.strerror}"
                    ) from e
        self._verify: str | bool = http.ca_file or system_ca_store()
        self._cert: str | tuple[str, str] | None = http.client_cert
        if http.client_cert and http.client_key:
            self._cert = (http.client_cert, http.client_key)
        self.request_count = 0

    def auth_headers(self, url: str) -> dict[str, str]:
        """The token's header for a request to `url`: only to the configured server.

        A link in a server's answer (a deployment, a download) may name another host;
        the token, tenant-wide for a gateway token, is not sent there.
        """
        auth = self.fleet.authorization
        return {"Authorization": auth} if auth and same_origin(url, self.fleet.server) else {}

    def _check_scheme(self, url: str) -> None:
        scheme = urlsplit(url).scheme
        if scheme != "https" and not (scheme == "http" and self.fleet.allow_http):
            raise TransportError(f"refusing the non-HTTPS URL {_where(url)}")

    @property
    def deadline(self) -> float:
        """Seconds one request may take, answer included: connect plus read timeout."""
        return self.http.connect_timeout + self.http.read_timeout

    def request(self, method: str, url: str, body: Any = None) -> bytes:
        """One request; the answer's body if it is a success (2xx).

        Raises:
            ServerBusy: 409, 429, 503 (with the Retry-After asked for).
            ServerRefused: another 4xx; 401 and 403 say to check the credentials.
            TransportError: A network or TLS failure, a 5xx, an answer larger than
                `MAX_ANSWER` bytes, or no complete answer within `deadline` seconds.
        """
        self._check_scheme(url)
        self.request_count += 1
        cut = SocketCut()
        cut.start(self.deadline)
        token = _CUT.set(cut)
        try:
            with self._exchange(method, url, body) as resp:
                answer = self._answer(method, url, resp)
        except (TransportError, requests.exceptions.RequestException, OSError) as e:
            if cut.passed:
                raise self._late(method, url) from e
            raise
        finally:
            _CUT.reset(token)
            cut.cancel()
        if cut.passed:  # an answer cut short may look complete (no Content-Length)
            raise self._late(method, url)
        return answer

    def _late(self, method: str, url: str) -> TransportError:
        return TransportError(
            f"{method} {_where(url)}: no complete answer within {self.deadline:g} s"
        )

    @contextlib.contextmanager
    def _exchange(self, method: str, url: str, body: Any) -> Iterator[requests.Response]:
        """Send the request; the answer, its body unread, closed at the end of the block."""
        where = _where(url)
        try:
            resp = self._session.request(
                method,
                url,
                json=body,
                headers=self.auth_headers(url),
                timeout=(self.http.connect_timeout, self.http.read_timeout),
                verify=self._verify,
                cert=self._cert,
                allow_redirects=False,
                stream=True,
            )
        except requests.exceptions.SSLError as e:
            raise TransportError(
                f"TLS with {where} failed ({_reason(e)}); check the CA file and client certificate"
            ) from e
        except requests.exceptions.RequestException as e:
            raise TransportError(f"{method} {where} failed: {_reason(e)}") from e
        try:
            yield resp
        finally:
            resp.close()

    def _answer(self, method: str, url: str, resp: requests.Response) -> bytes:
        """The body of a success, read up to `MAX_ANSWER` bytes; an error status raised."""
        status = resp.status_code
        said = f"{method} {_where(url)} answered {status} {printable(resp.reason or '')}"
        if 200 <= status < 300:
            return self._body(method, url, resp)
        if status in _BUSY:
            raise ServerBusy(said, retry_after(resp.headers.get("Retry-After"), self._clock()))
        if status in (401, 403):
            who = (
                "target_token"
                if self.fleet.target_token
                else ("gateway_token" if self.fleet.gateway_token else "client certificate")
            )
            raise ServerRefused(
                f"{said}: the server refused this device's credentials; check {who}", status
            )
        if 400 <= status < 500 and status != 408:
            raise ServerRefused(said, status)
        raise TransportError(said)

    def _body(self, method: str, url: str, resp: requests.Response) -> bytes:
        too_large = TransportError(
            f"{method} {_where(url)} answered more than {MAX_ANSWER} bytes; "
            "a DDI answer is a few KiB"
        )
        declared = byteranges.header_number(resp.headers.get("Content-Length", ""))
        if declared is not None and declared > MAX_ANSWER:
            raise too_large
        parts: list[bytes] = []
        size = 0
        try:
            for data in resp.iter_content(_CHUNK):
                size += len(data)
                if size > MAX_ANSWER:
                    raise too_large
                parts.append(data)
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            raise TransportError(f"{method} {_where(url)} failed: {_reason(e)}") from e
        return b"".join(parts)

    def get_json(self, url: str) -> Any:
        """GET `url`; its JSON answer, decoded.

        Raises:
            TransportError: as `request`, or the answer is no JSON.
        """
        body = self.request("GET", url)
        try:
            return json.loads(body)
        except ValueError as e:
            raise TransportError(f"GET {_where(url)} answered no JSON") from e
        except RecursionError as e:  # nested deeper than the parser goes
            raise TransportError(f"GET {_where(url)} answered JSON nested too deep") from e

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
