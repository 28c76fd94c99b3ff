"""Power cuts for installer tests: a slot that loses whatever was not flushed.

Every write, flush and environment save is one "event"; after `budget` events
the power goes: the event is not carried out, and each slot's writes since its
last flush are undone, as a real medium would lose its volatile cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from bootctl.control import SlotControl
from updater.slotdev import FileSlot


class PowerCut(Exception):
    """The simulated power loss (never caught by the installer)."""


class Power:
    def __init__(self, budget: int | None = None) -> None:
        self.budget = budget
        self.events = 0
        self.slots: list[PowerCutSlot] = []

    def tick(self) -> None:
        self.events += 1
        if self.budget is not None and self.events > self.budget:
            for slot in self.slots:
                slot.lose_unflushed()
            raise PowerCut(f"power lost at event {self.events}")

    def opener(self) -> Callable[[str], FileSlot]:
        def open_slot(path: str) -> FileSlot:
            slot = PowerCutSlot(path, self)
            self.slots.append(slot)
            return slot

        return open_slot

    def watch_env(self, control: SlotControl) -> SlotControl:
        """Count every environment save as an event (cut before it, or after it)."""
        save = control.store.save

        def counted(*args: object, **kw: object) -> None:
            self.tick()
            save(*args, **kw)  # type: ignore[arg-type]

        control.store.save = counted  # type: ignore[method-assign]
        return control


class PowerCutSlot(FileSlot):
    def __init__(self, path: str, power: Power) -> None:
        super().__init__(path)
        self.power = power
        self.undo: list[tuple[int, bytes]] = []
        self.flushed_size = os.fstat(self._fd).st_size

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        self.power.tick()
        self.undo.append((offset, super().pread(offset, len(data))))
        super().pwrite(offset, data)

    def flush(self) -> None:
        self.power.tick()
        super().flush()
        self.undo.clear()
        self.flushed_size = os.fstat(self._fd).st_size

    def lose_unflushed(self) -> None:
        if self._fd < 0:
            return
        for offset, old in reversed(self.undo):
            FileSlot.pwrite(self, offset, old)
        os.ftruncate(self._fd, self.flushed_size)
        self.undo.clear()
