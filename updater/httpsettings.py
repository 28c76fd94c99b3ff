"""How the updater reaches an HTTPS server: TLS files, timeouts, deadline, retries.

Kept apart from the HTTPS source so that reading a device configuration does not
load the HTTP client.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import UsageError

_SECONDS = ("connect_timeout", "read_timeout", "deadline", "backoff_initial", "backoff_max")


@dataclass(frozen=True)
class HttpSettings:
    """How to reach an HTTPS server; every field has a safe default.

    Attributes:
        ca_file: PEM file of the CA certificates to trust; None trusts the system store.
        client_cert: PEM client certificate for mutual TLS (may also hold the key).
        client_key: PEM private key of `client_cert`, when kept in its own file.
        connect_timeout: Seconds to wait for a TCP and TLS connection.
        read_timeout: Seconds to wait for the next bytes of an answer.
        deadline: Seconds the whole download may take, retries included.
        retries: How many times in a row a failed request is retried.
        backoff_initial: Seconds to wait before the first retry; doubled each time.
        backoff_max: Longest wait between two retries, in seconds.
    """

    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    deadline: float = 3600.0
    retries: int = 5
    backoff_initial: float = 0.5
    backoff_max: float = 8.0

    def __post_init__(self) -> None:
        for name in _SECONDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UsageError(f"HTTP setting {name} must be a number of seconds, not {value!r}")
            if not math.isfinite(value):
                raise UsageError(f"HTTP setting {name} must be a finite number of seconds")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int):
            raise UsageError(f"HTTP setting retries must be a whole number, not {self.retries!r}")
        for name in ("connect_timeout", "read_timeout", "deadline"):
            if not getattr(self, name) > 0:
                raise UsageError(f"HTTP setting {name} must be a positive number of seconds")
        if self.retries < 0:
            raise UsageError("HTTP setting retries must not be negative")
        if self.backoff_initial < 0 or self.backoff_max < 0:
            raise UsageError("HTTP back-off settings must not be negative")
        if self.client_key is not None and self.client_cert is None:
            raise UsageError("HTTP setting client_key needs client_cert as well")
