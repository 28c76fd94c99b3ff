"""The pure decisions of one poll cycle: what the boot state says, what to do, how long to wait.

Nothing here does I/O: the agent reads the server's answer, the pending action
and the slot state, asks these functions, and acts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from bootctl.state import BootState

from .ddi import Artifact, DdiError, Deployment, pick_artifact
from .settings import FleetSettings
from .state import BEFORE_SWITCH, PendingAction

Outcome = Literal["success", "failure", "testing", "rebooting", "interrupted"]
ACTIVE_POLL = 5.0  # seconds between polls while an action runs, so a cancel is seen


def boot_outcome(
    action: PendingAction, booted: str | None, state: BootState, full_tries: int
) -> Outcome:
    """What became of an installed action, read from the boot state (never from the server).

    * `success`: the target runs, is first in the boot order and has its full
      tries back (it was marked good);
    * `testing`: the target runs on trial (tries used, not yet marked good);
    * `failure`: the old slot runs and the target can no longer boot (out of
      tries, or marked bad);
    * `rebooting`: the old slot runs and the target boots next: the reboot is due;
    * `interrupted`: the install stopped before its switch, or was written
      ahead of it (`downloading`, `downloaded`, and the target neither runs nor
      boots next); a crash after the switch and before the phase was written
      counts as switched.
    """
    if action.target is None:
        return "interrupted"
    target = state.slot(action.target)
    switched = booted == action.target or (target.bootable and state.primary == action.target)
    if action.phase in BEFORE_SWITCH and not switched:
        return "interrupted"
    if booted == action.target:
        good = state.primary == action.target and target.tries >= full_tries
        return "success" if good else "testing"
    if target.bootable and state.primary == action.target:
        return "rebooting"
    return "failure"


def failure_detail(action: PendingAction, booted: str | None) -> str:
    """The line the server shows for a fallback."""
    fell_back = booted or "unknown"
    return f"slot {action.target} ({action.version}) failed to boot; fell back to {fell_back}"


Plan = Literal["install", "download", "wait", "fail"]


@dataclass(frozen=True)
class DeploymentPlan:
    """What to do with a deployment: install an artifact, download it ahead (write and
    check the inactive slot, no switch), wait, or refuse it."""

    plan: Plan
    artifact: Artifact | None = None
    reason: str = ""


def plan_deployment(
    dep: Deployment, settings: FleetSettings, declined: str | None = None
) -> DeploymentPlan:
    """Decide what a deployment asks of us (docs/fleet.md, "Deployments").

    `download: skip` waits, fetching nothing. A download-only deployment
    (`update: skip`) and one outside its maintenance window (`unavailable`) are
    downloaded ahead: written and checked into the inactive slot, not switched
    to; the window's opening installs them, keeping the blocks written. Otherwise
    our one bundle is installed; a soft one (`update: attempt`) waits instead when
    the device's `attempt_hook` `declined` it (why). No bundle, or several, fails
    naming what was offered.
    """
    try:
        artifact = pick_artifact(dep.artifacts, settings.artifact)
    except DdiError as e:
        return DeploymentPlan("fail", reason=str(e))
    if artifact.strongest_hash is None:
        return DeploymentPlan("fail", reason=f"artifact {artifact.filename!r} comes without a hash")
    if settings.max_download_bytes is not None and artifact.size > settings.max_download_bytes:
        return DeploymentPlan(
            "fail",
            reason=f"artifact {artifact.filename!r} has {artifact.size} bytes, more than "
            f"max_download_bytes = {settings.max_download_bytes}",
        )
    if dep.download == "skip":
        return DeploymentPlan("wait", artifact, "the server asks to skip the download for now")
    if dep.update == "skip":
        return DeploymentPlan("download", artifact, "download only")
    if dep.maintenance_window == "unavailable":
        return DeploymentPlan("download", artifact, "outside the maintenance window")
    if dep.update == "attempt" and declined is not None:
        return DeploymentPlan("wait", artifact, f"the attempt hook postponed it: {declined}")
    return DeploymentPlan("install", artifact)


def asks_the_hook(dep: Deployment, settings: FleetSettings) -> bool:
    """Whether the device's `attempt_hook` must be asked about this deployment first."""
    return settings.attempt_hook is not None and dep.update == "attempt"


def next_wait(
    server_sleep: float | None,
    settings: FleetSettings,
    *,
    active: bool,
    rng: random.Random,
) -> float:
    """Seconds until the next poll: the server's sleep clamped to the bounds, with jitter.

    While an action is active, a few seconds, so a cancel is seen soon.
    """
    base = (
        ACTIVE_POLL if active else (server_sleep if server_sleep is not None else settings.poll_max)
    )
    base = min(settings.poll_max, max(settings.poll_min, base)) if not active else base
    spread = base * settings.poll_jitter / 100
    return max(0.0, base + rng.uniform(-spread, spread))


def back_off(failures: int, settings: FleetSettings, retry_after: float | None) -> float:
    """Seconds to wait after `failures` failed polls in a row (429, 409, network errors).

    Doubles from `poll_min` up to `poll_max`; a server's `Retry-After` is honoured
    when longer.
    """
    delay: float = min(settings.poll_max, max(settings.poll_min, 1.0) * 2.0 ** max(0, failures - 1))
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.poll_max))
    return delay
