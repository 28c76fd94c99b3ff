"""Bundle sources on the device itself: a file or block device, and a forward-only stream.

`FileSource` reads any range of a regular file or block device (a USB stick's
bundle file, a bundle on a partition). `StdinSource` reads a pipe such as
standard input, which can only go forward: skipped bytes are read and dropped.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import BinaryIO, Self

from bundle_tool.errors import BundleError

from .errors import TransportError, UsageError
from .source import BundleSource, SequentialReader


def _check_range(offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise ValueError(f"invalid range: offset {offset}, length {length}")


class FileSource(BundleSource):
    """A bundle in a regular file or on a block device, read with `os.pread`.

    Args:
        path: The file or block device holding the bundle.

    Raises:
        UsageError: The path does not exist, cannot be opened, or is neither a
            regular file nor a block device.
    """

    random_access = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = os.fspath(path)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise UsageError(f"bundle not found: {self.path}") from e
        except OSError as e:
            raise UsageError(f"cannot open bundle {self.path}: {e.strerror}") from e
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISREG(mode):
                self._size = os.fstat(fd).st_size
            elif stat.S_ISBLK(mode):
                self._size = os.lseek(fd, 0, os.SEEK_END)
            else:
                raise UsageError(f"not a regular file or block device: {self.path}")
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    def size(self) -> int:
        """Size of the file or block device in bytes, as it was when opened."""
        return self._size

    def read(self, offset: int, length: int) -> Iterator[bytes]:
        """Yield exactly `length` bytes from `offset`, in chunks of at most `CHUNK` bytes.

        Raises:
            BundleError: The file ends before `offset + length`.
            TransportError: Reading the medium failed (I/O error, stick removed).
        """
        _check_range(offset, length)
        pos, end = offset, offset + length
        while pos < end:
            fd = self._fd
            if fd is None:
                raise ValueError("read from a closed FileSource")
            want = min(self.CHUNK, end - pos)
            try:
                chunk = os.pread(fd, want, pos)
            except OSError as e:
                raise self._read_failed(pos, e) from e
            if not chunk:
                raise self._ends_early(pos, end)
            self.bytes_fetched += len(chunk)
            pos += len(chunk)
            yield chunk

    def _read_failed(self, pos: int, e: OSError) -> TransportError:
        return TransportError(f"reading {self.path} at byte {pos} failed: {e.strerror}")

    def _ends_early(self, pos: int, end: int) -> BundleError:
        return BundleError(
            f"bundle ends early: {self.path} has {pos} bytes, {end} needed (the file is truncated)"
        )

    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill `view` with the bytes from `offset`, read straight into it.

        Raises:
            BundleError: The file ends before `offset + len(view)`.
            TransportError: Reading the medium failed.
        """
        _check_range(offset, len(view))
        done = 0
        while done < len(view):
            fd = self._fd
            if fd is None:
                raise ValueError("read from a closed FileSource")
            try:
                got = os.preadv(fd, [view[done:]], offset + done)
            except OSError as e:
                raise self._read_failed(offset + done, e) from e
            if not got:
                raise self._ends_early(offset + done, offset + len(view))
            self.bytes_fetched += got
            done += got

    def open_range(self, offset: int, length: int) -> SequentialReader:
        """Bytes [offset, offset + length) in order, each piece read straight into its buffer."""
        _check_range(offset, length)
        return _FileRange(self, offset, offset + length)

    def __enter__(self) -> Self:
        return self

    def close(self) -> None:
        """Close the file descriptor; further reads raise ValueError."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _FileRange:
    """A range of a file, taken in order with `FileSource.read_into` (no copy in this process)."""

    def __init__(self, source: FileSource, start: int, end: int) -> None:
        self._source = source
        self._pos = start
        self._end = end

    def take_into(self, view: memoryview) -> None:
        if self._pos + len(view) > self._end:
            raise ValueError(f"the range ends at byte {self._end}")
        self._source.read_into(self._pos, view)
        self._pos += len(view)


class StdinSource(BundleSource):
    """A bundle read forward only from a stream, such as standard input or a pipe.

    Reads must come in increasing order of offset; bytes between the end of one
    read and the start of the next are read and dropped. `check_end` reads on to
    the bundle's signed end and refuses trailing bytes (`at_eof` tells whether
    the stream has ended).

    Args:
        stream: A binary stream (`sys.stdin.buffer`, an opened FIFO).
        name: How messages name the stream.
        close_stream: Whether `close` also closes the stream.
    """

    random_access = False

    def __init__(
        self, stream: BinaryIO, *, name: str = "standard input", close_stream: bool = False
    ):
        super().__init__()
        self._stream = stream
        self._name = name
        self._close_stream = close_stream
        self._pos = 0
        self._pending = b""  # bytes read by at_eof() and not yet handed out

    @property
    def position(self) -> int:
        """Offset of the next byte the stream will deliver."""
        return self._pos

    def size(self) -> int | None:
        """A stream's size is unknown: always None."""
        return None

    def _pull(self, want: int) -> bytes:
        """Return up to `want` bytes (fewer only at end of stream) and advance."""
        if self._pending:
            chunk, self._pending = self._pending[:want], self._pending[want:]
        else:
            try:
                chunk = self._stream.read(want)
            except OSError as e:
                raise TransportError(
                    f"reading {self._name} at byte {self._pos} failed: {e.strerror}"
                ) from e
            self.bytes_fetched += len(chunk)
        if not chunk:
            raise BundleError(f"bundle ends early: {self._name} ended after {self._pos} bytes")
        self._pos += len(chunk)
        return chunk

    def read(self, offset: int, length: int) -> Iterator[bytes]:
        """Skip forward to `offset`, then yield exactly `length` bytes in chunks.

        Raises:
            ValueError: `offset` is before the end of the previous read.
            BundleError: The stream ends before `offset + length`.
            TransportError: Reading the stream failed.
        """
        _check_range(offset, length)
        if offset < self._pos:
            raise ValueError(
                f"{self._name} only reads forward: offset {offset} is before position {self._pos}"
            )
        self._skip_to(offset)
        end = offset + length
        while self._pos < end:
            yield self._pull(min(self.CHUNK, end - self._pos))

    def _skip_to(self, offset: int) -> None:
        while self._pos < offset:
            self._pull(min(self.CHUNK, offset - self._pos))

    def check_end(self, total_size: int) -> None:
        """Read on to `total_size` (artifacts after the images), then refuse any byte after it.

        Raises:
            BundleError: The stream ends before `total_size`, or goes on after it.
            TransportError: Reading the stream failed.
        """
        self._skip_to(total_size)
        if not self.at_eof():
            raise BundleError("bundle has bytes the manifest does not account for")

    def at_eof(self) -> bool:
        """Whether the stream has no byte after the current position.

        Reads at most one byte ahead; a byte found is kept for the next `read`.

        Raises:
            TransportError: Reading the stream failed.
        """
        if self._pending:
            return False
        try:
            self._pending = self._stream.read(1)
        except OSError as e:
            raise TransportError(f"reading {self._name} failed: {e.strerror}") from e
        self.bytes_fetched += len(self._pending)
        return not self._pending

    def __enter__(self) -> Self:
        return self

    def close(self) -> None:
        """Close the stream if this source owns it."""
        if self._close_stream:
            self._stream.close()
