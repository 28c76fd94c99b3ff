"""The fleet client's handling of what goosebit cannot produce, against the DDI STUB.

The stub (tests/helpers/ddistub.py) replays the JSON shapes hawkBit documents:
cancel, maintenance window, attempt, download-only, ISO-8601 sleeps, 410 Gone,
429 with Retry-After. The artifact of the `attempt` test comes from real nginx.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest

from bootctl.state import SlotVerity
from bundle_tool import keygen, signing
from bundle_tool.errors import TrustError
from tests.helpers.ddistub import DdiStub, artifact_body, deployment_body
from tests.helpers.nginx import NginxServer
from tests.updater.device import COMPATIBLE, Device, image_bytes
from updater import installlock
from updater.errors import BusyError, TransportError
from updater.fleet import ddi
from updater.fleet.agent import FleetAgent
from updater.fleet.client import DdiClient, ServerBusy
from updater.fleet.state import PendingAction, Phase

CONTROLLER = "stub-dev"


@pytest.fixture
def stub() -> Iterator[DdiStub]:
    with DdiStub(CONTROLLER) as s:
        yield s


def agent_for(device: Device, stub: DdiStub, extra: str = "", reboot: str = "none") -> FleetAgent:
    with device.config_path.open("a") as f:
        f.write(
            f'[fleet]\nserver = "{stub.url}"\nallow_http = true\n'
            f'controller_id = "{CONTROLLER}"\ngateway_token = "gw-secret"\n'
            f"reboot = {json.dumps(reboot)}\n"
            "poll_min = 1\npoll_max = 3600\npoll_jitter = 0\n" + extra
        )
    return FleetAgent(device.config())


def test_iso_sleep_and_full_config_data_at_start(device: Device, stub: DdiStub) -> None:
    stub.sleep = "PT7M30S"
    agent = agent_for(device, stub, '[fleet.attributes]\nsite = "lab-3"\n')
    result = agent.poll_once()
    assert (result.kind, result.wait) == ("none", 450)
    (sent,) = stub.config_data
    assert sent["mode"] == "replace"
    assert set(sent["data"]) == {
        "hw_boardname",
        "hw_revision",
        "sw_version",
        "slot",
        "bootloader",
        "updater_version",
        "site",
    }
    assert sent["data"]["hw_boardname"] == COMPATIBLE and sent["data"]["slot"] == "A"
    assert sent["data"]["bootloader"] == "u-boot" and sent["data"]["site"] == "lab-3"
    agent.poll_once()
    assert len(stub.config_data) == 1  # not asked again, not a new start
    stub.config_data_asked = True
    agent.poll_once()
    assert len(stub.config_data) == 2


def test_an_idle_cycle_sends_one_request(device: Device, stub: DdiStub) -> None:
    agent = agent_for(device, stub)
    agent.poll_once()  # the start: the poll and configData
    assert [m for m, _ in stub.requests] == ["GET", "PUT"]
    for _ in range(3):
        agent.poll_once()
    assert stub.requests[2:] == [("GET", stub.base_path)] * 3


def test_run_waits_what_each_cycle_says(device: Device, stub: DdiStub) -> None:
    agent = agent_for(device, stub)
    stub.sleep = "00:02:00"
    slept: list[float] = []
    seen: list[str] = []
    agent.run(sleep=slept.append, on_cycle=lambda r: seen.append(r.kind), cycles=3)
    assert seen == ["none", "none", "none"]
    assert slept == [120, 120]  # between the cycles, not after the last
    status = agent.status()
    assert status["last_poll"]["answer"] == "nothing" and status["last_poll"]["sleep"] == 120


@pytest.mark.parametrize("phase", ["downloading", "downloaded"])
def test_cancel_before_the_switch_is_confirmed(device: Device, stub: DdiStub, phase: Phase) -> None:
    agent = agent_for(device, stub)
    agent.state.set_pending(PendingAction("5", "2.0.0", "sha256:00", phase, "B", "A"))
    stub.cancel = {"id": "9", "cancelAction": {"stopId": "5"}}
    result = agent.poll_once()
    assert result.kind == "action" and "canceled" in result.detail
    path, body = stub.feedback[-1]
    assert path == f"{stub.base_path}/cancelAction/9/feedback"
    assert body["status"]["execution"] == "closed"
    assert body["status"]["result"]["finished"] == "success"
    assert agent.state.pending() is None
    assert not device.control().boot_state().slot("B").bootable


def test_cancel_after_the_switch_is_rejected(device: Device, stub: DdiStub) -> None:
    agent = agent_for(device, stub)
    ctl = device.control()
    a = ctl.boot_state().slot("A").verity
    assert a is not None
    ctl.set_primary("B", SlotVerity(a.root_hash, a.salt, a.data_blocks))
    agent.state.set_pending(PendingAction("5", "2.0.0", "sha256:00", "installed", "B", "A"))
    stub.cancel = {"id": "9", "cancelAction": {"stopId": "5"}}
    agent.poll_once()
    path, body = stub.feedback[-1]
    assert path.endswith("/cancelAction/9/feedback")
    assert body["status"]["execution"] == "rejected"
    assert agent.state.pending() is not None  # its result after the reboot is still owed
    assert device.control().boot_state().primary == "B"


def test_a_cancel_waits_while_another_install_holds_the_lock(device: Device, stub: DdiStub) -> None:
    """The cancel's invalidate writes the boot environment: it takes the install lock."""
    agent = agent_for(device, stub)
    written_ahead = PendingAction("5", "2.0.0", "sha256:00", "downloaded", "B", "A")
    agent.state.set_pending(written_ahead)
    stub.cancel = {"id": "9", "cancelAction": {"stopId": "5"}}
    env = device.env_file.read_bytes()
    with installlock.held(device.config().state_dir, "install"):  # as an install does
        result = agent.poll_once()
    assert result.kind == "failed" and "the cancel waits for the next poll" in result.detail
    assert isinstance(result.error, BusyError)  # exit 8, as a busy install
    assert device.env_file.read_bytes() == env  # nothing written
    assert agent.state.pending() == written_ahead
    assert not any("/cancelAction/9/feedback" in p for p, _ in stub.feedback)
    result = agent.poll_once()  # the lock is free: the cancel asked again is done
    assert result.kind == "action" and "canceled" in result.detail
    assert agent.state.pending() is None
    assert stub.feedback[-1][0].endswith("/cancelAction/9/feedback")


@pytest.mark.parametrize("busy", [False, True], ids=["free", "busy"])
def test_the_floor_is_stored_after_success_only_under_the_install_lock(
    device: Device, stub: DdiStub, busy: bool
) -> None:
    """The success is reported either way; the floor is stored only with the lock held."""
    bundle = device.bundle(image_bytes(700, seed=3), "fw.bundle", security_version=4)
    done = device.cli("install", str(bundle))
    assert done.returncode == 0, done.stderr
    device.boot("B")
    device.control().mark_good()  # as a board's own mark-good does: no floor stored
    agent = agent_for(device, stub)
    agent.state.set_pending(PendingAction("5", "2.0.0", "sha256:00", "installed", "B", "A"))
    floor = device.config().state_dir / "security-floor.json"
    with installlock.held(device.config().state_dir, "install") if busy else nullcontext():
        result = agent.poll_once()
    assert result.kind == "action" and "marked good" in result.detail, result.detail
    assert stub.feedback[-1][1]["status"]["result"]["finished"] == "success"
    assert floor.exists() is not busy
    if not busy:
        assert json.loads(floor.read_text()) == {"security_floor": 4}


class InstallsDuringTheCancel(DdiClient):
    """The DDI client, with another install run (its own process) while the cancel is fetched:
    after the cycle looked at the boot state, before it acts on the cancel."""

    def __init__(self, device: Device, bundle: Path) -> None:
        config = device.config()
        assert config.fleet is not None
        super().__init__(config.fleet, config.http)
        self.device, self.bundle = device, bundle

    def get_json(self, url: str) -> Any:
        if "/cancelAction/" in url:
            done = self.device.cli("install", str(self.bundle))
            assert done.returncode == 0, done.stderr
        return super().get_json(url)


def test_a_cancel_leaves_alone_a_slot_another_install_switched_to(
    device: Device, stub: DdiStub
) -> None:
    bundle = device.bundle(image_bytes(700, seed=3), "usb.bundle", version="3.0.0")
    agent_for(device, stub)
    agent = FleetAgent(device.config(), client=InstallsDuringTheCancel(device, bundle))
    agent.state.set_pending(PendingAction("5", "2.0.0", "sha256:00", "downloaded", "B", "A"))
    stub.cancel = {"id": "9", "cancelAction": {"stopId": "5"}}
    result = agent.poll_once()
    assert result.kind == "action" and "canceled" in result.detail
    state = device.control().boot_state()
    assert state.primary == "B" and state.slot("B").bootable  # the other install's switch
    assert state.slot("B").tries == device.config().board.tries
    assert agent.state.pending() is None
    assert stub.feedback[-1][0].endswith("/cancelAction/9/feedback")


def test_a_skipped_download_waits_and_fetches_nothing(device: Device, stub: DdiStub) -> None:
    agent = agent_for(device, stub)
    art = artifact_body("fw.bundle", 10, "00" * 32, f"{stub.url}/fw.bundle")
    stub.deployment = deployment_body("3", [art], download="skip")
    result = agent.poll_once()
    assert result.kind == "none" and "skip the download" in result.detail
    assert not any("/fw.bundle" in p for _, p in stub.requests)  # nothing downloaded
    assert stub.feedback == []
    assert agent.state.pending() is None


#: (handling, what changes when it is to be installed, the feedback once written ahead).
#: hawkBit ends a download-only action with its `downloaded` feedback: the install is
#: another action (a new id) for the same release. A window opens on the same action.
AHEAD = {
    "download-only": (
        {"update": "skip"},
        {"id": "4", "deployment": {"update": "forced"}},
        ("downloaded", "downloaded into slot B; not switched"),
    ),
    "window-closed": (
        {"maintenance_window": "unavailable"},
        {"deployment": {"maintenanceWindow": "available"}},
        ("proceeding", "downloaded into slot B; waiting for the maintenance window"),
    ),
}


@pytest.mark.parametrize("case", sorted(AHEAD))
def test_download_ahead_writes_the_inactive_slot_and_switches_only_when_asked(
    device: Device, stub: DdiStub, nginx_server: NginxServer, case: str
) -> None:
    handling, opened, sent = AHEAD[case]
    serve_bundle(device, stub, nginx_server, **handling)
    agent = agent_for(device, stub)
    result = agent.poll_once()
    assert result.kind == "action" and "not switched" in result.detail, result.detail
    _, last = stub.feedback[-1]
    assert (last["status"]["execution"], last["status"]["details"][0]) == sent
    boot = device.control().boot_state()
    assert boot.primary == "A" and not boot.slot("B").bootable  # written, never booted
    pending = agent.state.pending()
    assert pending is not None and (pending.phase, pending.target) == ("downloaded", "B")
    fetched_ahead = nginx_server.body_bytes_served()
    assert fetched_ahead > 0

    nginx_server.reset_log()
    again = agent.poll_once()  # still download only / outside the window: nothing more
    assert again.kind == "none" and "waits in slot B" in again.detail
    assert nginx_server.log_entries() == []
    assert device.control().boot_state().primary == "A"

    assert stub.deployment is not None
    offered = stub.deployment
    if "id" in opened:  # the download-only action was closed by its feedback
        stub.deployment = None
        assert agent.poll_once().kind == "none"
        assert agent.state.pending() is None
        offered = {**offered, "id": opened["id"]}
    offered["deployment"].update(opened["deployment"])
    stub.deployment = offered
    done = agent.poll_once()
    assert done.kind == "action" and "installed 2.0.0 into slot B" in done.detail, done.detail
    assert device.control().boot_state().primary == "B"
    # The blocks written ahead are kept: the switch fetches the bundle's head and tree only.
    last_install = agent.state.last_result()
    assert last_install is not None and last_install["status"] == "installed"
    assert last_install["bytes_reused"] == last_install["image_size"], last_install
    assert nginx_server.body_bytes_served() < fetched_ahead // 4


def serve_bundle(
    device: Device,
    stub: DdiStub,
    nginx: NginxServer,
    signer: signing.Signer | None = None,
    size_error: int = 0,
    **handling: str,
) -> None:
    """Version 2.0.0 on nginx, assigned by the stub as action 3; the device trusts nginx.

    `size_error`: bytes the deployment's artifact size is off by.
    """
    bundle = device.bundle(image_bytes(700, seed=2), "fw.bundle", version="2.0.0", signer=signer)
    shutil.copy(bundle, nginx.root / "fw.bundle")
    text = device.config_path.read_text()
    device.config_path.write_text(text + f'[http]\nca_file = "{nginx.ca_file}"\n')
    data = bundle.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    art = artifact_body("fw.bundle", len(data) + size_error, digest, nginx.url("fw.bundle"))
    stub.deployment = deployment_body("3", [art], **handling)


def test_attempt_installs_reports_progress_and_reboots(
    device: Device, stub: DdiStub, nginx_server: NginxServer
) -> None:
    serve_bundle(device, stub, nginx_server, download="attempt", update="attempt")
    marker = device.root / "rebooted"
    agent = agent_for(device, stub, reboot=f"touch '{marker}'")
    result = agent.poll_once()
    assert result.kind == "action", result.detail
    sent = [
        (b["status"]["execution"], (b["status"].get("details") or [""])[0])
        for _, b in stub.feedback
    ]
    assert sent[0] == ("proceeding", "download started")
    assert ("proceeding", "Downloaded 100%") in sent
    assert sent[-1] == ("proceeding", "installed into slot B, rebooting, testing pending")
    assert {p for p, _ in stub.feedback} == {f"{stub.base_path}/deploymentBase/3/feedback"}
    assert device.control().boot_state().primary == "B"
    assert marker.exists()  # the configured reboot command ran, after the feedback
    assert result.wait == 300  # the server's sleep (the stub's 5 min), not poll_max


def test_an_untrusted_bundle_is_reported_as_failure(
    device: Device, stub: DdiStub, nginx_server: NginxServer, tmp_path: Path
) -> None:
    other = keygen.make_dev_pki(tmp_path / "other-pki")
    stranger = signing.load_signer(other.signer_key.read_bytes(), other.signer_cert.read_bytes())
    serve_bundle(device, stub, nginx_server, signer=stranger)
    agent = agent_for(device, stub)
    result = agent.poll_once()
    assert result.kind == "failed" and isinstance(result.error, TrustError)
    _, last = stub.feedback[-1]
    assert (last["status"]["execution"], last["status"]["result"]["finished"]) == (
        "closed",
        "failure",
    )
    assert last["status"]["details"][0].startswith("install failed: ")
    assert agent.state.pending() is None
    assert device.control().boot_state().primary == "A"


def test_a_download_over_max_download_bytes_fails_the_action(
    device: Device, stub: DdiStub, nginx_server: NginxServer
) -> None:
    serve_bundle(device, stub, nginx_server)
    agent = agent_for(device, stub, "max_download_bytes = 200000\n")
    result = agent.poll_once()
    assert result.kind == "failed"
    assert "more than max_download_bytes = 200000" in result.detail
    _, last = stub.feedback[-1]
    assert last["status"]["execution"] == "closed"
    assert last["status"]["result"]["finished"] == "failure"
    assert device.control().boot_state().primary == "A"
    assert not device.control().boot_state().slot("B").bootable


def test_an_artifact_of_another_size_than_announced_fails_the_action(
    device: Device, stub: DdiStub, nginx_server: NginxServer
) -> None:
    """The server contradicts itself: asking again would not help, the action ends."""
    serve_bundle(device, stub, nginx_server, size_error=1)
    agent = agent_for(device, stub)
    result = agent.poll_once()
    assert result.kind == "failed" and isinstance(result.error, ddi.DdiError), result.detail
    assert "bytes on the server" in result.detail
    _, last = stub.feedback[-1]
    assert (last["status"]["execution"], last["status"]["result"]["finished"]) == (
        "closed",
        "failure",
    )
    assert last["status"]["details"][0].startswith("install failed: artifact 'fw.bundle' has ")
    assert agent.state.pending() is None
    assert device.control().boot_state().primary == "A"


def test_gone_feedback_is_dropped_other_errors_keep_it(device: Device, stub: DdiStub) -> None:
    agent = agent_for(device, stub)
    agent.state.enqueue(ddi.Feedback("4", "closed", "failure", ("old",)))
    stub.feedback_status = 500
    result = agent.poll_once()
    assert result.kind == "failed" and isinstance(result.error, TransportError)
    assert len(agent.state.queued()) == 1
    stub.feedback_status = 410
    assert agent.poll_once().kind == "none"
    assert agent.state.queued() == []


def test_busy_server_backs_off_as_retry_after_asks(device: Device, stub: DdiStub) -> None:
    agent = agent_for(device, stub)
    stub.poll_status, stub.retry_after = 429, "120"
    result = agent.poll_once()
    assert isinstance(result.error, ServerBusy)
    assert result.wait == 120
    stub.retry_after = None
    waits = [agent.poll_once().wait for _ in range(3)]
    assert waits == [2, 4, 8]  # failures 2, 3 and 4 in a row: doubling from poll_min = 1


def test_config_without_or_with_a_bad_fleet_table_is_bad_usage(device: Device) -> None:
    r = device.cli("fleet", "poll", "--once")
    assert r.returncode == 2
    assert "no [fleet] table" in r.stderr
    with device.config_path.open("a") as f:
        f.write('[fleet]\nserver = "https://ddi.example"\ncontroler_id = "x"\n')
    r = device.cli("fleet", "status")
    assert r.returncode == 2
    assert (
        r.stderr.strip() == "updater: error: device config: unknown key 'controler_id' in [fleet]"
    )


def test_tokens_never_reach_messages(device: Device, stub: DdiStub) -> None:
    agent = agent_for(device, stub)
    stub.poll_status = 403
    result = agent.poll_once()
    assert "check gateway_token" in result.detail
    assert "gw-secret" not in result.detail
    assert "gw-secret" not in repr(agent.fleet)


def test_a_bug_in_one_cycle_fails_that_cycle_and_the_agent_lives_on(
    device: Device, stub: DdiStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the poll answer's parser raises what no error class covers (a bug,
    say one a hostile answer meets). `fleet run` must not die and restart into the same."""
    agent = agent_for(device, stub)
    parse = ddi.parse_poll

    def broken(answer: object) -> ddi.Poll:
        monkeypatch.setattr(ddi, "parse_poll", parse)
        raise RuntimeError("unexpected shape")

    monkeypatch.setattr(ddi, "parse_poll", broken)
    failed = agent.poll_once()
    assert failed.kind == "failed"
    assert (
        failed.detail == "internal error (a bug: please report it): RuntimeError: unexpected shape"
    )
    assert failed.wait > 0
    assert agent.poll_once().kind == "none"  # the next cycle runs as ever


@pytest.mark.parametrize(
    ("hook", "said"),
    [
        ("sh -c 'exit 3'", "it exited with status 3"),
        ("/nonexistent/ask-the-user", "it cannot be run: No such file or directory"),
    ],
)
def test_an_attempt_the_hook_declines_waits_and_fetches_nothing(
    device: Device, stub: DdiStub, nginx_server: NginxServer, hook: str, said: str
) -> None:
    serve_bundle(device, stub, nginx_server, download="attempt", update="attempt")
    served = len(nginx_server.log_entries())
    agent = agent_for(device, stub, f"attempt_hook = {json.dumps(hook)}\n")
    result = agent.poll_once()
    assert (result.kind, result.detail) == ("none", f"the attempt hook postponed it: {said}")
    assert stub.feedback == []  # not started: nothing to report yet
    assert device.control().boot_state().primary == "A"
    assert agent.state.pending() is None
    assert len(nginx_server.log_entries()) == served  # the bundle was not fetched


def test_an_attempt_the_hook_allows_installs(
    device: Device, stub: DdiStub, nginx_server: NginxServer, tmp_path: Path
) -> None:
    serve_bundle(device, stub, nginx_server, download="attempt", update="attempt")
    asked = tmp_path / "asked"
    hook = f"sh -c 'echo \"$ABUPDATE_ACTION_ID\" > {asked}'"
    agent = agent_for(device, stub, f"attempt_hook = {json.dumps(hook)}\n")
    assert agent.poll_once().kind == "action"
    assert asked.read_text() == "3\n"
    assert device.control().boot_state().primary == "B"
