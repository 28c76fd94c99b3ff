"""Hashing the blocks to be written in a forked child, while this process goes on.

`sha256` releases the GIL only while it hashes one 4 KiB block; between blocks
the checking thread takes it back, and so do the threads that receive TLS records
and write spans, after each record and each write. On a small machine those
hand-offs cost as much as the hashing itself. `SpanDigests` moves the hashing
out: spans of data sit in slots of memory shared with one forked child, which
hashes them there and sends back the digests (32 bytes a block) through a pipe.
This process waits for them without holding the GIL, so receiving and writing
go on.

The slots form a ring: a span is read into a slot (straight from a file, or
copied from a stream), handed to the child, and written from that same slot
once its digests match, so each byte is checked where it is written from (and
a span from a file is copied by the kernel only). While the child hashes one
span, this process checks and writes the one before and reads the next. The
digests are compared here, with the signed ones. Should the child not start or
fail, the hashing is done here instead.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
from collections import deque

from bundle_tool import forked, verity
from bundle_tool.errors import BundleIOError

_LENGTH = 8


def _digest_shared(salt: bytes, shared: mmap.mmap, request: bytes) -> bytes:
    """In the child: the digests of `length` bytes of the shared buffer from `offset`."""
    offset = int.from_bytes(request[:_LENGTH], "little")
    length = int.from_bytes(request[_LENGTH:], "little")
    with memoryview(shared) as view:
        return verity.digest_blocks(salt, view[offset : offset + length])


class SpanDigests:
    """sha256(salt || block) of each 4096-byte block, computed by a forked child.

    Two ways to use it, from one thread at a time:

    * `digests(data)` copies `data` into the first slot, `span_bytes` at a time,
      and waits for its digests;
    * as a ring of `slots` slots: fill `view(k, n)`, `submit(k, n)`, and later
      `collect()` the digests of the oldest span submitted. A slot's bytes must
      stay as they are until its digests are collected (and, to write what was
      checked, until they are written from the slot).

    Use as a context manager: leaving it stops the child.
    """

    def __init__(self, salt: bytes, span_bytes: int, slots: int = 1) -> None:
        self.salt = salt
        self.span_bytes = span_bytes
        self.slots = slots
        self._pending: deque[tuple[int, int]] = deque()  # (slot, length) submitted
        self._worker: forked.Worker | None = None
        self._buffer: mmap.mmap | bytearray
        try:
            self._buffer = mmap.mmap(-1, span_bytes * slots)  # MAP_SHARED: the child sees it
            self._worker = forked.Worker(functools.partial(_digest_shared, salt, self._buffer))
        except OSError:
            if not isinstance(getattr(self, "_buffer", None), mmap.mmap):
                self._buffer = bytearray(span_bytes * slots)

    @property
    def pid(self) -> int | None:
        """The hashing child's process id; None once the hashing is done here, or stopped."""
        return self._worker.pid if self._worker is not None else None

    def view(self, slot: int, length: int) -> memoryview:
        """The first `length` bytes of slot `slot`, writable."""
        if not 0 <= slot < self.slots:
            raise ValueError(f"no slot {slot}: there are {self.slots}")
        if not 0 <= length <= self.span_bytes:
            raise ValueError(f"a slot holds at most {self.span_bytes} bytes, not {length}")
        start = slot * self.span_bytes
        return memoryview(self._buffer)[start : start + length]

    def submit(self, slot: int, length: int) -> None:
        """Have the first `length` bytes of slot `slot` hashed; `collect` gives the digests."""
        self.view(slot, length).release()  # the same checks
        self._pending.append((slot, length))
        if self._worker is not None:
            offset = slot * self.span_bytes
            try:
                self._worker.send(
                    offset.to_bytes(_LENGTH, "little") + length.to_bytes(_LENGTH, "little")
                )
            except BundleIOError:
                self._stop_worker()  # the child is gone: collect hashes here

    def collect(self) -> bytes:
        """The digests of the oldest span submitted and not yet collected."""
        slot, length = self._pending.popleft()
        if self._worker is not None:
            try:
                return self._worker.answer()
            except BundleIOError:
                self._stop_worker()  # the child is gone: hash this and the rest here
        with self.view(slot, length) as view:
            return verity.digest_blocks(self.salt, view)

    def digests(self, data: bytes | memoryview) -> bytes:
        """The digests of `data`, passed through the first slot."""
        out: list[bytes] = []
        with memoryview(data) as whole:
            for start in range(0, len(whole), self.span_bytes):
                piece = whole[start : start + self.span_bytes]
                with self.view(0, len(piece)) as slot:
                    slot[:] = piece
                self.submit(0, len(piece))
                out.append(self.collect())
        return b"".join(out)

    def _stop_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()

    def close(self) -> None:
        """Stop the child; the shared memory goes once no view of it is left."""
        self._stop_worker()
        if isinstance(self._buffer, mmap.mmap):
            with contextlib.suppress(BufferError):  # a view still held (a read in flight)
                self._buffer.close()

    def __enter__(self) -> SpanDigests:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
