"""A folder chain whose creation was killed part way is made durable by the next run.

`make_dirs` creates each missing folder and fsyncs its parent. Killed between a
`mkdir` and that fsync, it leaves a folder that exists but whose name a power cut
may take back. The next run finds it and creates the folders below it: the
found folder's parent has to be fsynced too, or the cut takes back the whole
chain with every file written into it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import bootctl.atomicfile
from bootctl.atomicfile import make_dirs
from tests.updater.faults import DirectoryEntries


class Killed(BaseException):
    """The process died right after making a folder."""


@pytest.mark.parametrize("again", ["a/b/c", "a/b", "a"])
def test_a_folder_left_by_a_killed_run_is_made_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, again: str
) -> None:
    entries = DirectoryEntries(tmp_path)
    fsync_dir = bootctl.atomicfile._fsync_dir

    def killed(directory: Path) -> None:
        if (tmp_path / "a").is_dir():
            raise Killed(str(directory))
        fsync_dir(directory)

    with entries.watching():
        monkeypatch.setattr(bootctl.atomicfile, "_fsync_dir", killed)
        with pytest.raises(Killed):
            make_dirs(tmp_path / "a" / "b" / "c")  # made a, killed before fsyncing its parent
        monkeypatch.undo()
        assert (tmp_path / "a").is_dir()
        make_dirs(tmp_path / again)  # the next run finds a (and makes what is below it)
    entries.lose_unsynced()  # the power goes
    assert (tmp_path / again).is_dir()
