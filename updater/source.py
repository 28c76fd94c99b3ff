"""Where a bundle's bytes come from: the abstract source and its contract.

Concrete sources (local file, standard input, HTTPS) live in their own modules.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Protocol

from .pieces import ExactReader


class SequentialReader(Protocol):
    """Consecutive bytes of one range of a bundle, read into the caller's buffers."""

    def take_into(self, view: memoryview) -> None:
        """Fill `view` with the next `len(view)` bytes of the range."""

    def skip(self, length: int) -> None:
        """Pass over the next `length` bytes of the range (a stream reads and drops them)."""

    def close(self) -> None:
        """Release what reading the range holds (a descriptor, a buffer, a request)."""


class BundleSource(ABC):
    """Bytes of one bundle, read by ranges.

    Contract for implementations:

    * `read(offset, length)` yields chunks (each at most `CHUNK` bytes) whose
      lengths add up to exactly `length`, or raises `TransportError` (a short
      read, a dropped connection that cannot be resumed, a timeout) or
      `BundleError` (the bundle ends before `offset + length`). It never reads
      more than `length` bytes from the underlying medium for the call.
    * Sources with `random_access = False` (standard input) accept only
      offsets at or after the end of the previous read; skipped bytes are read
      and discarded.
    * `read_spans(spans)` yields the bytes of several (offset, length) spans
      one after the other, as if `read` were called for each; a source may
      fetch them together (one HTTP request for many ranges).
    * `open_range(offset, length)` reads a range in order into the caller's
      buffers; by default from the chunks of one `read`, straight into the
      buffers where the medium allows it (a file).
    * `check_end(total_size)`, called once everything the installer needs was
      read, refuses a bundle that does not end at its signed total size (on a
      block device, one that is shorter: the device's bytes after it are not the bundle's).
    * `bytes_fetched` counts the bytes actually transferred from the medium or
      network, so the installer can report how much a delta install saved.
    """

    CHUNK = 1 << 20
    random_access: bool = True
    #: Bytes are costly (network): the installer reuses local blocks before fetching.
    remote: bool = False
    #: Default of `merge_gap`.
    MERGE_GAP = 32 << 10

    def __init__(self) -> None:
        self.bytes_fetched = 0

    @abstractmethod
    def read(self, offset: int, length: int) -> Iterator[bytes]:
        """Yield exactly `length` bytes starting at `offset`, in chunks."""

    @abstractmethod
    def size(self) -> int | None:
        """Total size of the bundle as the medium reports it; None when unknown."""

    @property
    def merge_gap(self) -> int:
        """Bytes of a gap between two wanted spans worth reading through rather than skipping.

        Each separate read costs a request or a seek.
        """
        return self.MERGE_GAP

    def read_spans(self, spans: Sequence[tuple[int, int]]) -> Iterator[bytes]:
        """Yield the bytes of each (offset, length) span in turn, in chunks."""
        for offset, length in spans:
            yield from self.read(offset, length)

    def read_exact(self, offset: int, length: int) -> bytes:
        """Read a small range into one bytes object."""
        return b"".join(self.read(offset, length))

    def open_range(self, offset: int, length: int) -> SequentialReader:
        """Bytes [offset, offset + length), to be taken in order into the caller's buffers.

        Nothing is read before the first `take_into`. The default takes them from
        the chunks of one `read` (one request, one pass over a stream).
        """
        return ExactReader(self.read(offset, length))

    def check_end(self, total_size: int) -> None:  # noqa: B027 - a stream overrides it
        """Refuse a bundle that does not end at `total_size` (its signed end).

        Called once the installer has read all it needs. A source whose size is
        known had it compared with the signed total when the head was read
        (`bundle_tool.reader.read_head`); a file is measured again (spans of
        zero blocks are not read, so a cut there would go unseen), and an HTTP
        answer for another size or version of the file is refused as it comes.
        A stream reads on to its end.

        Raises:
            BundleError: the bundle ends elsewhere.
            TransportError: reading failed.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and file handles."""

    def __enter__(self) -> BundleSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
