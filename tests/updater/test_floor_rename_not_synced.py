"""A raise of the anti-rollback floor killed between its rename and its folder's fsync.

The floor file is replaced by rename, then its folder fsynced. A process killed
between the two (`kill -9`, a crash) leaves a floor that reads as raised but
that a power cut takes back. The next mark-good or install, finding the floor
already at the value it wanted, wrote nothing, so nothing made it durable:
a cut then, and a later fallback to the other slot, allowed a downgrade below
the floor the good slot had set. Finding nothing to raise, it now flushes the
floor it read.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import updater.statedir
from bootctl.atomicfile import atomic_write
from tests.updater.faults import DirectoryEntries
from updater.statedir import StateDir


class Killed(BaseException):
    """The process died at a step of a state file's replacement."""


def test_a_floor_read_as_raised_is_made_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = StateDir(tmp_path / "state")
    state.raise_floor(3)
    entries = DirectoryEntries(tmp_path)
    with entries.watching():

        def killed_at_dir_fsync(path: Path, data: bytes) -> None:
            def fault(step: str) -> None:
                if step == "fsync-dir":
                    raise Killed(step)

            atomic_write(path, data, fault=fault)

        monkeypatch.setattr(updater.statedir, "atomic_write", killed_at_dir_fsync)
        with pytest.raises(Killed):
            state.raise_floor(5)  # mark-good of a slot of security version 5, killed
        monkeypatch.undo()
        assert StateDir(state.path).security_floor() == 5  # reads as raised
        assert not StateDir(state.path).raise_floor(5)  # the next mark-good: nothing to raise
    entries.lose_unsynced()  # the power goes
    assert StateDir(state.path).security_floor() == 5
