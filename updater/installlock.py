"""One install (or mark-good) at a time: the device's install lock, in the updater's words.

The lock is `bootctl.installlock`'s (abctl's verbs that change the boot state
take it too); here its refusals become the updater's errors.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from bootctl import errors as bootctl_errors
from bootctl import installlock
from bootctl.installlock import LOCK_FILE

from .errors import BusyError, DeviceError

__all__ = ["LOCK_FILE", "held"]


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
    try:
        fd = installlock.acquire(state_dir, what)
    except bootctl_errors.BusyError as e:
        raise BusyError(str(e)) from None
    except bootctl_errors.StorageError as e:
        raise DeviceError(str(e)) from e
    try:
        yield
    finally:
        os.close(fd)  # releases the lock (forked helpers that inherited it have ended)
