"""A bundle in a file or on a block device, read by ranges with `os.pread`.

`FileReader` is the byte source `bundle-tool info`/`verify` read through
(`reader.RangeReader`), and the base of the updater's file source, which
only changes how a failed read is reported.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import Self

from .errors import BundleError, BundleIOError, UsageError


def check_range(offset: int, length: int) -> None:
    """Refuse a negative offset or length (a caller's bug)."""
    if offset < 0 or length < 0:
        raise ValueError(f"invalid range: offset {offset}, length {length}")


class FileReader:
    """A bundle in a regular file or on a block device.

    A regular file is the bundle, exactly. A block device is a whole number of
    sectors, so it may hold bytes after the bundle's end: `size()` is then the
    room the device has, and `block_device` is True (the readers ignore the bytes
    after the end the header gives; docs/bundle-format.md).

    Args:
        path: The file or block device holding the bundle.

    Raises:
        UsageError: The path does not exist, cannot be opened, or is neither a
            regular file nor a block device.
    """

    CHUNK = 1 << 20

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = os.fspath(path)
        #: Bytes read from the file so far.
        self.bytes_fetched = 0
        #: The bundle is on a block device: `size()` is at least the bundle's size.
        self.block_device = False
        try:
            # What the path names is looked at before it is opened: opening a FIFO waits
            # for a writer (for ever), and opening some device nodes does something.
            self._check_kind(os.stat(self.path).st_mode)
            # O_NONBLOCK: a FIFO put in its place since does not block the open either
            # (it is then refused by its kind); cleared once the file is known.
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except FileNotFoundError as e:
            raise UsageError(f"bundle not found: {self.path}") from e
        except OSError as e:
            raise UsageError(f"cannot open bundle {self.path}: {e.strerror}") from e
        try:
            self._size = self._measure(fd)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    def _check_kind(self, mode: int) -> None:
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise UsageError(f"not a regular file or block device: {self.path}")

    def _measure(self, fd: int) -> int:
        """The size of the open file, or the capacity of the block device, now."""
        info = os.fstat(fd)
        self._check_kind(info.st_mode)
        if stat.S_ISBLK(info.st_mode):
            self.block_device = True
            return os.lseek(fd, 0, os.SEEK_END)
        return info.st_size

    def size(self) -> int:
        """Size of the file (or capacity of the block device) in bytes, as it was when opened."""
        return self._size

    def size_now(self) -> int:
        """Size of the file or block device in bytes now (it may have changed since)."""
        return self._measure(self._open_fd())

    def read(self, offset: int, length: int) -> Iterator[bytes]:
        """Yield exactly `length` bytes from `offset`, in chunks of at most `CHUNK` bytes.

        Raises:
            BundleError: The file ends before `offset + length`.
            BundleIOError: Reading the medium failed (as `_read_failed` says).
        """
        check_range(offset, length)
        pos, end = offset, offset + length
        while pos < end:
            want = min(self.CHUNK, end - pos)
            try:
                chunk = os.pread(self._open_fd(), want, pos)
            except OSError as e:
                raise self._read_failed(pos, e) from e
            if not chunk:
                raise self._ends_early(pos, end)
            self.bytes_fetched += len(chunk)
            pos += len(chunk)
            yield chunk

    def read_exact(self, offset: int, length: int) -> bytes:
        """Read a small range into one bytes object."""
        return b"".join(self.read(offset, length))

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill `view` with the bytes from `offset`, read straight into it.

        Raises:
            BundleError: The file ends before `offset + len(view)`.
            BundleIOError: Reading the medium failed.
        """
        check_range(offset, len(view))
        done = 0
        while done < len(view):
            try:
                got = os.preadv(self._open_fd(), [view[done:]], offset + done)
            except OSError as e:
                raise self._read_failed(offset + done, e) from e
            if not got:
                raise self._ends_early(offset + done, offset + len(view))
            self.bytes_fetched += got
            done += got

    def fileno(self) -> int:
        """The open file's descriptor (read the bundle through it, not by its path again)."""
        return self._open_fd()

    def _open_fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"read from a closed {type(self).__name__}")
        return self._fd

    def check_end(self, total_size: int) -> None:
        """Refuse a file whose size is no longer the signed total.

        Its size was compared with the total when the head was read, but a file
        may be cut short or grow while it is read (a copy still being written),
        and the updater does not read every byte (spans of zero blocks are
        written without being read), so it is caught here: `bundle-tool verify`
        and the updater call this once they read what they need. A block device
        only has to hold the bundle still: the bytes after its signed end (the
        rest of the last sector, or of the partition) are not the bundle's.

        Raises:
            BundleError: The size is no longer the signed total.
            Exception: Measuring failed (as `_read_failed` says).
        """
        try:
            now = self.size_now()
        except OSError as e:
            raise self._read_failed(total_size, e) from e
        if now < total_size:
            raise self._ends_early(now, total_size)
        if now != total_size and not self.block_device:
            raise BundleError(
                f"bundle changed while it was read: {self.path} has {now} bytes, "
                f"its signed size is {total_size}"
            )

    def _read_failed(self, pos: int, e: OSError) -> Exception:
        """The error a failed read raises (the updater reports a transport error)."""
        return BundleIOError(f"reading {self.path} at byte {pos} failed: {e.strerror}")

    def _ends_early(self, pos: int, end: int) -> BundleError:
        return BundleError(
            f"bundle ends early: {self.path} has {pos} bytes, {end} needed (the file is truncated)"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file descriptor; further reads raise ValueError."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
