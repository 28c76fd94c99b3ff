"""Crash-safe replacement of a small file: temporary file, fsync, rename, fsync the directory.

After a crash at any point the path holds either the complete old or the complete new
contents. Works on FAT too (the rename replaces the old directory entry).

A directory entry (a new file's name, a rename, a new directory) is durable only once
its directory was fsynced: `atomic_write` fsyncs the file's directory after the rename,
and `make_dirs` the parent of each directory it creates.

Each write has a temporary file of its own, `.NAME.PID.RANDOM.tmp` beside the file,
so two processes replacing the same file at once each rename a complete copy. One
left behind by a crash (its process is gone) is removed by the next write of that file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

__all__ = ["STEPS", "FaultHook", "NotFlushedError", "atomic_write", "make_dirs"]

#: Steps of `atomic_write`, in order; a fault hook is called with each name before the step.
STEPS = ("create", "write", "fsync", "rename", "fsync-dir")

#: Test seam: called with a step name before that step (and with "write" before each chunk);
#: raising simulates a crash there.
FaultHook = Callable[[str], None]

_CHUNK = 512
_TOKEN = 4  # random bytes in a temporary file's name


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


def _temporary(path: Path) -> Path:
    """A name for this write's temporary file, unlike any other write's."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(_TOKEN)}.tmp")


def _writer_gone(path: Path, name: str) -> bool:
    """Whether `name` is a temporary file of `path` whose writer's process is gone.

    The name of an earlier release, `.NAME.tmp`, has no process: it is gone too.
    """
    prefix = f".{path.name}."
    if not name.startswith(prefix) or not name.endswith(".tmp"):
        return False
    parts = name[len(prefix) : -len(".tmp")].split(".")
    if parts == [""]:  # `.NAME.tmp`
        return True
    if len(parts) != 2 or not parts[0].isdigit() or len(parts[1]) != _TOKEN * 2:
        return False
    try:
        os.kill(int(parts[0]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # there, but another user's
        return False
    return False


def _remove_leftovers(path: Path) -> None:
    """Remove the temporary files of `path` that crashed writes left (best effort)."""
    with contextlib.suppress(OSError), os.scandir(path.parent) as entries:
        for entry in entries:
            if _writer_gone(path, entry.name):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


class NotFlushedError(OSError):
    """`atomic_write` replaced the file, but its directory could not be flushed.

    Readers see the new contents; whether they survive a power cut is not known.
    """


def atomic_write(path: Path, data: bytes, *, fault: FaultHook | None = None) -> None:
    """Replace `path` with `data` crash-safely.

    Other processes may replace the same file at the same time: each write has its own
    temporary file, and the file then holds one of the writes, whole.

    Args:
        path: The file to replace (it need not exist; its directory must).
        data: The new contents.
        fault: Test seam, see `FaultHook`.

    Raises:
        NotFlushedError: The new contents are in place, but flushing the directory
            failed: a power cut before the next sync may bring the old ones back.
        OSError: Any step before failed; `path` still holds its old contents (the
            temporary file is removed; one a crash leaves is removed by a later write).
    """

    def step(name: str) -> None:
        if fault is not None:
            fault(name)

    tmp = _temporary(path)
    step("create")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
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
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    step("fsync-dir")
    try:
        _fsync_dir(path.parent)
    except OSError as e:
        raise NotFlushedError(e.errno, e.strerror, str(path.parent)) from e
    _remove_leftovers(path)
