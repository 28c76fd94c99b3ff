"""The state directory's files when they are damaged: the updater fails closed, on record.

A floor file that holds no floor must never read as floor 0 (that would lift the
anti-rollback protection), and a damaged file is a device error naming it (exit 7),
never an internal error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.updater.device import Device, image_bytes
from updater.errors import DeviceError
from updater.filesource import FileSource
from updater.install import Installer
from updater.statedir import FLOOR_FILE, SLOTS_FILE, StateDir

RECORD = {
    "version": "1.0",
    "security_version": 2,
    "compatible": "board",
    "root_hash": "00" * 32,
    "installed_at": 1700000000,
}

#: JSON nested deeper than the parser's recursion goes.
DEEP = b"[" * 100_000 + b"]" * 100_000

DAMAGED_FLOORS = [b"", b'{"security_fl', b"[1]", b"{}", b'{"floor": 3}', b'{"security_floor": -1}']
DAMAGED_FLOORS += [b'{"security_floor": "3"}', b'{"security_floor": true}', b"null", b"\xff", DEEP]

DAMAGED_RECORDS = [b"", b'{\n  "B": {\n    "compat', b"[]", b'{"B": 1}', b'{"B": {}}', DEEP]
DAMAGED_RECORDS += [
    json.dumps({"B": {**RECORD, "security_version": "2"}}).encode(),
    json.dumps({"B": {**RECORD, "extra": 1}}).encode(),
]


@pytest.mark.parametrize("content", DAMAGED_FLOORS)
def test_a_floor_file_without_a_floor_is_a_device_error(device: Device, content: bytes) -> None:
    state = device.config().state_dir
    state.mkdir(parents=True, exist_ok=True)
    (state / FLOOR_FILE).write_bytes(content)
    with pytest.raises(DeviceError, match=f"state file .*{FLOOR_FILE} .*: restore it from a copy"):
        StateDir(state).security_floor()
    r = device.cli("status", "--json")
    assert r.returncode == 7, r.stderr
    assert FLOOR_FILE in json.loads(r.stdout)["error"]


def test_a_missing_floor_file_is_floor_0_and_a_stored_one_reads_back(device: Device) -> None:
    state = StateDir(device.config().state_dir)
    assert state.security_floor() == 0
    assert state.raise_floor(3)
    assert state.security_floor() == 3


@pytest.mark.parametrize("content", DAMAGED_RECORDS)
def test_damaged_slot_records_are_a_device_error(device: Device, content: bytes) -> None:
    state = device.config().state_dir
    state.mkdir(parents=True, exist_ok=True)
    (state / SLOTS_FILE).write_bytes(content)
    with pytest.raises(DeviceError, match=f"state file .*{SLOTS_FILE} .*: remove it to forget"):
        StateDir(state).slot_records()
    r = device.cli("status", "--json")
    assert r.returncode == 7, r.stderr
    assert SLOTS_FILE in json.loads(r.stdout)["error"]


def test_slot_records_read_back(device: Device) -> None:
    state = device.config().state_dir
    state.mkdir(parents=True)
    (state / SLOTS_FILE).write_text(json.dumps({"B": RECORD}))
    assert StateDir(state).slot_records()["B"].security_version == 2


@pytest.mark.parametrize(("name", "content"), [(SLOTS_FILE, b'{"B": {"ver'), (FLOOR_FILE, b"{}")])
def test_mark_good_with_a_damaged_state_file_changes_nothing(
    device: Device, name: str, content: bytes
) -> None:
    """The booted slot on trial stays on trial: its tries are not restored without the floor."""
    with FileSource(device.bundle(image_bytes(300, seed=9), security_version=4)) as src:
        Installer(device.config()).install(src)
    device.boot("B")
    ctl = device.control()
    ctl.store.save({**ctl.env(), "BOOT_B_LEFT": "2"})  # the boot script took one try
    state = device.config().state_dir
    (state / name).write_bytes(content)
    before = device.snapshot(target=True)
    r = device.cli("mark-good")
    assert r.returncode == 7, r.stderr
    assert r.stderr.startswith(f"updater: error: state file {state / name}")
    assert device.snapshot(target=True) == before
    assert device.control().env()["BOOT_B_LEFT"] == "2"


@pytest.mark.parametrize("step", ["atomic_write", "sync_file"])
def test_an_error_without_errno_is_named_by_its_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """An OSError without an errno (strerror None) still gives a reason, not "None"."""
    state = StateDir(tmp_path / "state")
    state.raise_floor(2)

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("the medium went away")

    monkeypatch.setattr(f"updater.statedir.{step}", fail)
    with pytest.raises(DeviceError, match=r"state file .*: the medium went away$"):
        state.raise_floor(2 if step == "sync_file" else 3)
