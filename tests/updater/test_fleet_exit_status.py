"""`updater fleet poll --once`: the exit statuses its help lists are the ones it gives."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.helpers.ddistub import DdiStub
from tests.helpers.nginx import NginxServer
from tests.updater.device import REPO, Device
from tests.updater.test_fleet_stub import (  # noqa: F401 - the stub fixture
    CONTROLLER,
    agent_for,
    serve_bundle,
    stub,
)
from updater import installlock
from updater.fleet.state import PendingAction


def fleet_help() -> str:
    r = subprocess.run(
        [sys.executable, "-m", "updater.cli", "fleet", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    return r.stdout


def test_poll_once_exits_8_while_an_install_runs_as_its_help_says(
    device: Device,
    stub: DdiStub,  # noqa: F811 - the fixture
    nginx_server: NginxServer,
) -> None:
    serve_bundle(device, stub, nginx_server)
    with device.config_path.open("a") as f:
        f.write(
            f'[fleet]\nserver = "{stub.url}"\nallow_http = true\n'
            f'controller_id = "{CONTROLLER}"\ngateway_token = "gw-secret"\n'
        )
    with installlock.held(device.config().state_dir, "install"):
        r = device.cli("fleet", "poll", "--once", "--json")
    assert r.returncode == 8, (r.stdout, r.stderr)
    assert json.loads(r.stdout.splitlines()[-1])["exit_status"] == 8
    statuses = re.findall(r"^ +(\d+(?:-\d+)?) ", fleet_help(), re.MULTILINE)
    assert {"1", "2-7", "8", "130", "143"} <= set(statuses), statuses


def test_poll_once_exits_8_while_a_cancel_waits_for_an_install(
    device: Device,
    stub: DdiStub,  # noqa: F811 - the fixture
) -> None:
    agent = agent_for(device, stub)
    agent.state.set_pending(PendingAction("5", "2.0.0", "sha256:00", "downloaded", "B", "A"))
    stub.cancel = {"id": "9", "cancelAction": {"stopId": "5"}}
    with installlock.held(device.config().state_dir, "install"):
        r = device.cli("fleet", "poll", "--once", "--json")
    assert r.returncode == 8, (r.stdout, r.stderr)
    assert "the cancel waits for the next poll" in r.stderr
