"""What was put in place on a slot, extent by extent, with a fast digest of each.

The read-back (install step 5) checks that the medium stored what it was
given. Trust was settled before each write (every block was checked against
the signed tree), so that check needs no cryptographic hash: it compares a
fast digest (XXH3-128) of each extent as written with the same digest of the
extent read back from the medium. A block dropped, stored elsewhere or
corrupted changes the digest of its extent.

A `WriteLog` takes a note of every extent a writer puts in place (written, or
kept because the target held it already), in any order within a region; the
read-back takes the notes of each flushed region, in block order, and checks
that together they cover every block once.

An extent travels to a read-back process as 32 bytes: its first block and its
number of blocks (8 bytes each, little-endian) and its digest (16 bytes).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import xxhash

from bundle_tool import verity

BLOCK = verity.BLOCK_SIZE
DIGEST_SIZE = 16
_FIELD = 8
EXTENT_SIZE = 2 * _FIELD + DIGEST_SIZE


def digest(data: bytes | memoryview) -> bytes:
    """The read-back digest of some bytes (XXH3-128)."""
    return xxhash.xxh3_128_digest(data)


def digest_pieces(pieces: Iterable[bytes | memoryview]) -> bytes:
    """`digest` of the pieces joined, taken piece by piece."""
    state = xxhash.xxh3_128()
    for piece in pieces:
        state.update(piece)
    return state.digest()


@dataclass(frozen=True)
class Extent:
    """Blocks [first, first + count) as put in place, and the digest of their bytes."""

    first: int
    count: int
    digest: bytes

    @property
    def end(self) -> int:
        return self.first + self.count

    def encode(self) -> bytes:
        return (
            self.first.to_bytes(_FIELD, "little")
            + self.count.to_bytes(_FIELD, "little")
            + self.digest
        )


def encode_extents(extents: Iterable[Extent]) -> bytes:
    return b"".join(e.encode() for e in extents)


def decode_extents(data: bytes) -> Iterator[Extent]:
    if len(data) % EXTENT_SIZE:
        raise ValueError(f"an extent list of {len(data)} bytes is not whole extents")
    for at in range(0, len(data), EXTENT_SIZE):
        first = int.from_bytes(data[at : at + _FIELD], "little")
        count = int.from_bytes(data[at + _FIELD : at + 2 * _FIELD], "little")
        yield Extent(first, count, data[at + 2 * _FIELD : at + EXTENT_SIZE])


class WriteLog:
    """The extents put in place on one slot and not yet taken by the read-back."""

    def __init__(self) -> None:
        self._pending: list[Extent] = []
        #: Every block below this one was taken, in one extent or more.
        self.covered = 0

    def note(self, first: int, data: bytes | memoryview) -> None:
        """Blocks from `first` hold `data` now (a whole number of blocks)."""
        count, rest = divmod(len(data), BLOCK)
        if rest:
            raise ValueError(f"{len(data)} bytes are not whole blocks")
        if count:
            self._pending.append(Extent(first, count, digest(data)))

    def take(self, upto_block: int) -> list[Extent]:
        """The extents that lie below `upto_block`, in block order; the others stay.

        Extents may overlap: a block written twice (say, kept, then written again
        inside a longer download) holds the same checked bytes both times.

        Raises:
            ValueError: they leave a gap: a block would go unchecked (a writer
                failed to note it).
        """
        below = sorted((e for e in self._pending if e.end <= upto_block), key=lambda e: e.first)
        self._pending = [e for e in self._pending if e.end > upto_block]
        for e in below:
            if e.first > self.covered:
                raise ValueError(
                    f"the extents noted leave a gap: block {self.covered} was not noted "
                    f"before an extent from block {e.first}"
                )
            self.covered = max(self.covered, e.end)
        return below
