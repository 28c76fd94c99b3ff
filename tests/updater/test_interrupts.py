"""SIGINT and SIGTERM during `updater install`: one error line, recorded, 130 or 143.

Each run is a real child process fed the bundle from a pipe, stopped on purpose
at one phase, and sent the signal to its whole process group (its forked
helpers too). Slot B holds an older bootable release, so "left unbootable" is
something the install had to do.
"""

from __future__ import annotations

import json
import os
import signal
import struct
from pathlib import Path

import pytest

from bootctl.state import parse_state
from bundle_tool import container, keygen
from tests.updater.device import Device, image_bytes, make_device
from tests.updater.pipedinstall import PipedInstall
from updater import interrupts
from updater.errors import Interrupted
from updater.filesource import FileSource
from updater.install import Installer
from updater.statedir import LAST_FILE

BLOCKS = 700
STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


@pytest.fixture
def older_b(tmp_path: Path, pki: keygen.DevPki) -> Device:
    return make_device(
        tmp_path / "device", pki, image_bytes(BLOCKS, seed=1), b_image=image_bytes(BLOCKS, seed=3)
    )


def _b_bootable(device: Device) -> bool:
    ctl = device.control()
    return parse_state(ctl.env(), ctl.board.slot_names).slot("B").bootable


@pytest.mark.parametrize("signum", list(STATUS), ids=lambda s: s.name)
@pytest.mark.parametrize("phase", ["check", "tree", "data"])
def test_a_signal_ends_the_install_recorded_in_one_line(
    older_b: Device, signum: signal.Signals, phase: str
) -> None:
    device = older_b
    bundle = device.bundle(image_bytes(BLOCKS, seed=2), version="3.2.0")
    with FileSource(bundle) as src:
        (part,) = Installer(device.config()).plan(src).head.images
    before = device.snapshot()
    run = PipedInstall(device, bundle)
    run.wait_for_lock()
    if phase == "check":
        run.feed(part.area_offset // 2)  # half the head: it cannot be checked yet
    elif phase == "tree":
        run.feed(part.area_offset + 4096)
        run.wait_for_phase("tree")
    else:
        run.feed(part.data_offset + (BLOCKS - 100) * 4096)  # two of three 1 MiB spans
        run.wait_for_phase("data")
    run.signal(signum)
    status, events, stderr = run.finish()

    assert status == STATUS[signum], stderr
    assert "Traceback" not in stderr
    (line,) = stderr.splitlines()
    assert line.startswith(f"updater: error: interrupted by {signum.name} in phase {phase}")
    assert events[-1] == {"event": "error", "error": line[16:], "exit_status": STATUS[signum]}
    last = json.loads((device.config().state_dir / LAST_FILE).read_text())
    assert last["status"] == "interrupted"
    assert (last["phase"], last["signal"]) == (phase, signum.name)
    after = device.snapshot()
    assert after["A"] == before["A"]
    if phase == "check":
        assert after == before  # nothing changed, B still bootable
        assert _b_bootable(device)
    else:
        assert not _b_bootable(device)  # as after any failure once writing began
    status_out = device.cli("status")
    assert "last install: interrupted" in status_out.stdout


def test_a_signal_during_the_switch_takes_effect_after_it(device: Device) -> None:
    """The slot record and the environment write are one step for a signal: it waits."""
    bundle = device.bundle(image_bytes(BLOCKS, seed=2), version="3.2.0")
    control = device.control()
    save = control.store.save

    def save_after_a_signal(env: dict[str, str], **kw: bool) -> None:  # the switch: B is
        os.kill(os.getpid(), signal.SIGTERM)  # unbootable already, so the only save
        save(env, **kw)

    control.store.save = save_after_a_signal  # type: ignore[method-assign]
    with (
        interrupts.raised(),
        FileSource(bundle) as src,
        pytest.raises(Interrupted, match="SIGTERM came once the install was done; it stands"),
    ):
        Installer(device.config(), control=control).install(src)
    st = parse_state(device.control().env(), control.board.slot_names)
    assert st.primary == "B" and st.slot("B").bootable
    last = json.loads((device.config().state_dir / LAST_FILE).read_text())
    assert (last["status"], last["version"]) == ("installed", "3.2.0")
    assert Installer(device.config()).installed()["B"].version == "3.2.0"


def test_a_signal_inside_a_parser_stays_a_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    """construct turns any `Exception` raised while it unpacks into its own error.

    The handler raises wherever the main thread is; seen in a run of the test above,
    a SIGINT that came during the header's parse was reported as a bug (status 1).
    """
    header = container.Header(manifest_size=2, signatures_size=8, payload_size=0).to_bytes()
    unpack = struct.unpack

    def signal_comes(fmt: str, data: bytes) -> tuple[object, ...]:
        monkeypatch.setattr(struct, "unpack", unpack)
        raise Interrupted(signal.SIGINT)  # as `interrupts.raised`'s handler does

    monkeypatch.setattr(struct, "unpack", signal_comes)
    with pytest.raises(Interrupted, match="interrupted by SIGINT"):
        container.parse_header(header)
