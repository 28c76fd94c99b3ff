"""The DDI server over HTTPS, with the `[http]` table's TLS files, proxy and timeouts.

Every request carries the configured token in its `Authorization` header; no
message, log line or exception text ever holds it (they name the server and the
path only).
"""

from __future__ import annotations

import email.utils
import time
from typing import Any, Self
from urllib.parse import urlsplit

import requests

from .. import byteranges
from ..errors import ServerRefused, TransportError, UsageError
from ..httpsettings import HttpSettings
from ..httpsource import _reason, system_ca_store
from .ddi import printable
from .settings import FleetSettings

_BUSY = frozenset({409, 429, 503})


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

    def request(self, method: str, url: str, body: Any = None) -> requests.Response:
        """One request; the answer if it is a success (2xx).

        Raises:
            ServerBusy: 409, 429, 503 (with the Retry-After asked for).
            ServerRefused: another 4xx; 401 and 403 say to check the credentials.
            TransportError: A network or TLS failure, or a 5xx.
        """
        self._check_scheme(url)
        where = _where(url)
        self.request_count += 1
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
            )
        except requests.exceptions.SSLError as e:
            raise TransportError(
                f"TLS with {where} failed ({_reason(e)}); check the CA file and client certificate"
            ) from e
        except requests.exceptions.RequestException as e:
            raise TransportError(f"{method} {where} failed: {_reason(e)}") from e
        status = resp.status_code
        if 200 <= status < 300:
            return resp
        said = f"{method} {where} answered {status} {printable(resp.reason or '')}"
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

    def get_json(self, url: str) -> Any:
        resp = self.request("GET", url)
        try:
            return resp.json()
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
