"""One install (or mark-good) at a time: an exclusive lock on a file in the state directory.

The lock is the kernel's (`flock`): it goes with the process that holds it, so a
lock left by a process that died is free for the next one at once. The holder
writes its pid into the file, only for the message of a run refused meanwhile.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from bootctl.atomicfile import make_dirs

from .errors import BusyError, DeviceError

LOCK_FILE = "install.lock"


def _holder(fd: int) -> str:
    """The pid written by the holder, or "unknown" (it may not have written it yet)."""
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        if text.isdigit():
            return text
    return "unknown"


@contextlib.contextmanager
def held(state_dir: Path, what: str) -> Iterator[None]:
    """Hold the device's install lock while the body runs.

    Args:
        state_dir: the updater's state directory (created, durably, if missing).
        what: what the caller does, for the refusal's message ("install", ...).

    Raises:
        BusyError: another process holds the lock (its pid is in the message).
        DeviceError: the lock file cannot be created or locked.
    """
    path = state_dir / LOCK_FILE
    try:
        make_dirs(state_dir)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise DeviceError(f"cannot open the lock file {path}: {e.strerror}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(
                f"cannot {what}: another install or mark-good (pid {_holder(fd)}) is running "
                f"on this device (it holds {path}); wait for it to end"
            ) from None
        except OSError as e:
            raise DeviceError(f"cannot lock {path}: {e.strerror}") from e
        with contextlib.suppress(OSError):  # only for the message of a refused run
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock (forked helpers that inherited it have ended)
