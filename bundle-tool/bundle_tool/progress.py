"""Progress of long steps: one report type, and the one display `bundle-tool` and `updater` share.

Library code reports through a callback (`ProgressCallback`) and never prints;
the command lines show the reports with `ProgressDisplay`: a one-line bar on a
terminal that fits its width, JSON lines with `--json` (the updater), or nothing.
Every size on the bar is in MiB.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TextIO

MiB = 1 << 20


@dataclass(frozen=True)
class Progress:
    """One progress report.

    Attributes:
        phase: what is being done: "hashing" (create writes as it hashes) or
            "verifying" (bundle-tool); "tree", "index", "data", "boot-files",
            "read-back" or "switch" (the updater).
        done: what is done of this phase so far, in bytes (the updater's
            "boot-files": files written of the boot folder; "switch": 0 of 1).
        total: the size of this phase in the same unit.
        fetched: bytes read from the source so far (network or medium), where
            that is worth showing (the updater).
        reused: image bytes kept on the target or copied from the active slot.
    """

    phase: str
    done: int
    total: int
    fetched: int | None = None
    reused: int | None = None


ProgressCallback = Callable[[Progress], None]


def _mib(n: float) -> str:
    return f"{n / MiB:.1f}"


#: Phases not counted in bytes: what their `done` and `total` count (None: one step).
COUNTED_IN = {"boot-files": "files", "switch": None}


def render_bar(p: Progress, width: int, rate: float | None = None) -> str:
    """The bar for `p` in at most `width - 1` columns (the last column would wrap).

    The parts, from the first to go when the line is narrow: the bar itself,
    the rate, what was reused, what was fetched, the sizes; phase and percentage stay.
    For example: `data  73% |#####   | 2.0/2.7 MiB  1.1 MiB/s  fetched 2.0 MiB  reused 0.0 MiB`.
    A phase counted in files shows `1/2 files` and no rate; one of a single step
    (the updater's "switch") shows its name alone, with no percentage, bar or sizes.
    """
    percent = p.done * 100 // p.total if p.total else 100
    step = p.phase in COUNTED_IN and COUNTED_IN[p.phase] is None
    head = p.phase if step else f"{p.phase} {percent:3d}%"
    if p.phase not in COUNTED_IN:
        sizes: str | None = f"{_mib(p.done)}/{_mib(p.total)} MiB"
        rate_part = f"{_mib(rate)} MiB/s" if rate is not None else None
    else:
        unit = COUNTED_IN[p.phase]
        sizes = f"{p.done}/{p.total} {unit}" if unit else None
        rate_part = None
    fetched = f"fetched {_mib(p.fetched)} MiB" if p.fetched is not None else None
    reused = f"reused {_mib(p.reused)} MiB" if p.reused is not None else None
    tail = [part for part in (sizes, rate_part, fetched, reused) if part]
    room = width - 1
    for part in (rate_part, reused, fetched, sizes):  # what goes first when narrow
        if len(f"{head} {'  '.join(tail)}") <= room:
            break
        if part:
            tail.remove(part)
    line = f"{head} {'  '.join(tail)}".rstrip()
    bar_width = room - len(line) - 4  # " |" and "| "
    if bar_width >= 10 and not step:
        filled = bar_width * percent // 100
        bar = "#" * filled + " " * (bar_width - filled)
        line = f"{head} |{bar}| {'  '.join(tail)}".rstrip()
    return line[:room]


class ProgressDisplay:
    """Shows progress reports: a bar on a terminal, JSON lines with `json_lines`, else nothing.

    A bar is redrawn when its percentage or phase changes; `close` clears it, so the
    next line starts at the margin. JSON lines go to standard output, at most one per
    percent of each phase. A closed output (`| head -1`) stops the display, never the
    work it shows.

    Args:
        json_lines: print `{"event": "progress", ...}` lines instead of a bar.
        bar: draw a bar when the stream is a terminal.
        stream: where the bar goes (default standard error).
    """

    def __init__(self, *, json_lines: bool = False, bar: bool = True, stream: TextIO | None = None):
        self.json_lines = json_lines
        self.stream = stream or sys.stderr
        self.bar = bar and not json_lines and self.stream.isatty()
        self.closed = False
        self._last: tuple[str, int] | None = None
        self._phase_start = time.monotonic()
        self._drawn = False

    def __call__(self, p: Progress) -> None:
        if self.closed or not (self.json_lines or self.bar):
            return
        step = (p.phase, p.done * 100 // p.total if p.total else 100)
        if step == self._last:
            return
        if self._last is None or self._last[0] != p.phase:
            self._phase_start = time.monotonic()
        self._last = step
        try:
            if self.json_lines:
                print(json.dumps({"event": "progress", **asdict(p)}), flush=True)
            else:
                self._draw(p)
        except BrokenPipeError:
            self.closed = True  # nobody reads: the work goes on without a display

    def _draw(self, p: Progress) -> None:
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError):
            width = 0
        width = width or 80  # a terminal that does not say its size
        elapsed = time.monotonic() - self._phase_start
        rate = p.done / elapsed if elapsed > 0.05 and p.done else None
        line = render_bar(p, width, rate)
        self._drawn = True  # first: a signal in the write leaves part of the bar to clear
        self.stream.write(f"\r{line}\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        """Clear the bar (the next output starts on a clean line)."""
        if self._drawn and not self.closed:
            try:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            except BrokenPipeError:
                pass
        self._drawn = False
