"""SIGINT and SIGTERM as an exception, and the sections they must not cut in two.

The command line turns both signals into `Interrupted` (`raised`), so an install
ends like any other failure: recorded, one line, a distinct exit status. The
steps that change the boot environment or the slot records run `held`: a signal
that comes meanwhile takes effect right after the section, never inside it.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

from bootctl.cliboundary import SIGNALS, signals_raised

from .errors import Interrupted

__all__ = ["SIGNALS", "held", "raised"]

#: Sections being held (nested `held`), and the first signal that came meanwhile.
_holding = 0
_pending: int | None = None


def _raise(signum: int, _frame: FrameType | None) -> None:
    global _pending  # noqa: PLW0603 - one process-wide disposition
    if _holding:
        _pending = _pending or signum
        return
    raise Interrupted(signum)


def raised() -> contextlib.AbstractContextManager[None]:
    """While the body runs, SIGINT and SIGTERM raise `Interrupted` (in the main thread)."""
    return signals_raised(_raise)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Delay SIGINT and SIGTERM until the body has run; then the first one takes effect.

    The signals are blocked in this thread, and `raised`'s handler, which may run
    for a signal another thread received, keeps the signal for the end.

    Raises:
        Interrupted: (on leaving) a signal came while the body ran, with `raised` in force.
    """
    global _holding, _pending  # noqa: PLW0603 - one process-wide disposition
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    _holding += 1
    try:
        yield
    finally:
        _holding -= 1
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a blocked signal lands here
        if not _holding and _pending is not None:
            signum, _pending = _pending, None
            raise Interrupted(signum)
