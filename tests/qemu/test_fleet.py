"""The fleet client on emulated devices: goosebit on the host assigns, the device reports.

goosebit (the real DDI server, from its own virtual environment) runs on 127.0.0.1 behind
nginx for TLS, as it is deployed; the device reaches nginx through the port forward of
the HTTPS flows, at the update server's name. The device's `[fleet]` table is a config
file written onto its boot partition (it survives the reboots, the slots' own config stays
as built). Each step is real: the device polls, downloads, installs, runs `reboot`, boots
the new slot, its boot script marks it good (or its health check fails), and the next
poll reports what the boot state says.

One flow per architecture keeps the QEMU run short: a good update (reported as success),
then a bad one from the updated slot (it falls back, reported as failure).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootctl.board import load_board
from tests.helpers.goosebit import GoosebitServer
from tests.helpers.nginx import NginxServer
from tests.helpers.tlsca import TlsFiles
from tests.qemu.conftest import UPDATE_SERVER, Bundles
from tests.qemu.device import BOOTED, Boot, Device
from tests.qemu.qemulib import settings

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

INSTALL_TIMEOUT = 600
TOKEN = "qemu-device-token"
POLL = "updater fleet poll --once --json --config {config}"


@pytest.fixture
def goosebit(gb_venv: Path, tmp_path: Path) -> Iterator[GoosebitServer]:
    work = tmp_path / "goosebit"
    work.mkdir()
    with GoosebitServer(gb_venv, work, poll_time="00:00:02") as server:
        yield server


def fleet_config(device: Device, server: str, controller: str) -> str:
    """The image's device config with absolute paths, and a [fleet] table for `server`."""
    mount = device.boot_mount
    return (
        'board = "/etc/abupdate/board.toml"\n'
        'keyring = "/etc/abupdate/keyring.pem"\n'
        f'state_dir = "{mount}/abupdate/state"\n'
        "[http]\n"
        'ca_file = "/etc/abupdate/server-ca.pem"\n'
        "[fleet]\n"
        f'server = "{server}"\n'
        f'controller_id = "{controller}"\n'
        f'target_token = "{TOKEN}"\n'
        "poll_min = 1\n"
        'reboot = "auto"\n'
    )


def poll(device: Device, config: str) -> tuple[int, dict[str, object]]:
    """One cycle that does not reboot; its exit status and JSON line."""
    rc, out = device.sh_rc(POLL.format(config=config), INSTALL_TIMEOUT)
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    return rc, (lines[-1] if lines else {"output": out})


def poll_installs_and_reboots(device: Device, config: str, slot: str, version: str) -> None:
    """One cycle that installs and runs `reboot` (the shell goes down with the system)."""
    device.con.send(POLL.format(config=config) + "\n")
    device.expect(
        f'"result": "action", "detail": "installed {version} into slot {slot};', INSTALL_TIMEOUT
    )
    device.expect(r"Requesting system reboot")  # busybox init, after `reboot`


def test_goosebit_update_then_fallback_reported(
    qemu_only: Device,
    bundles: Bundles,
    update_server_tls: TlsFiles,
    goosebit: GoosebitServer,
    tmp_path: Path,
) -> None:
    device = qemu_only
    arch = device.arch
    compatible = load_board(settings.ARCHES[arch].board_path).compatible
    controller = f"qemu-{arch}"
    good = bundles.get(arch, "2.0.0", 2)
    # Validly signed, of a higher security version, but its health check fails before
    # mark-good: it reboots every time, and raises no floor.
    bad = bundles.get(arch, "2.0.1", 3, health_fails=True)
    goosebit.add_device(controller, TOKEN)
    (tmp_path / "www").mkdir()
    with NginxServer(
        tmp_path / "nginx", tmp_path / "www", update_server_tls, proxy_to=goosebit.port
    ) as front:
        device.forward = [front.port]
        config = f"{device.boot_mount}/abupdate/fleet.toml"
        text = fleet_config(device, f"https://{UPDATE_SERVER}:{front.port}", controller)
        device.power_on()
        assert device.wait_booted() == Boot("A", "1.0.0")
        lines = " ".join(shlex.quote(line) for line in text.splitlines())
        device.sh(f"printf '%s\\n' {lines} > {config}")

        rc, out = poll(device, config)  # registers: configData tells goosebit the hardware
        assert rc == 9, out
        # The image builder records the factory release of slot A, so the first configData
        # names the running version.
        view = goosebit.device(controller)
        assert view["hardware"]["model"] == compatible
        assert view["sw_version"] == "1.0.0", view

        # (a) A good update: installed, rebooted into B, marked good at boot, reported.
        goosebit.add_rollout(goosebit.add_bundle(good, "2.0.0", compatible))
        poll_installs_and_reboots(device, config, "B", "2.0.0")
        assert device.wait_booted() == Boot("B", "2.0.0")
        assert "slot B marked good" in device.boot_messages
        assert goosebit.rollouts()[0]["success_count"] == 0  # nothing closed before the boot
        rc, out = poll(device, config)
        assert rc == 0, out
        assert "runs, marked good" in str(out["detail"]), out
        view = goosebit.device(controller)
        assert (view["sw_version"], view["last_state"]) == ("2.0.0", "Finished"), view
        assert "rebooting, testing pending" in goosebit.device_log(controller)
        (rollout,) = goosebit.rollouts()
        assert (rollout["success_count"], rollout["failure_count"]) == (1, 0)

        # (b) A bad update into A: its health check fails every boot, B runs again.
        goosebit.add_rollout(goosebit.add_bundle(bad, "2.0.1", compatible))
        poll_installs_and_reboots(device, config, "A", "2.0.1")
        for _ in range(3):
            m = device.expect(BOOTED)
            assert m.groups() == ("A", "2.0.1")
            device.expect(r"abupdate: health check failed")
        assert device.wait_booted() == Boot("B", "2.0.0")
        # A has no tries left: B is the slot that boots from now on (the order stays A B).
        env = device.env()
        assert env["BOOT_A_LEFT"] == "0" and env["BOOT_B_LEFT"] == "3", env
        assert "security floor 2" in device.sh("updater status")
        rc, out = poll(device, config)
        assert rc == 7, out
        detail = "slot A (2.0.1) failed to boot; fell back to B"
        assert detail in str(out.get("detail", out)), out
        view = goosebit.device(controller)
        assert (view["sw_version"], view["last_state"]) == ("2.0.0", "Error"), view
        assert detail in goosebit.device_log(controller)
        latest = max(goosebit.rollouts(), key=lambda r: int(r["id"]))
        assert (latest["success_count"], latest["failure_count"]) == (0, 1), latest
        status = json.loads(device.sh(f"updater fleet status --json --config {config}"))
        assert status["pending"] is None and status["queued_feedback"] == [], status
