"""Direct I/O: a slot's and a bundle's bytes moved without going through the page cache.

A buffered write copies each byte into the page cache, and the kernel then
spends as much again flushing those pages, and dropping them before the
read-back; a buffered read of a cold bundle fills the cache the same way. On
the 2-core machine of docs/benchmarks.md, writing 1 GiB with an fsync every
64 MiB cost 0.7-2.1 s of system CPU buffered and 0.04-0.05 s with `O_DIRECT`;
reading it back 0.4-0.7 s against 0.03-0.04 s. It also leaves the running system's
own pages in memory, where a buffered install of a large image evicts them.

Direct I/O wants offsets, lengths and memory aligned to the device's logical
block; `ALIGN` (4096) suits every device, and every slot offset the installer
uses is a multiple of it. Memory from `aligned_buffer` is page-aligned; other
bytes (small writes: the hash area, a boot file's blocks) go through the page
cache, where the installer reads the hash area again. A file system that refuses
`O_DIRECT` (some FUSE file systems; tmpfs before Linux 6.6) is read and written
through the page cache as before: `open_direct` returns None there, and
`DirectWriter` notes when a write is refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
from collections.abc import Iterator

ALIGN = 4096
#: The largest piece an `AlignedReader` reads at a time.
CHUNK = 1 << 20


def aligned_buffer(size: int) -> mmap.mmap:
    """`size` bytes of anonymous memory, page-aligned (so fit for direct I/O)."""
    return mmap.mmap(-1, max(size, ALIGN))


class Zeros:
    """Zero blocks in aligned memory (so written directly), made on first use.

    Args:
        size: the most bytes of zeros asked for at a time.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._buffer: mmap.mmap | None = None

    def take(self, length: int) -> memoryview:
        """`length` (at most `size`) bytes of zeros."""
        if not 0 <= length <= self.size:
            raise ValueError(f"at most {self.size} bytes of zeros, not {length}")
        if self._buffer is None:
            self._buffer = aligned_buffer(self.size)
        return memoryview(self._buffer)[:length]

    def close(self) -> None:
        if self._buffer is not None:
            # A failed write's traceback may still hold a view of it: it goes with them.
            with contextlib.suppress(BufferError):
                self._buffer.close()
            self._buffer = None


def open_direct(path: str, flags: int) -> int | None:
    """`path` opened with `flags | O_DIRECT`, or None where its file system refuses that.

    Raises:
        OSError: opening failed for another reason (the caller reports it).
    """
    try:
        return os.open(path, flags | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return None
        raise


def is_aligned(offset: int, length: int) -> bool:
    return offset % ALIGN == 0 and length % ALIGN == 0


def address(view: memoryview) -> int | None:
    """Where a writable buffer's bytes start in memory; None for a read-only one."""
    try:
        probe = ctypes.c_char.from_buffer(view)
    except (TypeError, ValueError):  # read-only (a bytes object), or empty
        return None
    try:
        return ctypes.addressof(probe)
    finally:
        del probe  # the export of the buffer ends here


class DirectWriter:
    """Writes through a descriptor opened with `O_DIRECT`, where the request allows it.

    A request is direct when its offset, its length and its memory are aligned
    (a span of the hashing ring, a buffer of zeros); any other (a `bytes`
    object, such as a block of the hash area) is left to the page cache.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        #: Set once the file system refused an aligned direct write: use the page cache.
        self.refused = False

    def pwrite(self, offset: int, data: bytes | memoryview) -> bool:
        """Write `data` at `offset` directly; False where this request is not for direct I/O.

        False leaves the bytes to the caller to write through the page cache
        (rewriting any part written here): the request is not aligned, or the
        file system refused it (`refused` is set then).

        Raises:
            OSError: the write failed (no space, a failing medium).
        """
        view = memoryview(data).cast("B")
        if not is_aligned(offset, len(view)) or not view:
            return False
        start = address(view)
        if start is None or start % ALIGN:
            return False
        done = 0
        try:
            while done < len(view):
                done += os.pwrite(self.fd, view[done:], offset + done)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self.refused = True
            return False
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class AlignedReader:
    """Reads ranges of a file into one aligned buffer: directly where the file allows it.

    Args:
        path: the file or block device.
        chunk: the largest piece handed out at a time (a multiple of `ALIGN`).

    Raises:
        OSError: the file cannot be opened.
    """

    def __init__(self, path: str, chunk: int = CHUNK) -> None:
        self.path = path
        self.chunk = chunk
        fd = open_direct(path, os.O_RDONLY)
        #: Whether reads bypass the page cache.
        self.direct = fd is not None
        self.fd = fd if fd is not None else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._buffer = aligned_buffer(chunk + 2 * ALIGN)
        except BaseException:
            os.close(self.fd)
            raise

    def chunks(self, offset: int, length: int) -> Iterator[memoryview]:
        """The bytes [offset, offset + length) in pieces of at most `chunk` bytes.

        Each piece is only valid until the next one is taken.

        Raises:
            EOFError: the file ends before offset + length (at the offset given).
            OSError: a read failed (its `filename` is unset; the caller names the place).
        """
        end = offset + length
        pos = offset
        whole = memoryview(self._buffer)
        try:
            while pos < end:
                lead = pos % ALIGN if self.direct else 0
                want = min(self.chunk, end - pos)
                span = -(-(lead + want) // ALIGN) * ALIGN if self.direct else want
                got = self._read(whole[:span], pos - lead)
                if got <= lead:
                    raise EOFError(pos)
                have = min(got - lead, want)
                yield whole[lead : lead + have]
                pos += have
        finally:
            whole.release()

    def read_into(self, offset: int, view: memoryview) -> bool:
        """Fill `view` with the bytes from `offset`, read straight into it; False if it cannot be.

        Straight means by direct I/O with no copy: the offset, the length and the
        memory must be aligned, and the file read directly. False reads nothing:
        take the bytes by `chunks` then.

        Raises:
            EOFError: the file ends before offset + len(view) (at the offset where it ends).
            OSError: a read failed.
        """
        if not self.direct or not view or not is_aligned(offset, len(view)):
            return False
        start = address(view)
        if start is None or start % ALIGN:
            return False
        got = self._read(view, offset)
        if got < len(view):
            raise EOFError(offset + got)
        return True

    def _read(self, view: memoryview, offset: int) -> int:
        """Fill as much of `view` as the file holds from `offset`; the count read."""
        done = 0
        while done < len(view):
            try:
                got = os.preadv(self.fd, [view[done:]], offset + done)
            except OSError as e:
                if e.errno != errno.EINVAL or not self.direct:
                    raise
                self._go_buffered()  # refused: read this and the rest through the page cache
                got = os.preadv(self.fd, [view[done:]], offset + done)
            if not got:
                break
            done += got
            if self.direct and done % ALIGN:
                break  # a direct read ends short only at the end of the file
        return done

    def _go_buffered(self) -> None:
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self.direct = False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(BufferError):  # a read in flight: the buffer goes with it
            self._buffer.close()

    def __enter__(self) -> AlignedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
