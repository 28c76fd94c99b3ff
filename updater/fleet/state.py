"""What the fleet client keeps in the updater's state directory, each file replaced crash-safely.

* `fleet-action.json`: the pending action: {action id, target slot, version,
  bundle hash, phase}. Written before the boot switch and kept until the
  server acknowledged the final result, so the result after a reboot goes to
  the action that caused it.
* `fleet-feedback.json`: feedback not yet acknowledged, oldest first.
* `fleet-poll.json`: the last poll: when, and what the server answered.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from ..errors import DeviceError
from ..statedir import StateDir
from .ddi import Feedback

ACTION_FILE = "fleet-action.json"
QUEUE_FILE = "fleet-feedback.json"
POLL_FILE = "fleet-poll.json"
MAX_QUEUED = 64  # the oldest progress messages go first beyond this

Phase = Literal["downloading", "downloaded", "installed", "testing", "reported"]
PHASES = ("downloading", "downloaded", "installed", "testing", "reported")
#: The phases before the boot switch: a cancel is confirmed, the target never boots.
BEFORE_SWITCH = ("downloading", "downloaded")


@dataclass(frozen=True)
class PendingAction:
    """A deployment the device took on and has not finished reporting.

    Attributes:
        action_id: The server's action id.
        version: The version the server assigned.
        artifact_hash: The artifact's strongest hash, `name:hex`.
        phase: `downloading` (the install runs or was cut off), `downloaded`
            (written and checked ahead, not switched to: download only, or
            waiting for the maintenance window), `installed` (the
            switch was made, the reboot is due), `testing` (booted, not yet
            marked good, reported), `reported` (the final result is queued).
        target: The slot written (known once installed).
        from_slot: The slot that ran when the install started.
        etag: The artifact's ETag once the server named it: a resumed download
            asks for these bytes only (`If-Range`).
    """

    action_id: str
    version: str
    artifact_hash: str
    phase: Phase
    target: str | None = None
    from_slot: str | None = None
    etag: str | None = None

    def moved_to(self, phase: Phase, **changes: Any) -> PendingAction:
        return replace(self, phase=phase, **changes)


class FleetState(StateDir):
    """The fleet client's files in the updater's state directory."""

    def _load_or_none(self, name: str) -> Any:
        return self._load(name, None)

    def _save_or_remove(self, name: str, value: Any) -> None:
        """Replace the file with `value` crash-safely; None removes it."""
        if value is not None:
            self._save(name, value)
            return
        try:
            (self.path / name).unlink(missing_ok=True)
        except OSError as e:
            raise DeviceError(f"cannot remove state file {self.path / name}: {e.strerror}") from e

    # -- the pending action ------------------------------------------------------------------

    def pending(self) -> PendingAction | None:
        raw = self._load_or_none(ACTION_FILE)
        if raw is None:
            return None
        try:
            action = PendingAction(**raw)
        except TypeError as e:
            raise DeviceError(f"state file {self.path / ACTION_FILE} is malformed") from e
        if action.phase not in PHASES:
            raise DeviceError(f"state file {self.path / ACTION_FILE} holds phase {action.phase!r}")
        return action

    def set_pending(self, action: PendingAction | None) -> None:
        self._save_or_remove(ACTION_FILE, asdict(action) if action else None)

    # -- feedback not yet acknowledged --------------------------------------------------------

    def queued(self) -> list[Feedback]:
        raw = self._load_or_none(QUEUE_FILE) or []
        try:
            return [
                Feedback(
                    **{
                        **f,
                        "details": tuple(f.get("details", ())),
                        "progress": tuple(f["progress"]) if f.get("progress") else None,
                    }
                )
                for f in raw
            ]
        except (TypeError, AttributeError, KeyError) as e:
            raise DeviceError(f"state file {self.path / QUEUE_FILE} is malformed") from e

    def set_queued(self, items: list[Feedback]) -> None:
        if len(items) > MAX_QUEUED:  # drop progress first, never a final result
            progress = [i for i, f in enumerate(items) if f.execution == "proceeding"]
            drop = set(progress[: len(items) - MAX_QUEUED])
            items = [f for i, f in enumerate(items) if i not in drop]
        self._save_or_remove(QUEUE_FILE, [asdict(f) for f in items] or None)

    def enqueue(self, feedback: Feedback) -> None:
        self.set_queued([*self.queued(), feedback])

    # -- the last poll ---------------------------------------------------------------------

    def last_poll(self) -> dict[str, Any] | None:
        raw = self._load_or_none(POLL_FILE)
        return raw if isinstance(raw, dict) else None

    def record_poll(self, record: dict[str, Any]) -> None:
        self._save_or_remove(POLL_FILE, record)
