"""One install (or change of the boot state) at a time: the device's install lock.

The lock is an exclusive `flock` on `install.lock` in the updater's state
directory. It goes with the process that holds it, so a lock left by a process
that died is free for the next one at once. The holder writes its pid into the
file, only for the message of a run refused meanwhile.

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

from .atomicfile import make_dirs
from .errors import BusyError, StorageError

__all__ = ["LOCK_FILE", "acquire", "held"]

LOCK_FILE = "install.lock"


def _holder(fd: int) -> str:
    """The pid written by the holder, or "unknown" (it may not have written it yet)."""
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        if text.isdigit():
            return text
    return "unknown"


def acquire(state_dir: Path, what: str) -> int:
    """Take the device's install lock without waiting; the open descriptor that holds it.

    Closing the descriptor releases the lock.

    Args:
        state_dir: the updater's state directory (created, durably, if missing).
        what: what the caller does, for the refusal's message ("install", ...).

    Raises:
        BusyError: another process holds the lock (its pid is in the message).
        StorageError: the lock file cannot be created or locked.
    """
    path = state_dir / LOCK_FILE
    try:
        make_dirs(state_dir)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise StorageError(f"cannot open the lock file {path}: {e.strerror}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
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
        os.close(fd)  # releases the lock (forked helpers that inherited it have ended)
