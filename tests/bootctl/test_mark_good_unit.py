"""The shipped systemd unit that runs mark-good after boot-complete.target.

Its ExecStart line is run as systemd would run it: joined and unescaped as systemd
does, with the unit's Environment=, the commands found on the search path. Here
`updater` and `abctl` on that path are stubs that exit with given statuses;
tests/updater/test_mark_good_unit.py runs it with the real tools.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bootctl.control import LOADER_IMAGE_ID
from bootctl.exitstatus import BUSY, DEVICE, INTERNAL, NOTHING_PENDING, OK, USAGE
from tests.bootctl.paths import REPO

UNIT = REPO / "bootctl" / "systemd" / "abctl-mark-good.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def _systemd_word(word: str) -> str:
    """One ExecStart word as systemd passes it on: `$$` becomes `$`, `%%` becomes `%`."""
    bare = re.sub(r"\$\$|%%", "", word)
    assert "$" not in bare, f"systemd would expand a variable in {word!r}: write $$"
    assert "%" not in bare, f"systemd would expand a specifier in {word!r}: write %%"
    return re.sub(r"\$\$|%%", lambda m: m.group()[0], word)


def exec_start() -> list[str]:
    """The unit's command line as systemd runs it (lines ending in `\\` joined with a space)."""
    line = _unit()["Service"]["ExecStart"].replace("\\\n", " ")
    return [_systemd_word(word) for word in shlex.split(line)]


def unit_environment() -> dict[str, str]:
    """The variables the unit's Environment= sets for its command."""
    pairs = (item.split("=", 1) for item in shlex.split(_unit()["Service"].get("Environment", "")))
    return {name: value for name, value in pairs}


def stubs(bin_dir: Path, names: tuple[str, ...], statuses: list[int]) -> Path:
    """Stub `names` on the search path: each call is logged, and exits with the next status.

    The last status repeats once the list is used up. Returns the log (one line a call).
    """
    log = bin_dir / "calls.log"
    bin_dir.mkdir()
    for name in names:
        script = bin_dir / name
        script.write_text(
            "#!/bin/sh\n"
            f'echo "{name} $*" >> {log}\n'
            f"n=$(wc -l < {log})\n"
            f"set -- {' '.join(map(str, statuses))}\n"
            'while [ "$n" -gt 1 ] && [ "$#" -gt 1 ]; do shift; n=$((n - 1)); done\n'
            'exit "$1"\n'
        )
        script.chmod(0o755)
    return log


def run_unit(
    bin_dir: Path, wait: int | None = None, pause: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ExecStart with the unit's environment (`wait`, `pause` override its bound)."""
    env = {**os.environ, **unit_environment(), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    if wait is not None:
        env["ABUPDATE_BUSY_WAIT"] = str(wait)
    if pause is not None:
        env["ABUPDATE_BUSY_PAUSE"] = str(pause)
    return subprocess.run(exec_start(), env=env, capture_output=True, text=True, timeout=60)


def test_unit_is_ordered_after_boot_complete() -> None:
    parser = _unit()
    unit = parser["Unit"]
    assert "boot-complete.target" in unit["After"].split()
    assert unit["Requires"] == "boot-complete.target"
    # Either chain's mark of an abupdate boot: the slot on the command line (script, FIT),
    # or systemd-stub's record of the UKI it started (a UKI's command line is fixed).
    assert unit["ConditionKernelCommandLine"] == "|abupdate.slot"
    assert unit["ConditionPathExists"] == "|" + str(LOADER_IMAGE_ID)
    assert parser["Service"]["Type"] == "oneshot"
    assert parser["Service"]["RemainAfterExit"] == "yes"


def test_a_busy_mark_good_is_retried_for_an_hour_every_five_seconds() -> None:
    assert unit_environment() == {"ABUPDATE_BUSY_WAIT": "3600", "ABUPDATE_BUSY_PAUSE": "5"}


@pytest.mark.parametrize(
    ("installed", "called"), [(("updater", "abctl"), "updater"), (("abctl",), "abctl")]
)
def test_the_updater_marks_good_where_installed_else_abctl(
    tmp_path: Path, installed: tuple[str, ...], called: str
) -> None:
    log = stubs(tmp_path / "bin", installed, [OK])
    r = run_unit(tmp_path / "bin")
    assert r.returncode == OK, r.stderr
    assert log.read_text() == f"{called} mark-good\n"
    assert r.stderr == ""


@pytest.mark.parametrize("installed", [("updater", "abctl"), ("abctl",)])
def test_busy_is_tried_again_until_mark_good_succeeds(
    tmp_path: Path, installed: tuple[str, ...]
) -> None:
    log = stubs(tmp_path / "bin", installed, [BUSY, BUSY, OK])
    start = time.monotonic()
    r = run_unit(tmp_path / "bin", pause=1)
    assert r.returncode == OK, r.stderr
    assert log.read_text() == f"{installed[0]} mark-good\n" * 3
    assert time.monotonic() - start >= 2  # a pause before each try again
    # One line when it starts to wait, not one a try.
    assert r.stderr == (
        f"{installed[0]} mark-good: busy; trying again every 1 s for up to 3600 s\n"
    )


@pytest.mark.parametrize("status", [INTERNAL, USAGE, DEVICE, NOTHING_PENDING, 127])
def test_any_other_failure_ends_the_unit_at_once_with_its_status(
    tmp_path: Path, status: int
) -> None:
    log = stubs(tmp_path / "bin", ("updater", "abctl"), [status, OK])
    r = run_unit(tmp_path / "bin", pause=1)
    assert r.returncode == status
    assert log.read_text() == "updater mark-good\n"


def test_a_failure_after_busy_is_not_retried(tmp_path: Path) -> None:
    log = stubs(tmp_path / "bin", ("updater", "abctl"), [BUSY, DEVICE, OK])
    r = run_unit(tmp_path / "bin", pause=1)
    assert r.returncode == DEVICE
    assert log.read_text() == "updater mark-good\n" * 2


@pytest.mark.parametrize(("wait", "pause", "tries"), [(2, 1, 3), (3, 2, 2), (0, 5, 1)])
def test_busy_past_the_bound_ends_the_unit_with_busy(
    tmp_path: Path, wait: int, pause: int, tries: int
) -> None:
    log = stubs(tmp_path / "bin", ("updater", "abctl"), [BUSY])
    start = time.monotonic()
    r = run_unit(tmp_path / "bin", wait=wait, pause=pause)
    took = time.monotonic() - start
    assert r.returncode == BUSY
    assert log.read_text() == "updater mark-good\n" * tries
    assert (tries - 1) * pause <= took < wait + 5  # never pauses past the bound
    waited = (tries - 1) * pause
    assert r.stderr.endswith(f"still busy after {waited} s; giving up (exit 8)\n")


def test_a_pause_of_zero_still_pauses(tmp_path: Path) -> None:
    log = stubs(tmp_path / "bin", ("updater", "abctl"), [BUSY])
    r = run_unit(tmp_path / "bin", wait=1, pause=0)
    assert r.returncode == BUSY
    assert log.read_text() == "updater mark-good\n" * 2


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = tmp_path / UNIT.name  # ExecStart runs /bin/sh, which finds the tools on PATH
    unit.write_text(UNIT.read_text())
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "abctl-mark-good" not in result.stderr
