"""Benchmark: requests an idle device sends to its fleet server, counted in the server's log.

Run from the repository root (after ./.ci/setup; goosebit's own virtual environment is
made by tests/helpers/goosebit_setup.sh on first use):

    .venv/bin/python tests/benchmarks/bench_fleet_idle.py [--seconds 120] [--sleep 00:00:05]
        [--workdir DIR] [--keep]

goosebit (the real DDI server) runs on 127.0.0.1 with `poll_time` = --sleep, behind nginx
for TLS as it is deployed; nginx's access log is the request log (one line per request).
A file-backed device that goosebit knows (target token) and that has nothing assigned
runs the real `updater fleet run` for --seconds. Printed: every request by method and
path, the requests after the start-up (the first poll and its configData) and how
many a poll, and from that the requests an hour at goosebit's default sleep of one
minute and at five minutes.

Not a test: pytest does not collect it, and nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import common

CONTROLLER = "idle-dev"
TOKEN = "idle-token"


def seconds_of(sleep: str) -> int:
    h, m, s = (int(x) for x in sleep.split(":"))
    return h * 3600 + m * 60 + s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="how long to run idle")
    parser.add_argument("--sleep", default="00:00:05", help="goosebit's poll_time, HH:MM:SS")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    workdir = common.make_workdir(args.workdir)
    sleep = seconds_of(args.sleep)

    from bundle_tool import keygen
    from tests.helpers.goosebit import GoosebitServer, goosebit_venv
    from tests.helpers.nginx import NginxServer
    from tests.helpers.process import stop_process
    from tests.helpers.tlsca import make_tls_files
    from tests.updater.device import image_bytes, make_device

    try:
        tls_dir = workdir / "tls"
        tls_dir.mkdir()
        tls = make_tls_files(tls_dir)
        (workdir / "www").mkdir()
        (workdir / "goosebit").mkdir()
        pki = keygen.make_dev_pki(workdir / "pki")
        device = make_device(workdir / "device", pki, image_bytes(64, seed=1))
        with (
            GoosebitServer(goosebit_venv(), workdir / "goosebit", poll_time=args.sleep) as gb,
            NginxServer(workdir / "nginx", workdir / "www", tls, proxy_to=gb.port) as front,
        ):
            gb.add_device(CONTROLLER, TOKEN)
            with device.config_path.open("a") as f:
                f.write(
                    f'[http]\nca_file = "{tls.ca_file}"\n'
                    f'[fleet]\nserver = "{front.url("").rstrip("/")}"\n'
                    f'controller_id = "{CONTROLLER}"\ntarget_token = "{TOKEN}"\n'
                    'reboot = "none"\npoll_min = 1\n'
                )
            env = {**os.environ, "PYTHONPATH": f"{common.REPO}:{common.REPO / 'bundle-tool'}"}
            cmd = [sys.executable, "-m", "updater.cli", "fleet", "run", "--json"]
            with (workdir / "fleet-run.log").open("wb") as log:
                proc = subprocess.Popen(
                    [*cmd, "--config", str(device.config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=common.REPO,
                    env=env,
                )
                time.sleep(args.seconds)
                stop_process(proc, timeout=15)
            entries = front.log_entries()
        by_kind = collections.Counter(f"{e['method']} {e['uri']}" for e in entries)
        print(f"goosebit poll_time {args.sleep}, `updater fleet run` idle for {args.seconds:.0f} s")
        for kind, n in sorted(by_kind.items()):
            print(f"  {n:5d}  {kind}")
        after_start = entries[2:]  # the first poll and the configData of the start
        polls = sum(1 for e in after_start if e["method"] == "GET")
        per_poll = len(after_start) / polls if polls else float("nan")
        print(
            f"after the start: {len(after_start)} requests in {polls} polls "
            f"({per_poll:.2f} a poll; a poll every {sleep} s and the cycle's own time)"
        )
        sent = sum(int(e["bytes_sent"]) for e in after_start)
        print(f"response bytes after the start (headers and bodies): {sent}")
        for minutes in (1, 5):
            print(f"at a sleep of {minutes} min: {per_poll * 60 / minutes:.0f} requests an hour")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
