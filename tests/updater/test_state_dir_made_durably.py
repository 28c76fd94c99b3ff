"""A state directory whose creation was killed before its parent's fsync is made durable later.

The first install on a device creates the state directory (its parent fsynced
right after). Killed in between, it leaves a directory that exists but whose
name a power cut may take back, with every file in it: the floor, the slot
records. A later run found it there and did not fsync its parent again, so the
floor it then stored in it was lost to a cut all the same.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import bootctl.atomicfile
from tests.updater.faults import DirectoryEntries
from updater.statedir import StateDir


class Killed(BaseException):
    """The process died right after making the directory."""


def test_a_state_dir_left_by_a_killed_run_is_made_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = StateDir(tmp_path / "state")
    entries = DirectoryEntries(tmp_path)
    fsync_dir = bootctl.atomicfile._fsync_dir
    with entries.watching():

        def killed(directory: Path) -> None:
            if state.path.is_dir():
                raise Killed(str(directory))
            fsync_dir(directory)

        monkeypatch.setattr(bootctl.atomicfile, "_fsync_dir", killed)
        with pytest.raises(Killed):
            state.raise_floor(5)  # made the directory, killed before its parent's fsync
        monkeypatch.undo()
        assert state.path.is_dir()
        assert state.raise_floor(5)  # the next run stores the floor
    entries.lose_unsynced()  # the power goes
    assert StateDir(state.path).security_floor() == 5
