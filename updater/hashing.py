"""Hashing the blocks to be written in a forked child, while this process goes on.

`sha256` releases the GIL only while it hashes one 4 KiB block; between blocks
the checking thread takes it back, and so do the threads that receive TLS records
and write spans, after each record and each write. On a small machine those
hand-offs cost as much as the hashing itself. `SpanDigests` moves the hashing
out: each span is copied into memory shared with one forked child, which hashes
it there and sends back the digests (32 bytes a block) through a pipe. This
process waits for them without holding the GIL, so receiving and writing go on.

The copy is what gets checked, and the bytes written are the caller's immutable
`bytes`, equal to the copy; the digests are compared here, with the signed ones.
Should the child not start or fail, the hashing is done here instead.
"""

from __future__ import annotations

import functools
import mmap

from bundle_tool import forked, verity
from bundle_tool.errors import BundleIOError

_LENGTH = 8


def _digest_shared(salt: bytes, shared: mmap.mmap, request: bytes) -> bytes:
    """In the child: the digests of the first `request` bytes of the shared buffer."""
    with memoryview(shared) as view:
        return verity.digest_blocks(salt, view[: int.from_bytes(request, "little")])


class SpanDigests:
    """`digests(data)`: sha256(salt || block) of each 4096-byte block of `data`.

    Computed by a forked child, `span_bytes` at a time, for one thread at a time
    (the buffer is shared). Use as a context manager: leaving it stops the child.
    """

    def __init__(self, salt: bytes, span_bytes: int) -> None:
        self.salt = salt
        self._shared: mmap.mmap | None = None
        self._worker: forked.Worker | None = None
        try:
            self._shared = mmap.mmap(-1, span_bytes)  # MAP_SHARED: the child sees the copies
            self._worker = forked.Worker(functools.partial(_digest_shared, salt, self._shared))
        except OSError:
            self.close()

    def digests(self, data: bytes | memoryview) -> bytes:
        if self._worker is None or self._shared is None:
            return verity.digest_blocks(self.salt, data)
        out: list[bytes] = []
        with memoryview(data) as view:
            step = len(self._shared)
            for start in range(0, len(view), step):
                piece = view[start : start + step]
                self._shared[: len(piece)] = piece
                try:
                    self._worker.send(len(piece).to_bytes(_LENGTH, "little"))
                    out.append(self._worker.answer())
                except BundleIOError:
                    self._stop_worker()  # the child is gone: hash the rest here
                    out.append(verity.digest_blocks(self.salt, view[start:]))
                    break
        return b"".join(out)

    def _stop_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()

    def close(self) -> None:
        """Stop the child and release the shared buffer."""
        self._stop_worker()
        if self._shared is not None:
            self._shared.close()
            self._shared = None

    def __enter__(self) -> SpanDigests:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
