"""The `[fleet]` table of the device configuration: which DDI server, as whom, how often.

Kept apart from the client so that reading a device configuration does not load
the HTTP client.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import UsageError

FLEET_KEYS = {
    "server",
    "allow_http",
    "tenant",
    "controller_id",
    "target_token",
    "gateway_token",
    "poll_min",
    "poll_max",
    "poll_jitter",
    "artifact",
    "max_download_bytes",
    "reboot",
    "attempt_hook",
    "attributes",
}
MACHINE_ID = Path("/etc/machine-id")
MAX_STRING = 1024  # characters of a URL, token, id or attribute


@dataclass(frozen=True)
class FleetSettings:
    """How the device reaches its DDI server (docs/fleet.md lists every key).

    Attributes:
        server: Base URL of the server, `https://` (or `http://` with `allow_http`).
        allow_http: Accept an `http://` server (a test bench, never a fleet).
        tenant: The hawkBit tenant (goosebit: its configured tenant, `DEFAULT`).
        controller_id: The device's name on the server.
        target_token: Per-device token (`Authorization: TargetToken ...`).
        gateway_token: Tenant-wide token (`Authorization: GatewayToken ...`).
        poll_min: Shortest wait between two polls, in seconds.
        poll_max: Longest wait between two polls, in seconds.
        poll_jitter: Random spread of each wait, in percent of it.
        artifact: File-name glob of the bundle among a chunk's artifacts.
        max_download_bytes: Most bytes one install may download (None: no limit).
        reboot: `auto` (run `reboot`), `none`, or a command line to run.
        attempt_hook: A command line asked before a soft (`attempt`) deployment is
            installed: exit status 0 lets it go ahead, anything else postpones it.
        attributes: Extra configData strings sent to the server.
    """

    server: str
    controller_id: str
    allow_http: bool = False
    tenant: str = "DEFAULT"
    target_token: str | None = field(default=None, repr=False)
    gateway_token: str | None = field(default=None, repr=False)
    poll_min: float = 10.0
    poll_max: float = 3600.0
    poll_jitter: float = 10.0
    artifact: str = "*.bundle"
    max_download_bytes: int | None = None
    reboot: str = "auto"
    attempt_hook: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def authorization(self) -> str | None:
        """The `Authorization` header value (None: the client certificate identifies us)."""
        if self.target_token is not None:
            return f"TargetToken {self.target_token}"
        if self.gateway_token is not None:
            return f"GatewayToken {self.gateway_token}"
        return None


def _seconds(table: Mapping[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"device config: fleet.{key} must be a number of seconds")
    if value < 0:
        raise UsageError(f"device config: fleet.{key} must not be negative")
    return float(value)


def _printable(value: object, where: str) -> str:
    """A non-empty string of printable characters (it may go into an HTTP header), bounded."""
    if not isinstance(value, str) or not value:
        raise UsageError(f"device config: {where} must be a non-empty string")
    if len(value) > MAX_STRING or not value.isprintable():
        raise UsageError(
            f"device config: {where} must be printable, at most {MAX_STRING} characters"
        )
    return value


def _string(table: Mapping[str, Any], key: str, default: str | None) -> str | None:
    value = table.get(key, default)
    return None if value is None else _printable(value, f"fleet.{key}")


def machine_controller_id(machine_id: Path = MACHINE_ID) -> str:
    """The default controller id: `abupdate-` and the first 16 digits of the machine id."""
    try:
        text = machine_id.read_text().strip()
    except OSError as e:
        raise UsageError(
            f"device config: fleet.controller_id is not set and {machine_id} cannot be read"
        ) from e
    if len(text) < 16 or not all(c in "0123456789abcdef" for c in text):
        raise UsageError(
            f"device config: {machine_id} holds no machine id; set fleet.controller_id"
        )
    return f"abupdate-{text[:16]}"


def parse_fleet(table: Mapping[str, Any], *, machine_id: Path = MACHINE_ID) -> FleetSettings:
    """Check the `[fleet]` table and build its settings.

    Raises:
        UsageError: An unknown key (named), a missing server, a bad value.
    """
    unknown = sorted(set(table) - FLEET_KEYS)
    if unknown:
        raise UsageError(f"device config: unknown key '{unknown[0]}' in [fleet]")
    allow_http = table.get("allow_http", False)
    if not isinstance(allow_http, bool):
        raise UsageError("device config: fleet.allow_http must be true or false")
    server = _string(table, "server", None)
    if server is None:
        raise UsageError("device config: fleet.server is required")
    parts = urlsplit(server)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname:
        raise UsageError(
            f"device config: fleet.server must be an https:// URL naming a host"
            f"{' (or http://)' if allow_http else ' (http:// needs allow_http = true)'}"
        )
    if parts.username or parts.password or parts.query:
        raise UsageError("device config: fleet.server must hold no credentials or query")
    target = _string(table, "target_token", None)
    gateway = _string(table, "gateway_token", None)
    if target is not None and gateway is not None:
        raise UsageError("device config: set fleet.target_token or fleet.gateway_token, not both")
    poll_min = _seconds(table, "poll_min", 10.0)
    poll_max = _seconds(table, "poll_max", 3600.0)
    if poll_min > poll_max:
        raise UsageError("device config: fleet.poll_min must not exceed fleet.poll_max")
    jitter = _seconds(table, "poll_jitter", 10.0)
    if jitter > 100:
        raise UsageError("device config: fleet.poll_jitter is a percentage, at most 100")
    limit = table.get("max_download_bytes")
    if limit is not None and (type(limit) is not int or limit <= 0):
        raise UsageError("device config: fleet.max_download_bytes must be a positive integer")
    attributes = table.get("attributes", {})
    if not isinstance(attributes, dict):
        raise UsageError("device config: [fleet.attributes] must be a table of strings")
    for name, value in attributes.items():
        _printable(name, "a key of [fleet.attributes]")
        _printable(value, f"fleet.attributes.{name}")
    controller = _string(table, "controller_id", None) or machine_controller_id(machine_id)
    return FleetSettings(
        server=server.rstrip("/"),
        controller_id=controller,
        allow_http=allow_http,
        tenant=_string(table, "tenant", "DEFAULT") or "DEFAULT",
        target_token=target,
        gateway_token=gateway,
        poll_min=poll_min,
        poll_max=poll_max,
        poll_jitter=jitter,
        artifact=_string(table, "artifact", "*.bundle") or "*.bundle",
        max_download_bytes=limit,
        reboot=_string(table, "reboot", "auto") or "auto",
        attempt_hook=_string(table, "attempt_hook", None) or None,
        attributes=dict(attributes),
    )
