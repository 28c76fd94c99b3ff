"""The index of the running slot's blocks by digest, used to copy blocks that moved."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bundle_tool import verity
from bundle_tool.errors import BundleIOError
from updater import blockindex
from updater.blockindex import BlockIndex

SALT = b"moved"


def digest(n: int) -> bytes:
    return random.Random(n).randbytes(32)


def test_each_digest_finds_the_first_block_holding_it() -> None:
    index = BlockIndex(100)
    index.add(10, b"".join(digest(n) for n in range(50)))
    index.add(60, digest(7) + digest(99))  # block 60 repeats block 17's content
    assert [index.find(digest(n)) for n in range(50)] == list(range(10, 60))
    assert index.find(digest(99)) == 61
    assert index.blocks == 51
    assert index.find(digest(1000)) is None


def test_a_shared_prefix_gives_a_candidate_the_caller_must_check() -> None:
    index = BlockIndex(4)
    index.add(0, b"\x01\x02\x03\x04" + bytes(28))
    # Same first four bytes, other content: the index names block 0, which the
    # installer hashes and finds wrong before writing anything.
    assert index.find(b"\x01\x02\x03\x04" + b"\xff" * 28) == 0


def test_an_index_refuses_more_blocks_than_it_has_room_for() -> None:
    index = BlockIndex(6)  # 9 cells
    with pytest.raises(ValueError, match="full"):
        index.add(0, b"".join(digest(n) for n in range(9)))


def test_a_large_slot_keeps_every_stride_th_block_within_the_budget() -> None:
    index = BlockIndex(100, max_cells=40)  # room for 30: every 4th of 100 blocks
    assert index.stride == 4
    index.add(2, b"".join(digest(n) for n in range(2, 102)))  # blocks 2..101
    held = [n for n in range(2, 102) if index.find(digest(n)) is not None]
    assert held == list(range(4, 102, 4))
    assert [index.find(digest(n)) for n in held] == held
    assert index.cells <= 40
    assert BlockIndex(393216).cells == blockindex.MAX_CELLS  # 4 MiB at most


def test_build_hashes_the_slot_with_the_given_salt(tmp_path: Path) -> None:
    blocks = 3 * blockindex.CHUNK_BLOCKS + 5  # several pieces of work, a short last one
    data = random.Random(1).randbytes(blocks * 4096)
    path = tmp_path / "slot.img"
    path.write_bytes(data)
    seen: list[int] = []
    index = blockindex.build(str(path), SALT, blocks, seen.append)
    digests = verity.digest_blocks(SALT, data)
    probes = [0, 1, blockindex.CHUNK_BLOCKS, blocks - 1]
    assert [index.find(digests[b * 32 : b * 32 + 32]) for b in probes] == probes
    assert seen[-1] == blocks and seen == sorted(seen)
    with pytest.raises(BundleIOError, match="fewer than"):
        blockindex.build(str(path), SALT, blocks + 1)
