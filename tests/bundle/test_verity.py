"""The hash tree against the known answer and the real `veritysetup`."""

from __future__ import annotations

import random
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from bundle_tool import verity
from bundle_tool.errors import BundleError
from tests.bundle.bundles import write_image

KAT_SALT = bytes.fromhex("e48da609055204e89ae53b655ca2216dd983cf3cb829f34f63a297d106d53e2d")
KAT_ROOT = "e522df0f97da4febb882ac40f30b37dc0b444bf6df418929463fa25280f09d5c"


def test_known_answer_8mib_of_zeros(tmp_path: Path) -> None:
    image = tmp_path / "zeros.img"
    image.write_bytes(bytes(8 << 20))
    with verity.build_tree(str(image), 2048, KAT_SALT) as tree:
        assert tree.root_hash.hex() == KAT_ROOT


def veritysetup_format(data: Path, hash_file: Path, salt: bytes, tree: verity.Tree) -> str:
    out = subprocess.run(
        [
            "veritysetup",
            "format",
            "--salt",
            salt.hex(),
            "--uuid",
            str(uuid.UUID(bytes=tree.uuid)),
            str(data),
            str(hash_file),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    match = re.search(r"Root hash:\s+([0-9a-f]{64})", out)
    assert match, out
    return match.group(1)


# 1 block (no tree), level boundaries, and more than four 4 MiB chunks (worker processes).
@pytest.mark.parametrize("blocks", [1, 2, 128, 129, 16385, 5 * 1024 + 7])
def test_same_tree_as_veritysetup(tmp_path: Path, blocks: int) -> None:
    salt = random.Random(blocks).randbytes(32)
    image = write_image(tmp_path / "img", blocks, seed=blocks)
    with verity.build_tree(str(image), blocks, salt) as tree:
        root = veritysetup_format(image, tmp_path / "hash", salt, tree)
        assert root == tree.root_hash.hex()
        assert (tmp_path / "hash").read_bytes() == tree.area()
        # And veritysetup accepts our tree, written by us, for our root hash.
        (tmp_path / "ours").write_bytes(tree.area())
        subprocess.run(
            ["veritysetup", "verify", str(image), str(tmp_path / "ours"), tree.root_hash.hex()],
            check=True,
            capture_output=True,
        )


def test_veritysetup_rejects_a_wrong_root(tmp_path: Path) -> None:
    image = write_image(tmp_path / "img", 300)
    with verity.build_tree(str(image), 300, b"salt") as tree:
        (tmp_path / "ours").write_bytes(tree.area())
        wrong = bytes(32).hex()
        result = subprocess.run(
            ["veritysetup", "verify", str(image), str(tmp_path / "ours"), wrong],
            capture_output=True,
        )
        assert result.returncode != 0


def test_tree_with_hash_offset_on_the_same_file(tmp_path: Path) -> None:
    """The slot layout: data, then the hash area at data_blocks*4096."""
    blocks = 700
    image = write_image(tmp_path / "slot", blocks)
    with verity.build_tree(str(image), blocks, b"\x01" * 32) as tree:
        with image.open("ab") as f:
            f.write(tree.area())
        subprocess.run(
            [
                "veritysetup",
                "verify",
                str(image),
                str(image),
                tree.root_hash.hex(),
                f"--hash-offset={blocks * 4096}",
            ],
            check=True,
            capture_output=True,
        )


def checker_for(tmp_path: Path, blocks: int) -> tuple[verity.TreeChecker, bytes, bytes]:
    image = write_image(tmp_path / "img", blocks)
    with verity.build_tree(str(image), blocks, b"s") as tree:
        return verity.TreeChecker(tree.root_hash, b"s", blocks), tree.area(), image.read_bytes()


def blocks_of(data: bytes) -> list[bytes]:
    return [data[i : i + 4096] for i in range(0, len(data), 4096)]


def test_checker_accepts_and_locates_bad_data(tmp_path: Path) -> None:
    checker, area, data = checker_for(tmp_path, 20000)
    leaves = {
        i - checker.first_leaf: b
        for i, b in checker.check_area(blocks_of(area))
        if i >= checker.first_leaf
    }
    expected = checker.leaf_digests(0, 20000, leaves.__getitem__)
    assert checker.bad_block(0, data, expected) is None
    bad = bytearray(data)
    bad[12345 * 4096 + 17] ^= 1
    assert checker.bad_block(0, bytes(bad), expected) == 12345


@pytest.mark.parametrize("where", ["superblock", "top", "leaf", "padding"])
def test_checker_refuses_a_flipped_tree_byte(tmp_path: Path, where: str) -> None:
    checker, area, _ = checker_for(tmp_path, 20000)
    pos = {
        "superblock": 100,
        "top": 4096 + 5,
        "leaf": len(area) - 4096 + 40,
        "padding": 4096 + 4095,
    }[where]
    bad = bytearray(area)
    bad[pos] ^= 0x80
    with pytest.raises(BundleError):
        list(checker.check_area(blocks_of(bytes(bad))))


def test_checker_refuses_stored_leaf_that_changed(tmp_path: Path) -> None:
    checker, area, _ = checker_for(tmp_path, 500)
    leaves = {
        i - checker.first_leaf: b
        for i, b in checker.check_area(blocks_of(area))
        if i >= checker.first_leaf
    }
    changed = bytearray(leaves[2])
    changed[0] ^= 1
    leaves[2] = bytes(changed)
    with pytest.raises(BundleError, match="stored hash tree block 2"):
        checker.leaf_digests(2 * 128, 10, leaves.__getitem__)


def test_truncated_and_overlong_tree(tmp_path: Path) -> None:
    checker, area, _ = checker_for(tmp_path, 500)
    with pytest.raises(BundleError, match="truncated"):
        list(checker.check_area(blocks_of(area[:-4096])))
    with pytest.raises(BundleError, match="extra"):
        list(checker.check_area(blocks_of(area + bytes(4096))))
