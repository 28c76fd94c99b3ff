"""The DDI API's JSON shapes as typed values: parsed strictly, built in one place.

Eclipse hawkBit's Direct Device Integration API (docs/fleet.md links it): the
device polls its base resource, which links to at most one deployment or cancel
action and asks for configData; the device answers with feedback. Parsing is
pure: it takes decoded JSON and raises `TransportError` naming what is wrong
(the server is at fault, not the device). A string from the server is quoted
in a message (`repr`, or `printable`): a line break in it cannot start a line
of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any, Literal
from urllib.parse import quote

from ..errors import TransportError

Handling = Literal["skip", "attempt", "forced"]
HANDLINGS: tuple[Handling, ...] = ("skip", "attempt", "forced")
Window = Literal["available", "unavailable"]
Execution = Literal[
    "closed", "proceeding", "canceled", "scheduled", "rejected", "resumed", "downloaded", "download"
]
Finished = Literal["success", "failure", "none"]
HASH_NAMES = ("sha256", "sha1", "md5")  # strongest first
MAX_SLEEP = 7 * 24 * 3600.0  # a week: a longer sleep is taken as this

_HMS = re.compile(r"(\d{1,3}):([0-5]\d):([0-5]\d)")
_ISO = re.compile(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?")


class DdiError(TransportError):
    """The server's answer is not what the DDI API says it is."""


def printable(text: str) -> str:
    """`text` with each character that is not printable escaped (`\\n`, `\\x1b`): one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def base_url(server: str, tenant: str, controller_id: str) -> str:
    """The controller's base resource: `SERVER/TENANT/controller/v1/CONTROLLER_ID`."""
    tenant, controller = quote(tenant, safe=""), quote(controller_id, safe="")
    return f"{server.rstrip('/')}/{tenant}/controller/v1/{controller}"


def parse_sleep(text: object) -> float:
    """Seconds of a polling sleep: `HH:MM:SS` (hawkBit, goosebit) or ISO-8601 (`PT5M`).

    Raises:
        DdiError: Neither form.
    """
    if isinstance(text, str):
        m = _HMS.fullmatch(text)
        if m:
            hours, minutes, seconds = (int(g) for g in m.groups())
            return min(MAX_SLEEP, hours * 3600.0 + minutes * 60 + seconds)
        m = _ISO.fullmatch(text)
        if m and text not in ("P", "PT") and not text.endswith("T"):
            d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
            return min(MAX_SLEEP, d * 86400 + h * 3600 + mi * 60 + s)
    raise DdiError(f"server sent a polling sleep that is no duration: {text!r}")


def _obj(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise DdiError(f"server answer: {what} is not a JSON object")
    return value


def _str(obj: Mapping[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise DdiError(f"server answer: {what} has no '{key}' string")
    return value


def _href(links: Mapping[str, Any], name: str) -> str | None:
    link = links.get(name)
    if link is None:
        return None
    href = _obj(link, f"link '{name}'").get("href")
    if not isinstance(href, str) or not href:
        raise DdiError(f"server answer: link '{name}' has no href")
    return href


@dataclass(frozen=True)
class Poll:
    """The base resource: how long to sleep and what the server wants done."""

    sleep: float | None
    deployment: str | None = None
    cancel: str | None = None
    config_data: str | None = None
    installed: str | None = None

    def summary(self) -> str:
        """What the answer asked for, in a word or three (for `fleet status`)."""
        asked = [
            n
            for n, v in (
                ("deploymentBase", self.deployment),
                ("cancelAction", self.cancel),
                ("configData", self.config_data),
            )
            if v
        ]
        return ", ".join(asked) or "nothing"


def parse_poll(body: object) -> Poll:
    """The base resource's answer."""
    obj = _obj(body, "the base resource")
    sleep: float | None = None
    config = obj.get("config")
    if config is not None:
        polling = _obj(_obj(config, "config").get("polling", {}), "config.polling")
        if "sleep" in polling:
            sleep = parse_sleep(polling["sleep"])
    links = _obj(obj.get("_links", {}), "_links")
    return Poll(
        sleep=sleep,
        deployment=_href(links, "deploymentBase"),
        cancel=_href(links, "cancelAction"),
        config_data=_href(links, "configData"),
        installed=_href(links, "installedBase"),
    )


@dataclass(frozen=True)
class Artifact:
    """One file of a chunk."""

    filename: str
    size: int
    hashes: Mapping[str, str]
    download: str

    @property
    def strongest_hash(self) -> tuple[str, str] | None:
        """The strongest hash offered, as (name, hex digest)."""
        for name in HASH_NAMES:
            if name in self.hashes:
                return name, self.hashes[name]
        return None


@dataclass(frozen=True)
class Chunk:
    """One software module of a deployment."""

    part: str
    name: str
    version: str
    artifacts: tuple[Artifact, ...]


@dataclass(frozen=True)
class Deployment:
    """A deployment action (`deploymentBase`)."""

    action_id: str
    download: Handling
    update: Handling
    chunks: tuple[Chunk, ...]
    maintenance_window: Window | None = None

    @property
    def artifacts(self) -> tuple[Artifact, ...]:
        return tuple(a for c in self.chunks for a in c.artifacts)

    def version_of(self, artifact: Artifact) -> str:
        """The version of the chunk holding `artifact`."""
        return next(c.version for c in self.chunks if artifact in c.artifacts)


def _artifact(raw: object) -> Artifact:
    obj = _obj(raw, "an artifact")
    filename = _str(obj, "filename", "an artifact")
    size = obj.get("size")
    if type(size) is not int or size < 0:
        raise DdiError(f"server answer: artifact {filename!r} has no size")
    hashes = _obj(obj.get("hashes", {}), f"hashes of {filename!r}")
    known = {k: v.lower() for k, v in hashes.items() if k in HASH_NAMES and isinstance(v, str)}
    links = _obj(obj.get("_links", {}), f"links of {filename!r}")
    # The https link first; `download-http` is the plain-HTTP one.
    href = _href(links, "download") or _href(links, "download-http")
    if href is None:
        raise DdiError(f"server answer: artifact {filename!r} has no download link")
    return Artifact(filename, size, known, href)


def _action_id(value: object, what: str) -> str:
    """An action id: a number or a printable string (it is named in messages)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise DdiError(f"server answer: {what} is missing")
    if not value.isprintable():
        raise DdiError(f"server answer: {what} {value!r} is not printable")
    return value


def parse_deployment(body: object) -> Deployment:
    """A `deploymentBase` answer.

    A chunk's version is shown only (in messages, feedback, `fleet status`): its
    characters that are not printable are escaped (`printable`).
    """
    obj = _obj(body, "the deployment")
    action = _action_id(obj.get("id"), "the deployment's id")
    dep = _obj(obj.get("deployment"), "deployment")
    handling: list[Handling] = []
    for key in ("download", "update"):
        value = dep.get(key, "forced")
        if value not in HANDLINGS:
            raise DdiError(f"server answer: deployment.{key} is {value!r}, not one of {HANDLINGS}")
        handling.append(value)
    window = dep.get("maintenanceWindow")
    if window not in (None, "available", "unavailable"):
        raise DdiError(f"server answer: deployment.maintenanceWindow is {window!r}")
    raw_chunks = dep.get("chunks", [])
    if not isinstance(raw_chunks, list):
        raise DdiError("server answer: deployment.chunks is not a list")
    chunks = []
    for raw in raw_chunks:
        c = _obj(raw, "a chunk")
        arts = c.get("artifacts", [])
        if not isinstance(arts, list):
            raise DdiError("server answer: a chunk's artifacts is not a list")
        chunks.append(
            Chunk(
                part=str(c.get("part", "")),
                name=str(c.get("name", "")),
                version=printable(_str(c, "version", "a chunk")),
                artifacts=tuple(_artifact(a) for a in arts),
            )
        )
    return Deployment(action, handling[0], handling[1], tuple(chunks), window)


def parse_cancel(body: object) -> tuple[str, str]:
    """A `cancelAction` answer: (its own id, the id of the action to stop)."""
    obj = _obj(body, "the cancel action")
    stop = _obj(obj.get("cancelAction"), "cancelAction").get("stopId")
    return (
        _action_id(obj.get("id"), "the cancel action's id"),
        _action_id(stop, "the cancel action's stopId"),
    )


@dataclass(frozen=True)
class Feedback:
    """One feedback message for an action (deployment or cancel)."""

    action_id: str
    execution: Execution
    finished: Finished
    details: tuple[str, ...] = ()
    progress: tuple[int, int] | None = None
    cancel: bool = False  # sent to the cancel action's resource
    at: float = field(default=0.0, compare=False)

    def path(self, base: str) -> str:
        kind = "cancelAction" if self.cancel else "deploymentBase"
        return f"{base}/{kind}/{quote(self.action_id, safe='')}/feedback"

    def body(self) -> dict[str, Any]:
        """The JSON body; the older `id`/`time` fields with the newer `timestamp`."""
        when = datetime.fromtimestamp(self.at, UTC)
        result: dict[str, Any] = {"finished": self.finished}
        if self.progress is not None:
            result["progress"] = {"cnt": self.progress[0], "of": self.progress[1]}
        status: dict[str, Any] = {"execution": self.execution, "result": result}
        if self.details:
            status["details"] = list(self.details)
        return {
            "id": self.action_id,
            "time": when.strftime("%Y%m%dT%H%M%S"),
            "timestamp": int(self.at * 1000),
            "status": status,
        }


def config_data_body(attributes: Mapping[str, str], at: float) -> dict[str, Any]:
    """The configData body: every attribute, replacing what the server held."""
    when = datetime.fromtimestamp(at, UTC)
    return {
        "mode": "replace",
        "data": dict(attributes),
        "id": "",
        "time": when.strftime("%Y%m%dT%H%M%S"),
        "status": {"execution": "closed", "result": {"finished": "success"}},
    }


def pick_artifact(artifacts: Sequence[Artifact], pattern: str) -> Artifact:
    """The one artifact whose file name matches `pattern`.

    Raises:
        DdiError: None or several match (the message names them).
    """

    found = [a for a in artifacts if fnmatchcase(a.filename, pattern)]
    if len(found) == 1:
        return found[0]
    names = ", ".join(repr(a.filename) for a in artifacts) or "none"
    if not found:
        raise DdiError(f"no artifact matches {pattern!r} (offered: {names})")
    raise DdiError(
        f"{len(found)} artifacts match {pattern!r}: {', '.join(repr(a.filename) for a in found)}"
    )
