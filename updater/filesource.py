"""Bundle sources on the device itself: a file or block device, and a forward-only stream.

`FileSource` reads any range of a regular file or block device (a USB stick's
bundle file, a bundle on a partition). `StdinSource` reads a pipe such as
standard input, which can only go forward: skipped bytes are read and dropped.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Iterator
from typing import BinaryIO, Self

from bundle_tool.errors import BundleError
from bundle_tool.filereader import FileReader, check_range

from .directio import AlignedReader
from .errors import TransportError
from .source import BundleSource, SequentialReader


class FileSource(FileReader, BundleSource):
    """A bundle in a regular file or on a block device, read with `os.pread`.

    The reading is `bundle_tool.filereader.FileReader`'s; a failed read is a
    transport error here (the medium failed, a stick was removed).

    Args:
        path: The file or block device holding the bundle.

    Raises:
        UsageError: The path does not exist, cannot be opened, or is neither a
            regular file nor a block device.
    """

    random_access = True

    def _read_failed(self, pos: int, e: OSError) -> TransportError:
        return TransportError(f"reading {self.path} at byte {pos} failed: {e.strerror}")

    def open_range(self, offset: int, length: int) -> SequentialReader:
        """Bytes [offset, offset + length) in order, each piece read straight into its buffer."""
        check_range(offset, length)
        return _FileRange(self, offset, offset + length)

    def __enter__(self) -> Self:
        return self


class _FileRange:
    """A range of a file, taken in order, with direct I/O where the file allows it.

    An image's data is read once, so it need not pass through the page cache:
    reading a cold 1 GiB bundle through it cost 0.14-2.14 s of system CPU on the
    machine of docs/benchmarks.md, against 0.04-0.05 s direct, and it evicts the
    running system's pages. The file is opened again through `/proc/self/fd`
    (the same file, even if its path has changed since) with `O_DIRECT`. A span
    on a block boundary of the file (an image's data in a bundle that pads it so,
    `Image.data_padding`) is read straight into the caller's aligned buffer;
    any other is copied out of an aligned buffer of the reader's. Where direct
    I/O is refused (or there is no /proc) it is read straight into the caller's
    buffer through the page cache, as `FileSource.read_into` does.
    """

    def __init__(self, source: FileSource, start: int, end: int) -> None:
        self._source = source
        self._pos = start
        self._end = end
        self._reader: AlignedReader | None = None
        self._tried = False
        # A read may still run in a reader thread when the range is closed: the
        # last of the two to let go of the lock closes the reader.
        self._lock = threading.Lock()
        self._closed = False

    def _direct(self) -> AlignedReader | None:
        if self._closed:
            raise ValueError("read from a closed range")
        if not self._tried:
            self._tried = True
            try:
                reader = AlignedReader(f"/proc/self/fd/{self._source._open_fd()}")
            except OSError:
                return None  # no /proc: read through the page cache
            if reader.direct:
                self._reader = reader
            else:
                reader.close()
        return self._reader

    def take_into(self, view: memoryview) -> None:
        with self._lock:
            try:
                self._take_into(view)
            finally:
                if self._closed:
                    self._release()

    def _take_into(self, view: memoryview) -> None:
        if self._pos + len(view) > self._end:
            raise ValueError(f"the range ends at byte {self._end}")
        reader = self._direct()
        if reader is None:
            self._source.read_into(self._pos, view)
        else:
            done = 0
            try:
                if not reader.read_into(self._pos, view):
                    for piece in reader.chunks(self._pos, len(view)):
                        view[done : done + len(piece)] = piece
                        done += len(piece)
            except EOFError as e:
                raise self._source._ends_early(e.args[0], self._pos + len(view)) from e
            except OSError as e:
                raise self._source._read_failed(self._pos + done, e) from e
            self._source.bytes_fetched += len(view)
        self._pos += len(view)

    def skip(self, length: int) -> None:
        if self._pos + length > self._end:
            raise ValueError(f"the range ends at byte {self._end}")
        self._pos += length

    def close(self) -> None:
        self._closed = True
        if self._lock.acquire(blocking=False):  # else the read in flight closes it
            try:
                self._release()
            finally:
                self._lock.release()

    def _release(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class StdinSource(BundleSource):
    """A bundle read forward only from a stream, such as standard input or a pipe.

    Reads must come in increasing order of offset; bytes between the end of one
    read and the start of the next are read and dropped. `check_end` reads on to
    the bundle's signed end and refuses trailing bytes (`at_eof` tells whether
    the stream has ended). A non-blocking stream (O_NONBLOCK set by whoever made
    the pipe) is waited on until it has bytes, as a blocking one would be.

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

    def _read_stream(self, want: int) -> bytes:
        """Up to `want` bytes of the stream, at least one; b"" only at its end.

        Raises:
            OSError: Reading or waiting failed.
        """
        while True:
            try:
                chunk = self._stream.read(want)
            except BlockingIOError:  # a non-blocking stream with nothing yet
                chunk = None
            if chunk is not None:
                return chunk
            poller = select.poll()
            poller.register(self._stream.fileno(), select.POLLIN)
            poller.poll()  # bytes, the end or an error: the next read tells which

    def _pull(self, want: int) -> bytes:
        """Return up to `want` bytes (fewer only at end of stream) and advance."""
        if self._pending:
            chunk, self._pending = self._pending[:want], self._pending[want:]
        else:
            try:
                chunk = self._read_stream(want)
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
        check_range(offset, length)
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
            self._pending = self._read_stream(1)
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
