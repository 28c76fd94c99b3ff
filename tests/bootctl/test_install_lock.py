"""abctl's verbs that write the environment keep out of a running install.

Between an install's first write (it invalidates the target slot) and its
switch, a `set-primary` or `reset` would make the half-written slot bootable:
where the device runs the updater, those verbs hold its install lock.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bootctl import handover, installlock
from bootctl.board import load_board
from bootctl.cli import build_parser, main
from bootctl.control import SlotControl
from bootctl.errors import BusyError, StorageError
from tests.bootctl.paths import BOARD_DIR

ARM = str(BOARD_DIR / "qemu-arm64-uboot.toml")


def help_of(status: int) -> str:
    """What `abctl --help` says of an exit status, on one line."""
    epilog = build_parser().epilog or ""
    found = re.search(rf"^  {status}  (.*?)(?=^  \d+  |^\S)", epilog, re.M | re.S)
    assert found, epilog
    return " ".join(found[1].split())


VERITY = "ab" * 32 + ":" + "cd" * 32 + ":100"


@pytest.fixture
def device(tmp_path: Path) -> tuple[list[str], Path, Path]:
    """Global options of a U-Boot board booted from A (B installed), its device
    config (naming the state directory) and the environment file."""
    cfg = tmp_path / "fw_env.config"
    cfg.write_text(f"{tmp_path / 'uboot.env'} 0x0 0x4000\n")
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyAMA0 abupdate.slot=A\n")
    options = ["--board", ARM, "--env-config", str(cfg), "--cmdline", str(cmdline)]
    assert main([*options, "init", "--verity", f"A={VERITY}", "--verity", f"B={VERITY}"]) == 0
    device_config = tmp_path / "device.toml"
    device_config.write_text('board = "board.toml"\nkeyring = "k.pem"\nstate_dir = "state"\n')
    return options, device_config, tmp_path / "uboot.env"


CHANGES = [
    ["set-primary", "B"],
    ["set-primary", "B", "--verity", VERITY],
    ["set-verity", "B", ""],
    ["mark-bad", "B"],
    ["reset"],
    ["init"],
    ["mark-good"],  # where the updater command is missing (else it hands over to it)
]


@pytest.mark.parametrize("verb", CHANGES, ids=" ".join)
def test_a_change_while_an_install_holds_the_lock_is_refused_and_changes_nothing(
    device: tuple[list[str], Path, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    verb: list[str],
) -> None:
    options, device_config, env_file = device
    monkeypatch.setattr(handover, "_updater", lambda: None)
    before = env_file.read_bytes()
    args = [*options, *verb, "--device-config", str(device_config)]
    with installlock.held(device_config.parent / "state", "install"):
        capsys.readouterr()
        assert main(args) == 8
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another install or mark-good" in err, err
    assert str(os.getpid()) in err  # the holder is named
    assert env_file.read_bytes() == before
    # Once the lock is free, the same change is made.
    assert main(args) == 0
    assert (device_config.parent / "state" / installlock.LOCK_FILE).exists()


def test_without_a_device_config_no_lock_is_taken(
    device: tuple[list[str], Path, Path], tmp_path: Path
) -> None:
    options = device[0]
    with installlock.held(tmp_path / "state", "install"):
        assert main([*options, "reset", "--device-config", str(tmp_path / "none.toml")]) == 0


def test_an_unreadable_device_config_is_a_usage_error(
    device: tuple[list[str], Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    options, device_config, _ = device
    device_config.write_text("state_dir = [\n")
    assert main([*options, "reset", "--device-config", str(device_config)]) == 2
    assert "device config" in capsys.readouterr().err


@pytest.mark.parametrize(
    "value",
    ['"st\\u0000ate"', '"st\\nate"', '"st\\u001bate"', '""', "1", '"' + "s" * 4097 + '"'],
    ids=["nul", "newline", "escape", "empty", "number", "too-long"],
)
def test_a_state_dir_that_is_no_path_is_a_usage_error(
    device: tuple[list[str], Path, Path], capsys: pytest.CaptureFixture[str], value: str
) -> None:
    """As the updater refuses it: a NUL, a newline or another control character."""
    options, device_config, env_file = device
    before = env_file.read_bytes()
    device_config.write_text(f"state_dir = {value}\n")
    capsys.readouterr()
    assert main([*options, "reset", "--device-config", str(device_config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'state_dir' must be a path of 1-4096 printable" in err, err
    assert env_file.read_bytes() == before
    assert "'state_dir' must be a path" in help_of(2)


def test_a_lock_file_that_cannot_be_created_is_a_device_error(
    device: tuple[list[str], Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    options, device_config, env_file = device
    before = env_file.read_bytes()
    device_config.write_text('state_dir = "device.toml/state"\n')  # under a file
    capsys.readouterr()
    assert main([*options, "reset", "--device-config", str(device_config)]) == 7
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot open the lock file" in err, err
    assert env_file.read_bytes() == before
    assert "cannot open the lock file" in help_of(7)


def test_set_primary_reads_the_recorded_value_in_its_locked_write(
    device: tuple[list[str], Path, Path],
) -> None:
    """An install clears B's value while `abctl set-primary B` waits for the
    environment's lock: abctl must see the cleared value, not write back the old one."""
    options = device[0]
    board = load_board(Path(ARM))
    fw_config = Path(options[3]).read_text().splitlines()
    ctl = SlotControl.open(board, env_override=fw_config, cmdline_path=Path(options[5]))
    script = (
        f"from bootctl.cli import main; raise SystemExit(main({[*options, 'set-primary', 'B']!r}))"
    )
    with ctl.store.locked():
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)  # abctl has started and waits for the lock (or reads after it)
        env = ctl.store.load()
        env["BOOT_B_VERITY"] = ""
        env["BOOT_B_LEFT"] = "0"
        ctl.store.save(env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, (out, err)
    assert "slot B has no verity value" in err
    after = ctl.env()
    assert after["BOOT_B_VERITY"] == "" and after["BOOT_B_LEFT"] == "0"
    assert after["BOOT_ORDER"] == "A B"


class Holder:
    """Another process that holds the lock of the file at `path` (made if missing) until `end`."""

    def __init__(self, path: Path) -> None:
        script = (
            "import fcntl, os, sys\n"
            f"fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT, 0o644)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.pwrite(fd, f'{os.getpid()}\\n'.encode(), 0)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "locked\n"

    def end(self) -> None:
        """Release the lock (the process ends)."""
        self.proc.communicate(timeout=30)


def _replace(path: Path, how: str) -> None:
    """Remove the file at `path`, or rename another file over it."""
    if how == "removed":
        path.unlink()
    else:
        other = path.with_name("other")
        other.write_text("")
        other.replace(path)


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_lock_file_removed_or_replaced_while_it_is_locked_is_locked_again(
    tmp_path: Path, how: str
) -> None:
    """Between this run's opening of the lock file and its locking it, the file is
    removed (or renamed over) and another process locks the new one: this run must
    find that one held, not lock the old file that nobody else sees."""
    state = tmp_path / "state"
    path = state / installlock.LOCK_FILE
    holders: list[Holder] = []

    def meanwhile(step: str) -> None:
        if not holders:
            _replace(path, how)
            holders.append(Holder(path))

    try:
        with pytest.raises(BusyError) as refused:
            installlock.acquire(state, "install", fault=meanwhile)
        (holder,) = holders
        assert f"(pid {holder.proc.pid})" in str(refused.value)
    finally:
        for each in holders:
            each.end()
    # Free again: it is taken on the file at the path.
    fd = installlock.acquire(state, "install")
    try:
        assert os.fstat(fd).st_ino == path.stat().st_ino
        assert path.read_text() == f"{os.getpid()}\n"
    finally:
        os.close(fd)


def test_a_lock_file_replaced_each_time_it_is_locked_is_a_device_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    path = state / installlock.LOCK_FILE
    tries = []

    def meanwhile(step: str) -> None:
        tries.append(step)
        _replace(path, "replaced")

    with pytest.raises(StorageError, match=r"cannot lock .*: it was removed or replaced each"):
        installlock.acquire(state, "install", fault=meanwhile)
    assert 1 < len(tries) <= 10  # tried again, a few times
    os.close(installlock.acquire(state, "install"))  # then free


def test_the_lock_file_stays_when_the_lock_is_released(tmp_path: Path) -> None:
    """A holder that removed it would let a run that had opened it lock a lost file."""
    state = tmp_path / "state"
    with installlock.held(state, "install"):
        ino = (state / installlock.LOCK_FILE).stat().st_ino
    assert (state / installlock.LOCK_FILE).stat().st_ino == ino
