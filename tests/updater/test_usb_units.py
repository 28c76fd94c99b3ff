"""The shipped udev rule and systemd unit that install a bundle from a USB stick.

The unit is checked with the real `systemd-analyze verify`, under the instance
name the rule asks for. The rule is checked with `udevadm verify` where it
exists (systemd 254 and later) and always with the strict reader of
tests/helpers/udevrules.py, which also evaluates it on a USB partition's
properties.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.helpers.udevrules import Rule, RuleSyntaxError, parse_rules

REPO = Path(__file__).resolve().parents[2]
RULE = REPO / "updater" / "udev" / "90-abupdate-usb.rules"
UNIT_DIR = REPO / "updater" / "systemd"
TEMPLATE = UNIT_DIR / "updater-usb@.service"
SYSTEM_RULES = [Path("/usr/lib/udev/rules.d"), Path("/lib/udev/rules.d")]

# What udevd knows of a partition of a USB stick by the time rules numbered 90 run
# (60-persistent-storage.rules imported ID_BUS and the ID_FS_* properties).
USB_PARTITION = {
    "ACTION": "add",
    "SUBSYSTEM": "block",
    "DEVTYPE": "partition",
    "ID_BUS": "usb",
    "ID_FS_USAGE": "filesystem",
    "ID_FS_TYPE": "vfat",
}


def the_rule() -> Rule:
    rules = parse_rules(RULE)
    assert len(rules) == 1, rules
    return rules[0]


def wanted_units(properties: dict[str, str], kernel_name: str = "sdb1") -> list[str]:
    """The units systemd starts for a device with these properties, as the rule says."""
    rule = the_rule()
    if not rule.matches(properties):
        return []
    env, tags = rule.apply(kernel_name)
    if "systemd" not in tags:  # systemd reads SYSTEMD_WANTS only of devices tagged so
        return []
    return env.get("SYSTEMD_WANTS", "").split()


def udevadm_verify() -> str | None:
    """The `udevadm` that has a `verify` command (systemd 254 and later), if any."""
    udevadm = shutil.which("udevadm")
    if udevadm is None:
        return None
    help_run = subprocess.run([udevadm, "verify", "--help"], capture_output=True)
    return udevadm if help_run.returncode == 0 else None


def test_udev_rule_syntax_is_valid() -> None:
    parse_rules(RULE)  # raises, naming the line and the problem


def test_udev_rule_passes_udevadm_verify() -> None:
    udevadm = udevadm_verify()
    if udevadm is None:
        pytest.skip("udevadm has no verify command before systemd 254 (Debian 12 has 252)")
    r = subprocess.run(
        [udevadm, "verify", "--resolve-names=never", str(RULE)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


def exec_start(mount_root: Path, kernel_name: str) -> str:
    """The unit's ExecStart command for `kernel_name`, mounting below `mount_root`."""
    (line,) = [x for x in TEMPLATE.read_text().splitlines() if x.startswith("ExecStart=")]
    command = line.removeprefix("ExecStart=").replace("%i", kernel_name).replace("%I", kernel_name)
    return command.replace("/run/abupdate-usb/", f"{mount_root}/")


@pytest.mark.parametrize("bundles", [0, 1, 2])
def test_usb_unit_hands_the_mount_point_to_the_updater(tmp_path: Path, bundles: int) -> None:
    """No bundle: nothing to do. Else the updater gets the mount point and applies its
    rule of exactly one `*.bundle` (tests/updater/test_sources.py checks that rule)."""
    mount = tmp_path / "run" / "sdb1"
    mount.mkdir(parents=True)
    for n in range(bundles):
        (mount / f"update-{n}.bundle").write_bytes(b"")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    stub = bindir / "updater"
    stub.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    stub.chmod(0o755)
    r = subprocess.run(
        exec_start(tmp_path / "run", "sdb1"),
        shell=True,
        env={**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    if bundles == 0:
        assert not calls.exists()
    else:
        assert calls.read_text() == f"install --json {mount}\n"


def test_udev_rule_starts_the_shipped_unit_for_usb_partitions_only() -> None:
    assert wanted_units(USB_PARTITION) == ["updater-usb@sdb1.service"]
    assert wanted_units(USB_PARTITION, "sdc2") == ["updater-usb@sdc2.service"]
    for change in (
        {"ACTION": "remove"},
        {"SUBSYSTEM": "usb"},
        {"DEVTYPE": "disk"},  # the whole stick, not a partition
        {"ID_BUS": "ata"},  # an internal disk
        {"ID_FS_USAGE": "crypto"},  # no filesystem to mount
    ):
        assert wanted_units({**USB_PARTITION, **change}) == [], change
    assert TEMPLATE.is_file()
    # Both files are installed with the package.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_data = pyproject["tool"]["setuptools"]["package-data"]["updater"]
    assert {"udev/*", "systemd/*"} <= set(package_data)


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is missing: install the Debian package systemd",
)
def test_usb_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    shutil.copy(TEMPLATE, units)
    (instance,) = wanted_units(USB_PARTITION)
    # Our directory first, then the system's (for local-fs.target and the like).
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"}
    for unit in (str(units / TEMPLATE.name), instance):
        r = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", unit],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        output = r.stdout + r.stderr
        # Unknown keys and bad values are only warnings: no line may name our unit.
        assert r.returncode == 0, output
        assert not [line for line in output.splitlines() if "updater-usb" in line], output


BAD_RULES = {
    "match key assigned": ('ACTION="add", TAG+="systemd"', "ACTION does not take '='"),
    "assign key matched": ('ACTION=="add", RUN=="/bin/true"', "RUN does not take '=='"),
    "unknown key": ('SUBSYSTEMZ=="block", TAG+="systemd"', "unknown key 'SUBSYSTEMZ'"),
    "no comma": ('ACTION=="add" TAG+="systemd"', "one comma expected"),
    "no space after comma": ('ACTION=="add",TAG+="systemd"', "whitespace expected after"),
    "space before comma": ('ACTION=="add" , TAG+="systemd"', "whitespace before a comma"),
    "trailing comma": ('ACTION=="add", TAG+="systemd",', "stray trailing comma"),
    "kernel property set": ('ACTION=="add", ENV{DEVTYPE}="disk"', "ENV{DEVTYPE} cannot be set"),
    "ENV without name": ('ACTION=="add", ENV="x"', "ENV needs {...}"),
    "TAG with name": ('ACTION=="add", TAG{x}+="systemd"', "TAG takes no {...}"),
    "unknown substitution": ('ENV{SYSTEMD_WANTS}+="u@%q.service"', "unknown substitution"),
    "attr without name": ('ACTION=="add", ENV{X}="$attr"', "needs {name}"),
    "unquoted value": ('ACTION=="add", TAG+=systemd', "double-quoted value expected"),
    "unterminated value": ('ACTION=="add", TAG+="systemd', "double-quoted value expected"),
    "matches only": ('ACTION=="add", SUBSYSTEM=="block"', "no effect"),
    "unknown option": ('ACTION=="add", OPTIONS+="bogus"', "unknown OPTIONS value"),
    "continuation at the end": ('TAG+="systemd" \\', "ends with a continuation"),
}


@pytest.mark.parametrize("case", list(BAD_RULES))
def test_udev_reader_refuses_what_udevd_would_not_take(tmp_path: Path, case: str) -> None:
    text, message = BAD_RULES[case]
    path = tmp_path / "bad.rules"
    path.write_text(f"# a comment\n\n{text}\n")
    with pytest.raises(RuleSyntaxError, match=re.escape(message)) as info:
        parse_rules(path)
    assert "line 3" in str(info.value)


def test_udev_reader_takes_the_rules_systemd_ships(tmp_path: Path) -> None:
    path = tmp_path / "good.rules"
    path.write_text(
        'ACTION=="add|change", SUBSYSTEM=="block", \\\n'
        "  # a comment inside a continued rule is skipped\n"
        '  KERNEL!="loop*", ENV{ID_FS_USAGE}=="?*", IMPORT{builtin}="blkid", '
        'SYMLINK+="disk/x-%k", RUN+="/bin/echo $env{ID_FS_TYPE} %%", GOTO="end"\n'
        'LABEL="end"\n'
    )
    (first, label) = parse_rules(path)
    assert [t.key for t in first.tokens][-1] == "GOTO" and label.line == 4
    # The reader is not stricter than udevd: the system's own rules pass.
    shipped = sorted({p.resolve() for d in SYSTEM_RULES if d.is_dir() for p in d.glob("*.rules")})
    for rules in shipped:
        parse_rules(rules)


def test_usb_unit_waits_for_mark_good() -> None:
    """A stick left in at boot: its install starts once mark-good ran, so mark-good never
    finds the install lock held (exit 8) and leaves the good slot unconfirmed."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read(TEMPLATE)
    assert "abctl-mark-good.service" in parser["Unit"]["After"].split()
