"""One install (or change of the boot state) at a time: the device's install lock.

The lock is an exclusive `flock` on `install.lock` in the updater's state
directory. It goes with the process that holds it, so a lock left by a process
that died is free for the next one at once. The holder writes its pid into the
file, only for the message of a run refused meanwhile.

The lock belongs to the file, not to its name: a process that opened the file
just before it was removed or replaced, and locked it after another process
locked the new one, would hold a lock nobody else sees. So the lock taken is
kept only if the descriptor still is the file at the lock's path (else it is
taken again, a few times), and the file is never removed (a holder that removed
it on release would make that race).

The updater holds it for a whole install or mark-good; `abctl`'s verbs that
change the environment hold it for their one write (where the device runs the
updater), so that none of them lands in the middle of an install: between the
install's invalidating the target slot and its switch, a `set-primary` or
`reset` would make a half-written slot bootable.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from .atomicfile import FaultHook, make_dirs
from .errors import BusyError, StorageError

__all__ = ["LOCK_FILE", "acquire", "held"]

LOCK_FILE = "install.lock"

#: Times the lock is taken before giving up when each time the file at its path is
#: another (removed or replaced meanwhile).
_TRIES = 5


def _holder(fd: int) -> str:
    """The pid written by the holder, or "unknown" (it may not have written it yet)."""
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        if text.isdigit():
            return text
    return "unknown"


def _is_at(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is the file at `path` (a missing path is another file).

    Raises:
        OSError: `fd` or `path` cannot be looked at.
    """
    held = os.fstat(fd)
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _lock(path: Path, what: str, fault: FaultHook | None) -> int | None:
    """Open and lock the file at `path`: its descriptor, or None if it is no longer there.

    Raises:
        BusyError: another process holds the lock.
        StorageError: the file cannot be opened, locked or looked at.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise StorageError(f"cannot open the lock file {path}: {e.strerror}") from e
    try:
        if fault is not None:
            fault("lock")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _is_at(fd, path):
            return fd
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise BusyError(
            f"cannot {what}: another install or mark-good (pid {holder}) is running "
            f"on this device (it holds {path}); wait for it to end"
        ) from None
    except OSError as e:
        os.close(fd)
        raise StorageError(f"cannot lock {path}: {e.strerror}") from e
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def acquire(state_dir: Path, what: str, *, fault: FaultHook | None = None) -> int:
    """Take the device's install lock without waiting; the open descriptor that holds it.

    Closing the descriptor releases the lock.

    Args:
        state_dir: the updater's state directory (created, durably, if missing).
        what: what the caller does, for the refusal's message ("install", ...).
        fault: Test seam: called with "lock" after the file is opened, before it is locked.

    Raises:
        BusyError: another process holds the lock (its pid is in the message).
        StorageError: the lock file cannot be created or locked, or it was removed or
            replaced each time it was locked.
    """
    path = state_dir / LOCK_FILE
    try:
        make_dirs(state_dir)
    except OSError as e:
        raise StorageError(f"cannot open the lock file {path}: {e.strerror}") from e
    for _ in range(_TRIES):
        fd = _lock(path, what, fault)
        if fd is not None:
            break
    else:
        raise StorageError(
            f"cannot lock {path}: it was removed or replaced each of {_TRIES} times it was"
            " locked; stop what removes or replaces it"
        )
    with contextlib.suppress(OSError):  # only for the message of a refused run
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@contextlib.contextmanager
def held(state_dir: Path, what: str) -> Iterator[None]:
    """Hold the device's install lock while the body runs (see `acquire`)."""
    fd = acquire(state_dir, what)
    try:
        yield
    finally:
        # Releases the lock; the file stays (see the module's docstring).
        os.close(fd)  # (forked helpers that inherited it have ended)
