"""The fleet client's pure parts: DDI shapes, the cycle's decisions, feedback, settings, state."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from bootctl.state import BootState, SlotState, SlotVerity
from updater.errors import UsageError
from updater.fleet import cycle, ddi, feedback
from updater.fleet.settings import FleetSettings, parse_fleet
from updater.fleet.state import MAX_QUEUED, FleetState, PendingAction

SETTINGS = FleetSettings(server="https://ddi.example", controller_id="dev1", poll_jitter=0)
VERITY = SlotVerity("ab" * 32, "cd" * 32, 10)


def deployment(artifacts: list[dict[str, object]], **dep: object) -> dict[str, object]:
    return {
        "id": "42",
        "deployment": {
            "download": "forced",
            "update": "forced",
            "chunks": [{"part": "os", "version": "2.0.0", "name": "fw", "artifacts": artifacts}],
            **dep,
        },
    }


def artifact(name: str = "fw.bundle", **hashes: str) -> dict[str, object]:
    return {
        "filename": name,
        "size": 100,
        "hashes": hashes or {"sha1": "AA" * 20, "sha256": "BB" * 32},
        "_links": {"download-http": {"href": f"http://s/{name}"}},
    }


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:05:00", 300), ("12:00:01", 43201), ("PT5M", 300), ("PT1H30S", 3630), ("P1DT1S", 86401)],
)
def test_sleep_both_forms(text: str, seconds: float) -> None:
    assert ddi.parse_sleep(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "PT", "00:61:00", 300, "P", "PT5X"])
def test_sleep_refused(text: object) -> None:
    with pytest.raises(ddi.DdiError, match="no duration"):
        ddi.parse_sleep(text)


def test_poll_links_and_summary() -> None:
    poll = ddi.parse_poll(
        {
            "config": {"polling": {"sleep": "00:00:10"}},
            "_links": {"deploymentBase": {"href": "u1"}, "configData": {"href": "u2"}},
        }
    )
    assert (poll.sleep, poll.deployment, poll.config_data, poll.cancel) == (10, "u1", "u2", None)
    assert poll.summary() == "deploymentBase, configData"
    with pytest.raises(ddi.DdiError, match="link 'cancelAction' has no href"):
        ddi.parse_poll({"_links": {"cancelAction": {}}})
    with pytest.raises(ddi.DdiError, match="base resource is not a JSON object"):
        ddi.parse_poll([])


def test_deployment_parsed_strictly() -> None:
    dep = ddi.parse_deployment(deployment([artifact()], maintenanceWindow="available"))
    (a,) = dep.artifacts
    assert (dep.action_id, dep.download, dep.maintenance_window) == ("42", "forced", "available")
    assert a.strongest_hash == ("sha256", "bb" * 32)
    assert a.download == "http://s/fw.bundle"
    assert dep.version_of(a) == "2.0.0"
    with pytest.raises(ddi.DdiError, match=r"deployment\.update is 'later'"):
        ddi.parse_deployment(deployment([], update="later"))
    with pytest.raises(ddi.DdiError, match=r"artifact 'fw\.bundle' has no size"):
        ddi.parse_deployment(deployment([{**artifact(), "size": -1}]))


def test_plan_picks_one_bundle_or_fails_naming_them() -> None:
    one = ddi.parse_deployment(deployment([artifact(), artifact("notes.txt")]))
    assert cycle.plan_deployment(one, SETTINGS).artifact == one.artifacts[0]
    none = ddi.parse_deployment(deployment([artifact("notes.txt")]))
    assert cycle.plan_deployment(none, SETTINGS) == cycle.DeploymentPlan(
        "fail", reason="no artifact matches '*.bundle' (offered: 'notes.txt')"
    )
    two = ddi.parse_deployment(deployment([artifact("a.bundle"), artifact("b.bundle")]))
    assert (
        "2 artifacts match '*.bundle': 'a.bundle', 'b.bundle'"
        in cycle.plan_deployment(two, SETTINGS).reason
    )
    unhashed = ddi.parse_deployment(deployment([artifact(md4="00")]))
    assert cycle.plan_deployment(unhashed, SETTINGS).plan == "fail"


FORGED = "fw.bundle\nupdater: installed 9.9.9 into slot B; it boots next\x1b[2K"


def test_a_file_name_from_the_server_is_quoted_in_messages() -> None:
    """A line break in it cannot forge a line of its own (on stderr, in the journal)."""
    said: list[str] = []
    broken = ({"size": None}, {"hashes": []}, {"_links": []}, {"_links": {}})
    for change in broken:
        with pytest.raises(ddi.DdiError) as e:
            ddi.parse_deployment(deployment([{**artifact(FORGED), **change}]))
        said.append(str(e.value))
    ours = FORGED + ".bundle"
    limited = parse_fleet({"server": "https://s", "controller_id": "d", "max_download_bytes": 10})
    for arts, settings in (
        ([artifact(FORGED)], SETTINGS),
        ([artifact(ours)] * 2, SETTINGS),
        ([{**artifact(ours), "hashes": {}}], SETTINGS),
        ([artifact(ours)], limited),
    ):
        plan = cycle.plan_deployment(ddi.parse_deployment(deployment(arts)), settings)
        said.append(plan.reason)
    assert said[0] == f"server answer: artifact {FORGED!r} has no size"
    for message in said:
        assert message.isprintable(), message
    assert ddi.printable("a\nb\x1b\u2028c") == "a\\nb\\x1b\\u2028c"


def test_ids_and_versions_from_the_server_are_printable() -> None:
    """An id is named in messages and used in paths: refused if not printable. A version
    is shown only: escaped."""
    dep = ddi.parse_deployment(
        {**deployment([artifact()]), "id": 7} | {"deployment": {"chunks": [{"version": FORGED}]}}
    )
    assert dep.action_id == "7" and dep.chunks[0].version == ddi.printable(FORGED)
    assert dep.chunks[0].version.isprintable()
    with pytest.raises(
        ddi.DdiError, match=r"^server answer: the deployment's id '7\\n.*printable$"
    ):
        ddi.parse_deployment({**deployment([]), "id": "7\nupdater: forged"})
    assert ddi.parse_cancel({"id": 9, "cancelAction": {"stopId": "5"}}) == ("9", "5")
    for cancel in ({"id": 9, "cancelAction": {"stopId": "5\n"}}, {"cancelAction": {"stopId": 5}}):
        with pytest.raises(ddi.DdiError) as e:
            ddi.parse_cancel(cancel)
        assert str(e.value).isprintable()


@pytest.mark.parametrize(
    ("dep", "plan"),
    [
        ({"download": "skip"}, "wait"),
        ({"download": "skip", "update": "skip"}, "wait"),
        ({"update": "skip"}, "download"),
        ({"maintenanceWindow": "unavailable"}, "download"),
        ({"maintenanceWindow": "available"}, "install"),
        ({"download": "attempt", "update": "attempt"}, "install"),
    ],
)
def test_plan_handling(dep: dict[str, object], plan: str) -> None:
    parsed = ddi.parse_deployment(deployment([artifact()], **dep))
    assert cycle.plan_deployment(parsed, SETTINGS).plan == plan


def boot_state(order: tuple[str, ...], a: int, b: int, b_verity: bool = True) -> BootState:
    slots = (
        SlotState("A", a, VERITY, VERITY.to_env(), "A" in order),
        SlotState(
            "B", b, VERITY if b_verity else None, VERITY.to_env() if b_verity else "", "B" in order
        ),
    )
    return BootState(order, slots, ())


ACTION = PendingAction("42", "2.0.0", "sha256:bb", "installed", "B", "A")


@pytest.mark.parametrize(
    ("booted", "state", "outcome"),
    [
        ("B", boot_state(("B", "A"), 3, 3), "success"),
        ("B", boot_state(("B", "A"), 3, 2), "testing"),
        ("A", boot_state(("B", "A"), 3, 3), "rebooting"),
        ("A", boot_state(("B", "A"), 3, 0), "failure"),
        ("A", boot_state(("A", "B"), 3, 0, b_verity=False), "failure"),
    ],
)
def test_boot_outcome(booted: str, state: BootState, outcome: str) -> None:
    assert cycle.boot_outcome(ACTION, booted, state, 3) == outcome


def test_boot_outcome_of_a_download_cut_off_and_of_a_switch_not_recorded() -> None:
    cut = ACTION.moved_to("downloading")
    assert cycle.boot_outcome(cut, "A", boot_state(("A", "B"), 3, 0, False), 3) == "interrupted"
    assert cycle.boot_outcome(cut, "B", boot_state(("B", "A"), 3, 3), 3) == "success"
    ahead = ACTION.moved_to("downloaded")  # written ahead, never switched to: not a fallback
    assert cycle.boot_outcome(ahead, "A", boot_state(("A", "B"), 3, 0, False), 3) == "interrupted"


def test_fallback_feedback_names_slot_version_and_running_slot() -> None:
    item = feedback.after_boot(ACTION, "failure", "A", 0)
    assert (item.execution, item.finished) == ("closed", "failure")
    assert item.details == ("slot B (2.0.0) failed to boot; fell back to A",)
    assert feedback.after_boot(ACTION, "testing", "B", 0).execution == "proceeding"


def test_feedback_body_carries_old_and_new_time_fields() -> None:
    body = feedback.progress("42", 50, 200, 1_700_000_000.5).body()
    assert body["id"] == "42"
    assert body["time"] == "20231114T221320"
    assert body["timestamp"] == 1_700_000_000_500
    assert body["status"] == {
        "execution": "proceeding",
        "result": {"finished": "none", "progress": {"cnt": 25, "of": 100}},
        "details": ["Downloaded 25%"],
    }
    cancel = ddi.Feedback("7", "closed", "success", cancel=True)
    assert cancel.path("B") == "B/cancelAction/7/feedback"


def test_wait_clamped_with_jitter_and_back_off() -> None:
    rng = random.Random(1)
    s = FleetSettings(server="https://x", controller_id="d", poll_min=30, poll_max=600)
    assert cycle.next_wait(5, s, active=False, rng=rng) >= 30 * 0.9
    assert cycle.next_wait(99999, s, active=False, rng=rng) <= 600 * 1.1
    assert cycle.next_wait(None, s, active=True, rng=rng) <= cycle.ACTIVE_POLL * 1.1
    waits = [cycle.next_wait(100, s, active=False, rng=rng) for _ in range(50)]
    assert min(waits) >= 90 and max(waits) <= 110 and len(set(waits)) > 1
    assert [cycle.back_off(n, s, None) for n in (1, 2, 3, 6)] == [30, 60, 120, 600]
    assert cycle.back_off(1, s, 200) == 200


def test_fleet_table_strict(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown key 'sever' in \\[fleet\\]"):
        parse_fleet({"sever": "https://x"})
    with pytest.raises(UsageError, match="http:// needs allow_http"):
        parse_fleet({"server": "http://x", "controller_id": "d"})
    assert parse_fleet({"server": "http://x", "controller_id": "d", "allow_http": True})
    with pytest.raises(UsageError, match="not both"):
        parse_fleet(
            {"server": "https://x", "controller_id": "d", "target_token": "a", "gateway_token": "b"}
        )
    with pytest.raises(UsageError, match="poll_min must not exceed"):
        parse_fleet({"server": "https://x", "controller_id": "d", "poll_min": 9, "poll_max": 8})
    with pytest.raises(UsageError, match="target_token must be printable"):
        parse_fleet({"server": "https://x", "controller_id": "d", "target_token": "a\r\nX: y"})
    with pytest.raises(UsageError, match=r"fleet\.attributes\.site must be a non-empty string"):
        parse_fleet({"server": "https://x", "controller_id": "d", "attributes": {"site": 3}})
    mid = tmp_path / "machine-id"
    mid.write_text("0123456789abcdef0123456789abcdef\n")
    s = parse_fleet({"server": "https://x/", "target_token": "secret"}, machine_id=mid)
    assert (s.server, s.controller_id, s.tenant) == (
        "https://x",
        "abupdate-0123456789abcdef",
        "DEFAULT",
    )
    assert s.authorization == "TargetToken secret"
    assert "secret" not in repr(s)


def test_state_files_round_trip_and_bound_the_queue(tmp_path: Path) -> None:
    st = FleetState(tmp_path)
    assert st.pending() is None and st.queued() == []
    st.set_pending(ACTION)
    assert st.pending() == ACTION
    final = feedback.failed("42", "no", 1.0)
    for i in range(MAX_QUEUED + 5):
        st.enqueue(feedback.progress("42", i, 100, 1.0))
    st.enqueue(final)
    queued = st.queued()
    assert len(queued) == MAX_QUEUED and queued[-1] == final
    st.set_queued([])
    assert not (tmp_path / "fleet-feedback.json").exists()
    (tmp_path / "fleet-action.json").write_text(json.dumps({"action_id": "1"}))
    with pytest.raises(Exception, match="malformed"):
        st.pending()
