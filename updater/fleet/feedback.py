"""The outcome of each step, as DDI feedback (the table in docs/fleet.md).

Pure: each function returns the `Feedback` to queue; the agent stores and sends it.
"""

from __future__ import annotations

from .cycle import Outcome, failure_detail
from .ddi import Feedback
from .state import PendingAction


def started(action_id: str, at: float) -> Feedback:
    return Feedback(action_id, "proceeding", "none", ("download started",), at=at)


def progress(action_id: str, done: int, total: int, at: float) -> Feedback:
    percent = done * 100 // total if total else 100
    return Feedback(
        action_id, "proceeding", "none", (f"Downloaded {percent}%",), (percent, 100), at=at
    )


def installed(action_id: str, slot: str, at: float) -> Feedback:
    return Feedback(
        action_id,
        "proceeding",
        "none",
        (f"installed into slot {slot}, rebooting, testing pending",),
        at=at,
    )


def downloaded(action_id: str, slot: str, download_only: bool, at: float) -> Feedback:
    """Written ahead into `slot`: `downloaded` for a download-only action (it ends
    there), `proceeding` while the maintenance window is closed."""
    if download_only:
        return Feedback(
            action_id, "downloaded", "none", (f"downloaded into slot {slot}; not switched",), at=at
        )
    return Feedback(
        action_id,
        "proceeding",
        "none",
        (f"downloaded into slot {slot}; waiting for the maintenance window",),
        at=at,
    )


def failed(action_id: str, reason: str, at: float) -> Feedback:
    return Feedback(action_id, "closed", "failure", (reason,), at=at)


def after_boot(action: PendingAction, outcome: Outcome, booted: str | None, at: float) -> Feedback:
    """The feedback for what the boot state says of an installed action.

    `rebooting` has none (the installed message was sent already).
    """
    aid = action.action_id
    if outcome == "success":
        return Feedback(
            aid,
            "closed",
            "success",
            (f"slot {action.target} ({action.version}) runs, marked good",),
            at=at,
        )
    if outcome == "testing":
        return Feedback(aid, "proceeding", "none", ("testing pending",), at=at)
    if outcome == "interrupted":
        return failed(aid, "the install was interrupted; the server may assign it again", at)
    assert outcome == "failure", outcome
    return failed(aid, failure_detail(action, booted), at)
