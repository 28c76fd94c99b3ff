"""Power cuts for installer tests: slots and boot folders that lose whatever was not
flushed, and directory entries that lose what was not fsynced.

Every slot write and flush, environment save, state file write, and boot-folder
file write, file sync, folder sync, rename and removal is one "event";
`Power.kinds` names each. A boot folder loses the bytes of files not synced, and
every name change (a new file, a rename, a removal) since its last folder sync,
as a file system with a volatile cache may. With a budget of N the power goes
right after the N-th event (with 0, before the first): each slot's writes since its last
flush are undone, as a real medium would lose its volatile cache, also on a
slot the installer has already closed, and every later event fails without
effect. A budget of the total number of events cuts right after the last one.

A filesystem keeps a new name (a created directory or file, a rename) only once its
directory was fsynced. `Power.watch_entries` follows the directories and files made and
the renames done below a root while an install runs (the real calls, watched);
a cut undoes each one whose directory was not fsynced since: a directory made
disappears with what it holds, a file made disappears, a renamed file is back to
what it held before.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from bootctl.control import SlotControl
from updater.bootfiles import BootDir
from updater.slotdev import FileSlot
from updater.statedir import StateDir

T = TypeVar("T")


class PowerCut(Exception):
    """The simulated power loss (never caught by the installer)."""


class Power:
    """Counts events; with `budget`, cuts the power once that many were carried out."""

    def __init__(self, budget: int | None = None) -> None:
        self.budget = budget
        self.events = 0
        self.kinds: list[str] = []  # each event: "write", "flush", "env" or "state FILE"
        self.off = False
        self.slots: list[PowerCutSlot] = []
        self.folders: list[PowerCutBootDir] = []
        self.entries: DirectoryEntries | None = None

    def _cut_due(self) -> bool:
        return self.off or (self.budget is not None and self.events >= self.budget)

    def _cut(self) -> None:
        if not self.off:
            self.off = True
            for slot in self.slots:
                slot.lose_unflushed()
            for folder in reversed(self.folders):
                folder.lose_unflushed()
            if self.entries is not None:
                self.entries.lose_unsynced()
        raise PowerCut(f"power lost after event {self.events}")

    def event(self, kind: str, action: Callable[[], T]) -> T:
        """Carry out one event, unless the power is already gone; cut after it if due."""
        if self._cut_due():
            self._cut()
        result = action()
        self.events += 1
        self.kinds.append(kind)
        if self._cut_due():
            self._cut()
        return result

    def boot_dir_opener(self) -> Callable[[Path], BootDir]:
        def open_boot_dir(path: Path) -> BootDir:
            folder = PowerCutBootDir(path, self)
            self.folders.append(folder)
            return folder

        return open_boot_dir

    def opener(self) -> Callable[[str], FileSlot]:
        def open_slot(path: str) -> FileSlot:
            slot = PowerCutSlot(path, self)
            self.slots.append(slot)
            return slot

        return open_slot

    def watch_env(self, control: SlotControl) -> SlotControl:
        """Count every environment save as an event (a save is atomic: whole or not at all)."""
        save = control.store.save

        def counted(*args: object, **kw: object) -> None:
            self.event("env", lambda: save(*args, **kw))  # type: ignore[arg-type]

        control.store.save = counted  # type: ignore[method-assign]
        return control

    def watch_state(self, state: StateDir) -> None:
        """Count every state file write as an event (each replaces its file whole)."""
        save = state._save

        def counted(name: str, value: object) -> None:
            self.event(f"state {name}", lambda: save(name, value))

        state._save = counted  # type: ignore[method-assign]

    @contextlib.contextmanager
    def watch_entries(self, root: Path) -> Iterator[DirectoryEntries]:
        """While the body runs, follow directory entries made below `root` (see the module)."""
        self.entries = DirectoryEntries(root)
        with self.entries.watching():
            yield self.entries


class DirectoryEntries:
    """New directories and renames below `root` whose directory was not fsynced since."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        #: ("dir", path, None) for a directory made; ("file", path, old bytes or None) for a
        #: rename onto path.
        self.unsynced: list[tuple[str, Path, bytes | None]] = []

    def _below(self, path: Any) -> Path | None:
        p = Path(os.fsdecode(path)).resolve()
        return p if p.is_relative_to(self.root) else None

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        mkdir, replace, rename, fsync, open_ = os.mkdir, os.replace, os.rename, os.fsync, os.open

        def opened(path: Any, flags: int, *args: Any, **kw: Any) -> int:
            p = self._below(path) if flags & os.O_CREAT else None
            new = p is not None and not os.path.lexists(p)
            fd = open_(path, flags, *args, **kw)
            if new and p is not None:
                self.unsynced.append(("file", p, None))  # a new name, gone unless synced
            return fd

        def made(path: Any, *args: Any, **kw: Any) -> None:
            mkdir(path, *args, **kw)
            if (p := self._below(path)) is not None:
                self.unsynced.append(("dir", p, None))

        def moved(move: Callable[..., None]) -> Callable[..., None]:
            def onto(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
                p = self._below(dst)
                old = p.read_bytes() if p is not None and p.is_file() else None
                move(src, dst, *args, **kw)
                if p is not None:
                    self.unsynced.append(("file", p, old))

            return onto

        def synced(fd: int) -> None:
            fsync(fd)
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                directory = Path(os.readlink(f"/proc/self/fd/{fd}"))
                self.unsynced = [e for e in self.unsynced if e[1].parent != directory]

        os.mkdir, os.replace, os.rename, os.fsync = made, moved(replace), moved(rename), synced
        os.open = opened
        try:
            yield
        finally:
            os.mkdir, os.replace, os.rename, os.fsync = mkdir, replace, rename, fsync
            os.open = open_

    def lose_unsynced(self) -> None:
        """Undo, newest first, every entry whose directory was not fsynced."""
        for kind, path, old in reversed(self.unsynced):
            if kind == "dir":
                shutil.rmtree(path, ignore_errors=True)
            elif old is None:
                path.unlink(missing_ok=True)
            elif path.parent.is_dir():
                path.write_bytes(old)
        self.unsynced.clear()


class PowerCutSlot(FileSlot):
    """A file-backed slot that remembers how to undo its writes since the last flush."""

    def __init__(self, path: str, power: Power) -> None:
        super().__init__(path)
        self.power = power
        self.undo: list[tuple[int, bytes]] = []
        self.flushed_size = os.fstat(self._fd).st_size

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        def write() -> None:
            self.undo.append((offset, FileSlot.pread(self, offset, len(data))))
            FileSlot.pwrite(self, offset, data)

        self.power.event("write", write)

    def flush(self) -> None:
        def flush() -> None:
            FileSlot.flush(self)
            self.undo.clear()
            self.flushed_size = os.fstat(self._fd).st_size

        self.power.event("flush", flush)

    def lose_unflushed(self) -> None:
        """Undo the writes since the last flush, through a new descriptor if closed."""
        fd = self._fd if self._fd >= 0 else os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            for offset, old in reversed(self.undo):
                done = 0
                while done < len(old):
                    done += os.pwrite(fd, old[done:], offset + done)
            os.ftruncate(fd, self.flushed_size)
        finally:
            if fd != self._fd:
                os.close(fd)
        self.undo.clear()


class PowerCutBootDir(BootDir):
    """A boot folder that remembers what a power cut would leave of it.

    What is durable is the folder as of its last folder sync (or as found), each
    file cut to the bytes synced of it by then. A cut brings that back: names
    made, renamed or removed since are undone, unsynced bytes lost.
    """

    def __init__(self, path: Path, power: Power) -> None:
        super().__init__(path)
        self.power = power
        self.durable: dict[str, bytes] = {}
        self.synced: dict[str, int] = {}  # bytes synced of each file this folder wrote
        self.dirty = False

    def _now(self) -> dict[str, bytes]:
        if not self.path.is_dir():
            return {}
        return {
            p.name: p.read_bytes()[: self.synced.get(p.name)]
            for p in self.path.iterdir()
            if p.is_file()
        }

    def _changed(self, kind: str, action: Callable[[], None]) -> None:
        self.dirty = True
        self.power.event(kind, action)

    def prepare(self) -> None:
        self.power.event("boot mkdir", super().prepare)  # durable when it returns
        self.durable = self._now()

    def create(self, name: str) -> None:
        self.synced[name] = 0
        self._changed("boot create", lambda: BootDir.create(self, name))

    def append(self, name: str, data: bytes | memoryview) -> None:
        self._changed("boot write", lambda: BootDir.append(self, name, data))

    def sync(self, name: str) -> None:
        def sync() -> None:
            BootDir.sync(self, name)
            self.synced[name] = (self.path / name).stat().st_size

        self.power.event("boot sync", sync)

    def sync_dir(self) -> None:
        def sync_dir() -> None:
            BootDir.sync_dir(self)
            self.durable = self._now()
            self.dirty = False

        self.power.event("boot sync-dir", sync_dir)

    def rename(self, old: str, new: str) -> None:
        self.synced[new] = self.synced.pop(old, 0)
        self._changed("boot rename", lambda: BootDir.rename(self, old, new))

    def remove(self, name: str) -> None:
        self._changed("boot remove", lambda: BootDir.remove(self, name))

    def lose_unflushed(self) -> None:
        """Bring the folder back to what was durable (nothing to do after a folder sync)."""
        self.close()
        if not self.dirty:
            return
        for p in self.path.iterdir():
            if p.is_file() and p.name not in self.durable:
                p.unlink()
        for name, data in self.durable.items():
            (self.path / name).write_bytes(data)
        self.dirty = False
