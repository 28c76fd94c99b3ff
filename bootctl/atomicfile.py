"""Crash-safe replacement of a small file: temporary file, fsync, rename, fsync the directory.

After a crash at any point the path holds either the complete old or the complete new
contents. Works on FAT too (the rename replaces the old directory entry).

A directory entry (a new file's name, a rename, a new directory) is durable only once
its directory was fsynced: `atomic_write` fsyncs the file's directory after the rename,
and `make_dirs` the parent of each directory it creates (and of the deepest one it finds).

Each write has a temporary file of its own, `.NAME.PID.RANDOM.tmp` beside the file,
so two processes replacing the same file at once each rename a complete copy. The
writer holds an exclusive `flock` on its temporary file from just after creating it
until after the rename. One left behind by a crash is removed by a later write of that
file: one nobody holds a lock on that is older than `_STALE_AFTER`. The lock, not the
pid in the name, tells a live writer: a lock goes with the open file, is seen across
pid namespaces (a container sharing the directory) and ends when its process dies,
while a pid may be another namespace's or reused. The age covers the moment between a
writer's creating its file and locking it.

A path that is a symbolic link names the file it points to: `atomic_write` replaces
that file (its temporary file beside it, its directory fsynced), and the link stays.
Renaming over the link would replace it with a regular file and leave the file it
points to (the one a bootloader reads) as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "STEPS",
    "FaultHook",
    "NotFlushedError",
    "atomic_write",
    "linked_file",
    "make_dirs",
    "sync_file",
]

#: Steps of `atomic_write`, in order; a fault hook is called with each name before the step.
STEPS = ("create", "write", "fsync", "rename", "fsync-dir")

#: Test seam: called with a step name before that step (and with "write" before each chunk);
#: raising simulates a crash there.
FaultHook = Callable[[str], None]

_CHUNK = 512
_TOKEN = 4  # random bytes in a temporary file's name
#: Seconds since its last change (either way: a clock set back at boot) before an
#: unlocked temporary file counts as left by a crash.
_STALE_AFTER = 60.0


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


def linked_file(path: Path) -> Path:
    """The file a write of `path` replaces: the one it points to if it is a symbolic link.

    A link may point to a file that is missing (a write creates it there).

    Raises:
        OSError: The links go round in a loop (ELOOP).
    """
    if not os.path.islink(path):
        return path
    target = Path(os.path.realpath(path))
    if os.path.islink(target):  # where `realpath` stopped in a loop
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
    return target


def sync_file(path: Path) -> None:
    """Make a file or device durable as it reads now, and a regular file's name too.

    For what an earlier write (perhaps of a process killed before its flush) left and
    a caller relies on without writing it again: the file or device is fsynced, and
    the directory of a regular file (of the file a symbolic link points to). A
    special file that has no synchronization (EINVAL) holds nothing to flush.

    Raises:
        OSError: It could not be opened or flushed (FileNotFoundError: it is missing).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        try:
            os.fsync(fd)
        except OSError as e:
            if regular or e.errno != errno.EINVAL:
                raise
    finally:
        os.close(fd)
    if regular:
        _fsync_dir(linked_file(path).parent)


def make_dirs(path: Path) -> None:
    """Create `path` and its missing parents, each durably (its parent fsynced after it).

    The deepest directory found (`path` itself, or the parent the missing ones go
    into) has its parent fsynced all the same: it may have been made by a process
    killed before that fsync, and then a power cut could still take it back with
    every directory and file made in it since.

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
    if at.is_dir():
        _fsync_dir(at.parent)
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


def _is_temporary(path: Path, name: str) -> bool:
    """Whether `name` is a temporary file's name of `path` (or of an earlier release's).

    The name of an earlier release is `.NAME.tmp`.
    """
    prefix = f".{path.name}."
    if not name.startswith(prefix) or not name.endswith(".tmp"):
        return False
    parts = name[len(prefix) : -len(".tmp")].split(".")
    if parts == [""]:  # `.NAME.tmp`
        return True
    return len(parts) == 2 and parts[0].isdigit() and len(parts[1]) == _TOKEN * 2


def _remove_if_abandoned(candidate: str) -> None:
    """Remove `candidate` if no writer holds it and it is older than `_STALE_AFTER`.

    Raises:
        OSError: It could not be opened, locked, checked or removed.
    """
    fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a live writer's
        held = os.fstat(fd)
        if not stat.S_ISREG(held.st_mode) or abs(time.time() - held.st_mtime) < _STALE_AFTER:
            return
        named = os.stat(candidate, follow_symlinks=False)
        if (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino):  # not renamed since
            os.unlink(candidate)
    finally:
        os.close(fd)


def _remove_leftovers(path: Path) -> None:
    """Remove the temporary files of `path` that crashed writes left (best effort)."""
    with contextlib.suppress(OSError), os.scandir(path.parent) as entries:
        for entry in entries:
            if _is_temporary(path, entry.name):
                with contextlib.suppress(OSError):
                    _remove_if_abandoned(entry.path)


class NotFlushedError(OSError):
    """`atomic_write` replaced the file, but its directory could not be flushed.

    Readers see the new contents; whether they survive a power cut is not known.
    """


def atomic_write(path: Path, data: bytes, *, fault: FaultHook | None = None) -> None:
    """Replace `path` with `data` crash-safely.

    Other processes may replace the same file at the same time: each write has its own
    temporary file, and the file then holds one of the writes, whole.

    Args:
        path: The file to replace (it need not exist; its directory must), or a
            symbolic link to it (the link stays).
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

    path = linked_file(path)
    tmp = _temporary(path)
    step("create")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            # Held until after the rename: a later write's cleanup leaves a locked file.
            fcntl.flock(fd, fcntl.LOCK_EX)
            for start in range(0, len(data), _CHUNK):
                step("write")
                _write_all(fd, data[start : start + _CHUNK])
            step("fsync")
            os.fsync(fd)
            step("rename")
            os.replace(tmp, path)
        finally:
            os.close(fd)
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
