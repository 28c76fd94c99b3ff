"""The fleet client against the real goosebit DDI server on 127.0.0.1 (the interop proof).

goosebit runs from its own virtual environment (tests/helpers/goosebit_setup.sh
makes it on first use), with a fresh database per test. Bundles are made by the
real writer and registered through goosebit's plugin API; the device is on
plain files (tests/updater/device.py). The reboot is simulated with the boot
scripts' own logic (`select_boot`), mark-good with `updater mark-good`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bootctl.state import select_boot
from bundle_tool import keygen
from tests.helpers.dropproxy import DropProxy
from tests.helpers.goosebit import GoosebitServer
from tests.helpers.nginx import NginxServer
from tests.updater.device import COMPATIBLE, Device, image_bytes, make_device
from updater.errors import ServerRefused
from updater.fleet.agent import FleetAgent
from updater.httpsettings import HttpSettings
from updater.httpsource import HttpSource
from updater.install import Installer
from updater.statedir import SlotRecord, StateDir

pytestmark = pytest.mark.slow

TOKEN = "device-token-1"
CONTROLLER = "fleet-dev-1"
BLOCKS = 700


@pytest.fixture
def goosebit(gb_venv: Path, tmp_path: Path) -> Iterator[GoosebitServer]:
    work = tmp_path / "goosebit"
    work.mkdir()
    with GoosebitServer(gb_venv, work) as server:
        yield server


@pytest.fixture
def proxy(goosebit: GoosebitServer) -> Iterator[DropProxy]:
    with DropProxy(goosebit.port) as p:
        yield p


def fleet_device(
    root: Path,
    pki: keygen.DevPki,
    server: str,
    *,
    token: str = TOKEN,
    a_image: bytes | None = None,
    http: str = "",
) -> Device:
    """A file-backed device running 1.0.0 from slot A, with a [fleet] table for `server`.

    `http` is the body of an [http] table; without one, plain HTTP is allowed.
    """
    device = make_device(root, pki, a_image or image_bytes(BLOCKS, seed=1))
    verity = device.control().boot_state().slot("A").verity
    assert verity is not None
    StateDir(device.config().state_dir).record_slot(
        "A", SlotRecord("1.0.0", 0, COMPATIBLE, verity.root_hash, 0)
    )
    with device.config_path.open("a") as f:
        f.write(
            (f"[http]\n{http}" if http else "")
            + "[fleet]\n"
            + f'server = "{server}"\n'
            + ("" if http else "allow_http = true\n")
            + f'controller_id = "{CONTROLLER}"\n'
            + f'target_token = "{token}"\n'
            + 'reboot = "none"\n'
            + "poll_min = 1\n"
        )
    return device


def reboot(device: Device) -> str | None:
    """One boot as the boot scripts do it: the slot picked, its counter decremented."""
    ctl = device.control()
    decision = select_boot(
        ctl.env(),
        ctl.board.slot_names,
        ctl.board.tries,
        needs_verity=ctl.board.boot.env_verity_boots,
    )
    with ctl.store.locked():
        ctl.store.save(decision.env)
    assert decision.slot is not None
    device.boot(decision.slot)
    return decision.slot


def poll(device: Device) -> tuple[int, dict[str, object], str]:
    r = device.cli("fleet", "poll", "--once", "--json")
    out = json.loads(r.stdout.splitlines()[-1]) if r.stdout.strip() else {}
    return r.returncode, out, r.stderr


def register(goosebit: GoosebitServer, device: Device, version: str, seed: int) -> int:
    bundle = device.bundle(image_bytes(BLOCKS, seed=seed), f"fw-{version}.bundle", version=version)
    software = goosebit.add_bundle(bundle, version, COMPATIBLE)
    return goosebit.add_rollout(software)


@pytest.fixture
def registered(
    goosebit: GoosebitServer, proxy: DropProxy, tmp_path: Path, pki: keygen.DevPki
) -> Device:
    """A device goosebit knows (token set) that polled once and sent its configData."""
    goosebit.add_device(CONTROLLER, TOKEN)
    device = fleet_device(tmp_path / "device", pki, proxy.url)
    status, out, err = poll(device)
    assert status == 9, (out, err)  # registered, nothing assigned yet
    view = goosebit.device(CONTROLLER)
    assert view["sw_version"] == "1.0.0"
    assert view["hardware"]["model"] == COMPATIBLE
    return device


def test_success_with_a_resumed_download_reported_after_mark_good(
    goosebit: GoosebitServer, proxy: DropProxy, registered: Device
) -> None:
    device = registered
    register(goosebit, device, "2.0.0", seed=2)
    proxy.armed = True  # the download's connection is cut once, mid-answer

    status, out, err = poll(device)
    assert status == 0, (out, err)
    assert "installed 2.0.0 into slot B" in str(out["detail"])
    assert proxy.drops == 1
    (rollout,) = goosebit.rollouts()
    assert (rollout["success_count"], rollout["failure_count"]) == (0, 0)  # no closed yet
    assert goosebit.device(CONTROLLER)["last_state"] == "Running"
    assert "rebooting, testing pending" in goosebit.device_log(CONTROLLER)

    status, out, _ = poll(device)  # not rebooted yet: nothing to report
    assert status == 9 and "(2.0.0): reboot pending" in str(out["detail"])

    assert reboot(device) == "B"
    status, out, _ = poll(device)
    assert status == 0 and "testing pending" in str(out["detail"])
    assert goosebit.rollouts()[0]["success_count"] == 0  # still no closed before mark-good

    r = device.cli("mark-good")
    assert r.returncode == 0, r.stderr
    status, out, err = poll(device)
    assert status == 0, (out, err)
    view = goosebit.device(CONTROLLER)
    assert view["sw_version"] == "2.0.0"
    assert view["last_state"] == "Finished"
    assert goosebit.rollouts()[0]["success_count"] == 1

    status, out, _ = poll(device)
    assert status == 9, out
    fleet = json.loads(device.cli("fleet", "status", "--json").stdout)
    assert fleet["pending"] is None and fleet["queued_feedback"] == []
    assert fleet["controller_id"] == CONTROLLER


def test_fallback_reported_as_failure_with_the_old_version(
    goosebit: GoosebitServer, registered: Device
) -> None:
    device = registered
    register(goosebit, device, "2.0.0", seed=2)
    assert poll(device)[0] == 0
    booted = [reboot(device) for _ in range(4)]  # B never gets marked good
    assert booted == ["B", "B", "B", "A"]

    status, out, _ = poll(device)
    assert status == 7, out
    view = goosebit.device(CONTROLLER)
    assert view["last_state"] == "Error"
    assert view["sw_version"] == "1.0.0"
    assert "slot B (2.0.0) failed to boot; fell back to A" in goosebit.device_log(CONTROLLER)
    (rollout,) = goosebit.rollouts()
    assert (rollout["success_count"], rollout["failure_count"]) == (0, 1)


def test_reassignment_during_a_download_never_mixes_two_files(
    goosebit: GoosebitServer, proxy: DropProxy, registered: Device
) -> None:
    device = registered
    text = device.config_path.read_text()  # no retries: the cut ends this attempt
    device.config_path.write_text(text.replace("[fleet]", "[http]\nretries = 0\n[fleet]"))
    register(goosebit, device, "2.0.0", seed=2)
    proxy.armed = True
    status, out, _ = poll(device)
    assert status == 6, out  # the transport failed; the action stays pending
    assert (
        json.loads(device.cli("fleet", "status", "--json").stdout)["pending"]["version"] == "2.0.0"
    )

    register(goosebit, device, "3.0.0", seed=3)  # same download URL, another file now
    status, out, err = poll(device)
    assert status == 0, (out, err)
    assert "installed 3.0.0 into slot B" in str(out["detail"])
    records = Installer(device.config()).installed()
    assert records["B"].version == "3.0.0"  # the installer read the slot back against 3.0.0's tree


def test_a_delta_deployment_costs_what_a_direct_https_delta_install_costs(
    goosebit: GoosebitServer, nginx_server: NginxServer, tmp_path: Path, pki: keygen.DevPki
) -> None:
    old = image_bytes(4096, seed=1)
    new = bytearray(old)
    for block in range(0, 4096, 97):  # about 1% of the blocks changed
        new[block * 4096 : (block + 1) * 4096] = image_bytes(1, seed=block)
    fleet = fleet_device(tmp_path / "fleet", pki, goosebit.url, a_image=old)
    direct = make_device(tmp_path / "direct", pki, old)
    bundle = fleet.bundle(bytes(new), "fw-2.0.0.bundle", version="2.0.0")
    shutil.copy(bundle, nginx_server.root / "fw.bundle")
    with HttpSource(
        nginx_server.url("fw.bundle"), HttpSettings(ca_file=nginx_server.ca_file)
    ) as src:
        by_url = Installer(direct.config()).install(src)

    goosebit.add_device(CONTROLLER, TOKEN)
    assert poll(fleet)[0] == 9
    goosebit.add_rollout(goosebit.add_bundle(bundle, "2.0.0", COMPATIBLE))
    status, out, err = poll(fleet)
    assert status == 0, (out, err)
    by_fleet = StateDir(fleet.config().state_dir).last_result()
    assert by_fleet is not None and by_fleet["status"] == "installed"
    # The same blocks were reused, so the same blocks were fetched; the bytes on the
    # wire differ only by how nginx and goosebit (Starlette) frame the parts of a
    # multi-range answer (about 500 bytes here).
    assert by_fleet["bytes_reused"] == by_url.bytes_reused
    assert abs(by_fleet["bytes_fetched"] - by_url.bytes_fetched) < 2048
    assert by_url.bytes_fetched < len(new) // 20  # a delta, not a full download
    print(
        f"delta deployment of {len(new)} bytes: {by_fleet['bytes_fetched']} fetched from "
        f"goosebit, {by_url.bytes_fetched} by `updater install https://` from nginx"
    )


def test_over_mutual_tls_in_front_of_goosebit(
    goosebit: GoosebitServer,
    nginx_factory: Callable[..., NginxServer],
    tmp_path: Path,
    pki: keygen.DevPki,
) -> None:
    """goosebit as deployed: behind a TLS proxy that demands a client certificate."""
    front = nginx_factory(require_client_cert=True, proxy_to=goosebit.port)
    http = (
        f'ca_file = "{front.ca_file}"\nclient_cert = "{front.client_cert}"\n'
        f'client_key = "{front.client_key}"\n'
    )
    device = fleet_device(tmp_path / "tls", pki, front.url("").rstrip("/"), http=http)
    goosebit.add_device(CONTROLLER, TOKEN)
    assert poll(device)[0] == 9
    register(goosebit, device, "2.0.0", seed=2)
    status, out, err = poll(device)
    assert status == 0, (out, err)
    entries = front.log_entries()
    assert {e["client_verify"] for e in entries} == {"SUCCESS"}
    assert any(e["uri"].endswith("/download") and e["status"] == 206 for e in entries)
    assert goosebit.device(CONTROLLER)["last_state"] == "Running"


def test_target_token_right_works_wrong_is_refused(
    goosebit: GoosebitServer, tmp_path: Path, pki: keygen.DevPki
) -> None:
    goosebit.add_device(CONTROLLER, TOKEN)
    wrong = fleet_device(tmp_path / "wrong", pki, goosebit.url, token="not-the-token")
    status, _, err = poll(wrong)
    assert status == 6
    assert "401" in err and "check target_token" in err
    assert "not-the-token" not in err
    right = fleet_device(tmp_path / "right", pki, goosebit.url)
    assert poll(right)[0] == 9


def test_artifact_gone_from_the_server_fails_the_action_in_bounded_requests(
    goosebit: GoosebitServer, registered: Device
) -> None:
    device = registered
    rollout = register(goosebit, device, "2.0.0", seed=2)
    opened: list[HttpSource] = []

    def withdraw_then_open(url: str, etag: str | None) -> HttpSource:
        # The rollout goes between the deployment answer and the download: the
        # real server answers the download with 404.
        goosebit.api("DELETE", "/api/v1/rollouts", json={"ids": [rollout]})
        source = agent.http_download(url, etag)
        opened.append(source)
        return source

    agent = FleetAgent(device.config(), open_download=withdraw_then_open)
    result = agent.poll_once()
    assert result.kind == "failed"
    assert isinstance(result.error, ServerRefused) and result.error.status == 404
    assert opened[0].request_count == 1
    assert agent.state.pending() is None and agent.state.queued() == []
    assert "install failed" in goosebit.device_log(CONTROLLER)
    assert goosebit.device(CONTROLLER)["last_state"] == "Error"
