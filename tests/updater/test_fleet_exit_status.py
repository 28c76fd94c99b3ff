"""`updater fleet poll --once`: the exit statuses its help lists are the ones it gives."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.helpers.ddistub import DdiStub
from tests.helpers.nginx import NginxServer
from tests.updater.device import REPO, Device
from tests.updater.test_fleet_stub import CONTROLLER, serve_bundle, stub  # noqa: F401 - fixture
from updater import installlock


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
