"""Crash-safe replacement of a small file: temporary file, fsync, rename, fsync the directory.

After a crash at any point the path holds either the complete old or the complete new
contents. Works on FAT too (the rename replaces the old directory entry).

A directory entry (a new file's name, a rename, a new directory) is durable only once
its directory was fsynced: `atomic_write` fsyncs the file's directory after the rename,
and `make_dirs` the parent of each directory it creates.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["STEPS", "FaultHook", "atomic_write", "make_dirs"]

#: Steps of `atomic_write`, in order; a fault hook is called with each name before the step.
STEPS = ("create", "write", "fsync", "rename", "fsync-dir")

#: Test seam: called with a step name before that step (and with "write" before each chunk);
#: raising simulates a crash there.
FaultHook = Callable[[str], None]

_CHUNK = 512


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """Create `path` and its missing parents, each durably (its parent fsynced after it).

    An existing `path` is left as it is; it is not fsynced again.

    Raises:
        OSError: A directory could not be created or its parent not fsynced.
    """
    missing: list[Path] = []
    at = path
    while not at.is_dir():
        missing.append(at)
        if at.parent == at:
            break
        at = at.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except FileExistsError:
            if not directory.is_dir():
                raise
        _fsync_dir(directory.parent)


def atomic_write(path: Path, data: bytes, *, fault: FaultHook | None = None) -> None:
    """Replace `path` with `data` crash-safely.

    Args:
        path: The file to replace (it need not exist; its directory must).
        data: The new contents.
        fault: Test seam, see `FaultHook`.

    Raises:
        OSError: Any step failed; `path` still holds its old contents (a temporary file
            may be left behind next to it, and is overwritten by the next call).
    """

    def step(name: str) -> None:
        if fault is not None:
            fault(name)

    tmp = path.with_name(f".{path.name}.tmp")
    step("create")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for start in range(0, len(data), _CHUNK):
            step("write")
            _write_all(fd, data[start : start + _CHUNK])
        step("fsync")
        os.fsync(fd)
    finally:
        os.close(fd)
    step("rename")
    os.replace(tmp, path)
    step("fsync-dir")
    _fsync_dir(path.parent)
