"""One poll cycle of the fleet client, and the loop of them (`updater fleet poll|run`).

The order of a cycle:

1. Send the feedback queued on disk, oldest first; stop at the first that is
   not acknowledged (`410 Gone` drops it).
2. An installed action is judged from the boot state (`cycle.boot_outcome`):
   its result goes to that action's id, queued first, and no other action starts
   before the server has acknowledged it; then configData tells what runs.
3. Poll the base resource; send configData when asked and at every start.
4. A cancel is confirmed (before the switch) or rejected (after it); a
   deployment is installed through the installer, from the artifact's URL,
   with the pending action written before the install and after its switch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
import random
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from bootctl.errors import BootctlError, SlotError
from bundle_tool.errors import BundleError, PolicyError, TrustError

from .. import installlock, installplan
from ..config import DeviceConfig
from ..errors import (
    BusyError,
    ContentChanged,
    DeviceError,
    ServerRefused,
    TransportError,
    UpdaterError,
    UsageError,
)
from ..install import Installer, Progress
from ..source import BundleSource
from . import cycle, ddi, feedback
from .client import DdiClient, ServerBusy
from .settings import FleetSettings
from .state import BEFORE_SWITCH, FleetState, PendingAction

if TYPE_CHECKING:
    from ..httpsource import HttpSource

Kind = Literal["action", "none", "failed"]
_INSTALL_ERRORS = (BundleError, TrustError, PolicyError, TransportError, DeviceError, UsageError)
PROGRESS_STEP = 25  # percent between two progress messages
HOOK_TIMEOUT = 60  # seconds the attempt hook may take to answer


@dataclass(frozen=True)
class CycleResult:
    """What one cycle did.

    Attributes:
        kind: `action` (an action was worked on), `none` (nothing pending) or
            `failed` (`error` says why).
        detail: One line for people.
        wait: Seconds until the next cycle should run.
        error: What failed, for the exit status.
    """

    kind: Kind
    detail: str
    wait: float
    error: Exception | None = None


def updater_version() -> str:
    try:
        return importlib.metadata.version("abupdate")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def default_reboot(command: str) -> None:
    """Run the reboot the `reboot` key names (`auto`: the `reboot` command)."""
    argv = ["reboot"] if command == "auto" else shlex.split(command)
    try:
        r = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as e:
        raise DeviceError(f"the install stands, but {argv[0]} could not run: {e.strerror}") from e
    if r.returncode != 0:
        raise DeviceError(f"the install stands, but {argv[0]} exited with {r.returncode}")


class FleetAgent:
    """The DDI client of one device.

    Args:
        config: The device configuration (its `[fleet]` table must be set).
        client: The server connection (default: from the config).
        installer_factory: Makes the installer with a progress callback (tests
            inject tuning and slots).
        open_download: Opens an artifact's URL as a bundle source.
        reboot: Runs the reboot after an install (`reboot = "none"` runs none).
        clock: Seconds since the epoch.
        rng: Jitter of the poll intervals.
    """

    def __init__(
        self,
        config: DeviceConfig,
        *,
        client: DdiClient | None = None,
        installer_factory: Callable[[Callable[[Progress], None]], Installer] | None = None,
        open_download: Callable[[str, str | None], BundleSource] | None = None,
        reboot: Callable[[str], None] = default_reboot,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if config.fleet is None:
            raise UsageError("device config: no [fleet] table: no server to poll")
        self.config = config
        self.fleet: FleetSettings = config.fleet
        self.client = client or DdiClient(self.fleet, config.http)
        self._installer_factory = installer_factory or (
            lambda progress: Installer(config, progress=progress)
        )
        self._open_download = open_download or self.http_download
        self._reboot = reboot
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - spreads polls, no secret
        self.state = FleetState(config.state_dir)
        self.base = ddi.base_url(self.fleet.server, self.fleet.tenant, self.fleet.controller_id)
        self._config_sent = False
        self._failures = 0

    # -- pieces ----------------------------------------------------------------------------

    def http_download(self, url: str, etag: str | None) -> HttpSource:
        """The artifact at `url` as a bundle source: `[http]` settings, our token, `If-Range`."""
        from ..httpsource import HttpSource  # noqa: PLC0415 - as in sources.open_source

        return HttpSource(
            url,
            self.config.http,
            allow_insecure_http=self.fleet.allow_http,
            headers=self.client.auth_headers(url),
            etag=etag,
        )

    def _installer(self, progress: Callable[[Progress], None] | None = None) -> Installer:
        return self._installer_factory(progress or (lambda p: None))

    def attributes(self, installer: Installer | None = None) -> dict[str, str]:
        """The full configData set: board, revision, running version, slot, bootloader, ours."""
        inst = installer or self._installer()
        try:
            booted = inst.control.booted_slot()
        except SlotError:
            booted = None
        record = inst.installed().get(booted) if booted else None
        attrs = {
            "hw_boardname": self.config.board.compatible,
            "hw_revision": "default",
            "sw_version": record.version if record else "",
            "slot": booted or "",
            "bootloader": self.config.board.bootloader,
            "updater_version": updater_version(),
        }
        attrs.update(self.fleet.attributes)
        return attrs

    def send_config_data(self, installer: Installer | None = None) -> None:
        body = ddi.config_data_body(self.attributes(installer), self.clock())
        self.client.request("PUT", f"{self.base}/configData", body)
        self._config_sent = True

    def flush(self) -> bool:
        """Send the queued feedback, oldest first. Returns whether the queue is empty now."""
        queue = self.state.queued()
        while queue:
            item = queue[0]
            try:
                self.client.request("POST", item.path(self.base), item.body())
            except ServerRefused as e:
                if e.status not in (404, 410):  # the action is gone: nobody wants it
                    self.state.set_queued(queue)
                    raise
            except TransportError:
                self.state.set_queued(queue)
                raise
            queue.pop(0)
            self.state.set_queued(queue)
        return True

    def _report(self, item: ddi.Feedback) -> None:
        """Queue `item` durably, then send the queue."""
        self.state.enqueue(item)
        self.flush()

    # -- the cycle -------------------------------------------------------------------------

    def poll_once(self) -> CycleResult:
        """One cycle (see the module docstring); errors come back in the result."""
        try:
            result = self._cycle()
        except ServerBusy as e:
            self._failures += 1
            wait = cycle.back_off(self._failures, self.fleet, e.retry_after)
            return CycleResult("failed", str(e), wait, e)
        except (UpdaterError, BootctlError) as e:
            self._failures += 1
            return CycleResult(
                "failed", str(e), cycle.back_off(self._failures, self.fleet, None), e
            )
        except Exception as e:  # a bug, perhaps met in a server's answer: the agent lives on
            self._failures += 1
            said = f"internal error (a bug: please report it): {type(e).__name__}: {e}"
            return CycleResult("failed", said, cycle.back_off(self._failures, self.fleet, None), e)
        self._failures = 0
        return result

    def _cycle(self) -> CycleResult:
        self.flush()
        installer = self._installer()
        pending = self.state.pending()
        if pending is not None and pending.phase == "reported":
            self.state.set_pending(None)  # its final result was acknowledged
            self.send_config_data(installer)
            pending = None
        if pending is not None:
            judged = self._judge(pending, installer)
            if judged is not None:
                return judged
            pending = self.state.pending()
        poll = ddi.parse_poll(self.client.get_json(self.base))
        self.state.record_poll(
            {
                "at": int(self.clock()),
                "answer": poll.summary(),
                "sleep": poll.sleep,
                "server": self.base,
            }
        )
        if poll.config_data or not self._config_sent:
            self.send_config_data(installer)
        if poll.cancel:
            return self._cancel(poll, pending, installer)
        if pending is not None and pending.phase in ("installed", "testing"):
            # No other action starts before this one's result is acknowledged.
            waiting = "reboot pending" if pending.phase == "installed" else "testing pending"
            return CycleResult(
                "none",
                f"slot {pending.target} ({pending.version}): {waiting}",
                self._wait(poll, active=pending.phase == "testing"),
            )
        if poll.deployment:
            return self._deploy(poll, pending, installer)
        if pending is not None:  # an interrupted download the server no longer asks for
            self.state.set_pending(None)
        return CycleResult("none", "no action pending", self._wait(poll, active=False))

    def _wait(self, poll: ddi.Poll | None, *, active: bool) -> float:
        """The next wait; without this cycle's poll, the sleep the last poll asked for."""
        if poll is not None:
            sleep = poll.sleep
        else:
            last = (self.state.last_poll() or {}).get("sleep")
            sleep = float(last) if isinstance(last, (int, float)) else None
        return cycle.next_wait(sleep, self.fleet, active=active, rng=self.rng)

    def _booted(self, installer: Installer) -> str | None:
        try:
            return installer.control.booted_slot()
        except SlotError as e:
            raise DeviceError(str(e)) from e

    def _judge(self, pending: PendingAction, installer: Installer) -> CycleResult | None:
        """Report what the boot state says of an action; None: nothing new, go on polling."""
        booted = self._booted(installer)
        outcome = cycle.boot_outcome(
            pending, booted, installer.control.boot_state(), self.config.board.tries
        )
        now = self.clock()
        if outcome == "interrupted":
            return None  # the same action, offered again, resumes
        if pending.phase in BEFORE_SWITCH:  # switched, but the phase was not written
            pending = pending.moved_to("installed")
            self.state.set_pending(pending)
        if outcome == "rebooting" or (outcome == "testing" and pending.phase == "testing"):
            return None  # poll on: a cancel is answered meanwhile
        if outcome == "testing":
            self.state.set_pending(pending.moved_to("testing"))
            self._report(feedback.after_boot(pending, outcome, booted, now))
            return CycleResult(
                "action",
                f"slot {pending.target} on trial: testing pending",
                self._wait(None, active=True),
            )
        item = feedback.after_boot(pending, outcome, booted, now)
        self.state.set_pending(pending.moved_to("reported"))
        self._report(item)
        self.state.set_pending(None)
        # With the lock, as an install or mark-good stores it. Busy: the floor in force is
        # derived from the slots again when an install checks a bundle and stored by it.
        with (
            contextlib.suppress(BusyError),
            installlock.held(self.config.state_dir, "store the security floor"),
        ):
            installer.refresh_floor()
        self.send_config_data(installer)
        detail = item.details[0] if item.details else outcome
        if outcome == "success":
            return CycleResult("action", detail, self._wait(None, active=False))
        return CycleResult("failed", detail, self._wait(None, active=False), DeviceError(detail))

    def _cancel(
        self, poll: ddi.Poll, pending: PendingAction | None, installer: Installer
    ) -> CycleResult:
        assert poll.cancel is not None
        cancel_id, stop_id = ddi.parse_cancel(self.client.get_json(poll.cancel))
        now = self.clock()
        if (
            pending is not None
            and pending.action_id == stop_id
            and pending.phase not in BEFORE_SWITCH
        ):
            self._report(
                ddi.Feedback(
                    cancel_id,
                    "rejected",
                    "success",
                    ("the boot switch was made already",),
                    cancel=True,
                    at=now,
                )
            )
            return CycleResult(
                "action",
                f"cancel of {stop_id} rejected: switched already",
                self._wait(poll, active=True),
            )
        if pending is not None and pending.action_id == stop_id and pending.target is not None:
            try:
                with installlock.held(self.config.state_dir, f"cancel action {stop_id} now"):
                    self._invalidate_canceled(stop_id, installer)
            except BusyError as e:  # nothing done: the server asks again at the next poll
                said = f"{e} (the cancel waits for the next poll)"
                return CycleResult("failed", said, self._wait(poll, active=True), BusyError(said))
        self.state.set_pending(None)
        self._report(
            ddi.Feedback(
                cancel_id, "closed", "success", (f"action {stop_id} canceled",), cancel=True, at=now
            )
        )
        return CycleResult("action", f"action {stop_id} canceled", self._wait(poll, active=False))

    def _invalidate_canceled(self, stop_id: str, installer: Installer) -> None:
        """Make the canceled action's target unbootable; the install lock is held.

        A half-written target never boots. The pending action and the boot state are
        read again under the lock: another install (a USB stick, a person) may have
        written the same slot and switched to it since the cycle looked. A slot that
        runs or boots next is that install's and is left alone.
        """
        pending = self.state.pending()
        if pending is None or pending.action_id != stop_id or pending.target is None:
            return
        booted = self._booted(installer)
        state = installer.control.boot_state()
        if cycle.boot_outcome(pending, booted, state, self.config.board.tries) == "interrupted":
            installer.control.invalidate(pending.target)

    def _deploy(
        self, poll: ddi.Poll, pending: PendingAction | None, installer: Installer
    ) -> CycleResult:
        assert poll.deployment is not None
        dep = ddi.parse_deployment(self.client.get_json(poll.deployment))
        now = self.clock()
        declined = self._ask_attempt_hook(dep) if cycle.asks_the_hook(dep, self.fleet) else None
        decided = cycle.plan_deployment(dep, self.fleet, declined)
        if decided.plan == "fail":
            self._report(feedback.failed(dep.action_id, decided.reason, now))
            return CycleResult(
                "failed",
                decided.reason,
                self._wait(poll, active=False),
                TransportError(decided.reason),
            )
        if decided.plan == "wait":  # nothing fetched; the server's sleep, as when idle
            return CycleResult("none", decided.reason, self._wait(poll, active=False))
        artifact = decided.artifact
        assert artifact is not None and artifact.strongest_hash is not None
        digest = ":".join(artifact.strongest_hash)
        resume = (
            pending
            if pending is not None
            and pending.action_id == dep.action_id
            and pending.artifact_hash == digest
            else None
        )
        booted = self._booted(installer)
        target, _ = installplan.choose_target(
            self.config.board,
            self.config.board.slot(booted).slot_class if booted else "rootfs",
            None,
            booted,
        )
        if decided.plan == "download" and resume is not None and resume.phase == "downloaded":
            return CycleResult(
                "none",
                f"{decided.reason}: {resume.version} waits in slot {resume.target}",
                self._wait(poll, active=False),
            )
        action = resume or PendingAction(
            dep.action_id, dep.version_of(artifact), digest, "downloading", target, booted
        )
        self.state.set_pending(action)
        if resume is None:
            self._report(feedback.started(dep.action_id, now))
        if decided.plan == "download":  # then polled as when idle, for the window or a cancel
            done = self._install(dep, artifact, action, ahead=decided.reason)
            return dataclasses.replace(done, wait=self._wait(poll, active=False))
        return self._install(dep, artifact, action)

    def _ask_attempt_hook(self, dep: ddi.Deployment) -> str | None:
        """Run `attempt_hook` for a soft deployment: None if it lets the install go ahead,
        else why not (its exit status, or why it could not run: then it postpones too)."""
        assert self.fleet.attempt_hook is not None
        env = {**os.environ, "ABUPDATE_ACTION_ID": dep.action_id}
        try:
            done = subprocess.run(
                shlex.split(self.fleet.attempt_hook),
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=HOOK_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"it did not answer within {HOOK_TIMEOUT} s"
        except (OSError, ValueError) as e:
            return f"it cannot be run: {getattr(e, 'strerror', None) or e}"
        return None if done.returncode == 0 else f"it exited with status {done.returncode}"

    def _install(
        self,
        dep: ddi.Deployment,
        artifact: ddi.Artifact,
        action: PendingAction,
        ahead: str | None = None,
    ) -> CycleResult:
        """Install the artifact; with `ahead` (why), write and check it but do not switch."""
        step = [-1]
        holder: list[BundleSource] = []
        known = [action.etag]

        def progress(p: Progress) -> None:
            limit = self.fleet.max_download_bytes
            if limit is not None and (p.fetched or 0) > limit:  # a device policy: the action fails
                raise PolicyError(
                    f"the install would download more than max_download_bytes = {limit}"
                )
            etag = getattr(holder[0], "etag", None) if holder else None
            if etag and known[0] != etag:
                known[0] = etag
                self.state.set_pending(action.moved_to(action.phase, etag=etag))
            if p.phase != "data" or not p.total:
                return
            percent = p.done * 100 // p.total
            if percent // PROGRESS_STEP != step[0]:
                step[0] = percent // PROGRESS_STEP
                try:  # progress is best effort: never queued, never fatal
                    item = feedback.progress(dep.action_id, p.done, p.total, self.clock())
                    self.client.request("POST", item.path(self.base), item.body())
                except TransportError:
                    pass

        installer = self._installer(progress)
        try:
            with self._open_download(artifact.download, action.etag) as source:
                holder.append(source)
                size = source.size()
                if size is not None and size != artifact.size:
                    raise ddi.DdiError(
                        f"artifact {artifact.filename!r} has {size} bytes on the server, "
                        f"{artifact.size} announced"
                    )
                result = installer.install(source, switch=ahead is None)
        except ServerRefused as e:  # a 4xx: asking again would not help
            return self._install_failed(dep, action, e)
        except ddi.DdiError as e:  # the deployment contradicts its file: nor would it here
            return self._install_failed(dep, action, e)
        except ContentChanged:  # the next attempt starts from the new file, after a back-off
            self.state.set_pending(action.moved_to("downloading", etag=None))
            raise
        except TransportError:  # the network: the next cycle resumes, after a back-off
            raise
        except _INSTALL_ERRORS as e:
            return self._install_failed(dep, action, e)
        if ahead is not None:
            self.state.set_pending(action.moved_to("downloaded", target=result.slot))
            only = dep.update == "skip"
            self._report(feedback.downloaded(dep.action_id, result.slot, only, self.clock()))
            return CycleResult(
                "action",
                f"downloaded {result.version} into slot {result.slot}; {ahead}: not switched",
                self._wait(None, active=False),
            )
        installed = action.moved_to("installed", target=result.slot)
        self.state.set_pending(installed)
        self._report(feedback.installed(dep.action_id, result.slot, self.clock()))
        if self.fleet.reboot != "none":
            self._reboot(self.fleet.reboot)
        return CycleResult(
            "action",
            f"installed {result.version} into slot {result.slot}; it boots next",
            self._wait(None, active=False),
        )

    def _install_failed(
        self, dep: ddi.Deployment, action: PendingAction, e: Exception
    ) -> CycleResult:
        self.state.set_pending(None)
        self._report(feedback.failed(dep.action_id, f"install failed: {e}", self.clock()))
        return CycleResult("failed", f"install failed: {e}", self._wait(None, active=False), e)

    # -- the loop and the status ------------------------------------------------------------

    def run(
        self,
        *,
        sleep: Callable[[float], None] = time.sleep,
        on_cycle: Callable[[CycleResult], None] = lambda r: None,
        cycles: int | None = None,
    ) -> None:
        """Poll for ever (or `cycles` times), waiting what each cycle says."""
        done = 0
        while cycles is None or done < cycles:
            result = self.poll_once()
            on_cycle(result)
            done += 1
            if cycles is None or done < cycles:
                sleep(result.wait)

    def status(self) -> dict[str, Any]:
        """Server, controller id, last poll, the pending action, queued feedback."""
        pending = self.state.pending()
        return {
            "server": self.fleet.server,
            "tenant": self.fleet.tenant,
            "controller_id": self.fleet.controller_id,
            "last_poll": self.state.last_poll(),
            "pending": None
            if pending is None
            else {
                "action_id": pending.action_id,
                "version": pending.version,
                "phase": pending.phase,
                "target": pending.target,
            },
            "queued_feedback": [
                {"action_id": f.action_id, "execution": f.execution, "finished": f.finished}
                for f in self.state.queued()
            ],
        }
