"""Zero blocks: known from their signed digests, written without being fetched (pure).

A filesystem image carries its free space as blocks of zeros. Under the
bundle's salt, such a block's leaf digest is known beforehand:
sha256(salt || 4096 zero bytes). A block whose signed digest is that one is
all zeros (SHA-256 is collision resistant), so the delta path writes zeros
there instead of fetching the block, and a leaf block made of that digest
alone (a group of zero blocks) is checked against the tree without being
fetched either.
"""

from __future__ import annotations

from dataclasses import dataclass

from bundle_tool import verity

BLOCK = verity.BLOCK_SIZE
DIGEST = verity.DIGEST_SIZE


@dataclass(frozen=True)
class ZeroBlocks:
    """The zero block's digest under one salt, and what follows from it.

    Attributes:
        digest: sha256(salt || 4096 zero bytes), a zero block's leaf digest.
    """

    digest: bytes

    @classmethod
    def for_salt(cls, salt: bytes) -> ZeroBlocks:
        return cls(verity.zero_block_digest(salt))

    def is_zero(self, leaf: bytes, i: int) -> bool:
        """Whether entry i of the leaf block `leaf` is a zero block's digest."""
        return leaf[i * DIGEST : (i + 1) * DIGEST] == self.digest

    def zeros(self, leaf: bytes, count: int) -> list[int]:
        """The indexes, among the first `count` entries of `leaf`, of zero blocks."""
        return [i for i in range(count) if self.is_zero(leaf, i)]

    def leaf(self, count: int) -> bytes:
        """The leaf block of a group of `count` zero blocks (zero-padded, as stored)."""
        return (self.digest * count).ljust(BLOCK, b"\x00")
