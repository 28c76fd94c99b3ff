"""Exact pieces of a stream of chunks, and runs of block numbers.

`ExactReader` cuts the chunks a source yields (of any size) into the pieces the
installer checks and writes; `runs` and `paired_runs` coalesce block numbers
into the ranges it reads, fetches or copies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

from bundle_tool.errors import BundleError


class ExactReader:
    """Takes exact-size pieces from a stream of chunks of any size, copying each byte once."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = chunks
        self._it = iter(chunks)
        self._head = memoryview(b"")  # unread part of the current chunk

    def close(self) -> None:
        """Stop the stream of chunks where it is (a generator is closed)."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            with contextlib.suppress(ValueError):  # running in a reader thread: it ends there
                close()

    def _next_chunk(self) -> memoryview:
        chunk = next(self._it, None)
        if chunk is None:
            raise BundleError("bundle ends early")
        return memoryview(chunk)

    def take(self, n: int) -> bytes:
        while n and not self._head:  # start on the next chunk: it may be taken whole
            self._head = self._next_chunk()
        if len(self._head) >= n:
            if (
                n == len(self._head)
                and isinstance(self._head.obj, bytes)
                and (len(self._head.obj) == n)
            ):
                piece = self._head.obj  # a whole chunk of exactly the size asked: no copy
            else:
                piece = self._head[:n].tobytes()
            self._head = self._head[n:]
            return piece
        parts = [self._head]
        have = len(self._head)
        while have < n:
            view = self._next_chunk()
            parts.append(view[: n - have])
            self._head = view[n - have :]
            have += len(parts[-1])
        return b"".join(parts)

    def take_into(self, view: memoryview) -> None:
        """Fill `view` with the next `len(view)` bytes."""
        pos = 0
        while pos < len(view):
            if not self._head:
                self._head = self._next_chunk()
            n = min(len(view) - pos, len(self._head))
            view[pos : pos + n] = self._head[:n]
            self._head = self._head[n:]
            pos += n

    def skip(self, n: int) -> None:
        """Pass over the next `n` bytes (read and dropped)."""
        while n:
            if not self._head:
                self._head = self._next_chunk()
            k = min(n, len(self._head))
            self._head = self._head[k:]
            n -= k

    def finish(self) -> None:
        """Read the stream to its end and refuse bytes beyond those taken.

        A source finishes its answers there (and can keep its connection).
        """
        if self._head or any(self._it):
            raise BundleError("the source gave more bytes than were asked for")


def runs(indices: Sequence[int], gap: int = 0) -> Iterator[tuple[int, int]]:
    """Coalesce sorted indices into (first, count) runs, bridging gaps up to `gap`."""
    if not indices:
        return
    start = prev = indices[0]
    for i in indices[1:]:
        if i - prev > gap + 1:
            yield start, prev - start + 1
            start = i
        prev = i
    yield start, prev - start + 1


def paired_runs(pairs: Sequence[tuple[int, int]], limit: int) -> Iterator[tuple[int, int, int]]:
    """Coalesce (b, c) pairs, sorted by b, into (b0, c0, n) runs of at most `limit`.

    A run is n pairs in a row in which both b and c go up by one.
    """
    k = 0
    while k < len(pairs):
        b0, c0 = pairs[k]
        n = 1
        while n < limit and k + n < len(pairs) and pairs[k + n] == (b0 + n, c0 + n):
            n += 1
        yield b0, c0, n
        k += n
