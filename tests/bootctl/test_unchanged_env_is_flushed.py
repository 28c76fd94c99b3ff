"""A change that finds nothing to change writes nothing, but flushes the environment it read.

What it read may be a write that its process did not finish making durable (killed
between a rename and its directory's fsync, or between an in-place write and its
fsync); the caller goes on as if it were durable (an install writes the slot it
found unbootable). So the files or devices holding it, and the directory of each
file, are fsynced: `tests/updater/test_env_rename_not_synced.py` shows the cut
this prevents, here every kind of environment is checked, and that nothing is
written.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from bootctl.errors import EnvNotFlushedError
from tests.bootctl.test_slot_control import V1, _open, setup  # noqa: F401 - a fixture

Setup = tuple[object, object, Path]


def _synced(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """(path, is a directory) of every fsync from now on."""
    seen: list[tuple[str, bool]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append((os.readlink(f"/proc/self/fd/{fd}"), stat.S_ISDIR(os.fstat(fd).st_mode)))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_no_change_flushes_and_writes_nothing(
    setup: Setup,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctl = _open(setup, tmp_path, booted="A")  # type: ignore[arg-type]
    ctl.init({"A": V1})
    ctl.invalidate("B")
    files = ctl.store.paths()
    before = {p: p.read_bytes() for p in files}
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    seen = _synced(monkeypatch)
    ctl.mark_good()  # A has its full tries already: nothing to change
    ctl.invalidate("B")  # unbootable already
    assert {p: p.read_bytes() for p in files} == {p: before[p] for p in files}
    for p in files:
        assert (str(p), False) in seen, f"{p} not flushed"
        assert (str(p.parent), True) in seen, f"the directory of {p} not flushed"
    assert all(p.stat().st_mtime_ns == mtimes[p] for p in files)


def test_a_flush_that_fails_is_an_error(
    setup: Setup,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctl = _open(setup, tmp_path, booted="A")  # type: ignore[arg-type]
    ctl.init({"A": V1})

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(EnvNotFlushedError, match=r"cannot flush .*Input/output error"):
        ctl.mark_good()
