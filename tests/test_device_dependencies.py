"""A device runs `updater` and `abctl` with the runtime dependencies only.

pyelftools (bundle-tool's ELF check) and pyserial (the QEMU console) are host and
test tools: the device's commands must not need them.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST_ONLY = ("elftools", "serial", "tqdm")

PROBE = f"""
import importlib.abc, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in {HOST_ONLY!r}:
            raise ImportError(f"{{name}} is not on a device")
        return None

sys.meta_path.insert(0, Refuse())
import bootctl.cli, updater.cli, updater.httpsource
for main in (updater.cli.main, bootctl.cli.main):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0, e.code
"""


def test_the_device_commands_load_without_host_tools() -> None:
    r = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("updater ")


def test_host_tools_are_not_runtime_dependencies() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"]).lower()
    assert "pyelftools" not in runtime and "pyserial" not in runtime
    assert any(d.startswith("pyelftools") for d in project["optional-dependencies"]["host"])
