"""A slot's storage: a block device, or a plain file in tests and QEMU image builds."""

from __future__ import annotations

import contextlib
import os
import stat
from abc import ABC, abstractmethod
from pathlib import Path

from bootctl.atomicfile import sync_file

from .directio import DirectWriter, open_direct
from .errors import DeviceError


class SlotDevice(ABC):
    """Where one slot's bytes live. Every method raises DeviceError on failure.

    Writes are durable only after `flush`; a power cut loses whatever was
    written since the last flush (the installer is built for that).
    """

    #: The slot's name, as configured (in messages).
    path: str

    @property
    def reopen_path(self) -> str:
        """A path that opens the file this slot has open, in this process and in its
        forked children (the read-back reads the slot through it).

        The default is `path`; a slot holding a descriptor names that, so a name
        re-pointed after the slot was opened does not change what is read back.
        """
        return self.path

    @abstractmethod
    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        """Write `data` at `offset`."""

    @abstractmethod
    def pread(self, offset: int, length: int) -> bytes:
        """Read up to `length` bytes at `offset` (fewer at the end of a plain file)."""

    @abstractmethod
    def flush(self) -> None:
        """Make every write so far durable (fsync). A failure is final for this install."""

    @abstractmethod
    def capacity(self) -> int | None:
        """Bytes the slot can hold; None for a plain file, which grows."""

    def drop_cache(self) -> None:  # noqa: B027 - optional hook
        """Forget cached pages so the next reads come from the medium."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device."""

    def __enter__(self) -> SlotDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileSlot(SlotDevice):
    """A slot on a block device or in a plain file.

    Writes of whole 4 KiB blocks from aligned memory bypass the page cache
    (`directio`) where the file system allows it; reads, and any other write,
    go through it. Linux keeps the two coherent: a direct write drops the
    cached pages it covers.

    Args:
        path: the block device or file; a missing file is created, unless read-only.
        writable: False opens it for reading only (the running slot, read for delta).
    """

    def __init__(self, path: str, *, writable: bool = True) -> None:
        self.path = path
        try:
            self._fd = self._open(path, writable)
            mode = os.fstat(self._fd).st_mode
        except OSError as e:
            raise DeviceError(f"cannot open slot {path}: {e.strerror}") from e
        self._block = stat.S_ISBLK(mode)
        if not (self._block or stat.S_ISREG(mode)):
            os.close(self._fd)
            raise DeviceError(f"slot {path} is neither a block device nor a regular file")
        self._direct: DirectWriter | None = None
        self._refused: DirectWriter | None = None  # closed with the slot (a write may be in flight)
        if writable:
            # The same file as self._fd, even if `path` was re-pointed in between.
            with contextlib.suppress(OSError):  # no /proc: the page cache, as before
                direct = open_direct(f"/proc/self/fd/{self._fd}", os.O_WRONLY)
                if direct is not None:
                    self._direct = DirectWriter(direct)

    @staticmethod
    def _open(path: str, writable: bool) -> int:
        """The slot's descriptor; a missing file is created (writable), its name made durable.

        A file's name survives a power cut only once its directory was fsynced:
        without it, a cut after the switch could leave a boot environment that
        names a slot whose file is gone. A regular file found is flushed so too:
        an earlier run may have created it and been killed before that fsync.
        """
        if not writable:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                sync_file(Path(os.path.abspath(path)))
        except OSError:
            os.close(fd)
            raise
        return fd

    @property
    def reopen_path(self) -> str:
        if os.path.isdir("/proc/self/fd"):
            return f"/proc/self/fd/{self._fd}"  # inherited by a forked child, same number
        return self.path  # no /proc: the name, as opened

    def _fail(self, what: str, e: OSError) -> DeviceError:
        return DeviceError(f"slot {self.path}: {what} failed: {e.strerror}")

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        done = 0
        try:
            if self._direct is not None:
                if self._direct.pwrite(offset, view):
                    return
                if self._direct.refused:  # the page cache from now on
                    self._refused, self._direct = self._direct, None
            while done < len(view):
                done += os.pwrite(self._fd, view[done:], offset + done)
        except OSError as e:
            raise self._fail("write", e) from e

    def pread(self, offset: int, length: int) -> bytes:
        try:
            return os.pread(self._fd, length, offset)
        except OSError as e:
            raise self._fail("read", e) from e

    def flush(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as e:
            raise self._fail("fsync", e) from e

    def capacity(self) -> int | None:
        if not self._block:
            return None
        try:
            return os.lseek(self._fd, 0, os.SEEK_END)
        except OSError as e:
            raise self._fail("size query", e) from e

    def drop_cache(self) -> None:
        try:
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError as e:
            raise self._fail("cache drop", e) from e

    def close(self) -> None:
        for writer in (self._direct, self._refused):
            if writer is not None:
                writer.close()
        self._direct = self._refused = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
