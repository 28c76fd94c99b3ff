"""Sparse images and zero blocks at create: holes not read, zero blocks not written.

A filesystem image carries its free space as zero blocks, often as holes of a
sparse file. The builder asks the filesystem where the holes are and gives
their blocks the zero block's digest without reading them; it writes every
block but the zero blocks into the bundle as it hashes it, and the bundle's
unwritten ranges read as zeros. The tree and the bundle must be those of the
same image written out densely, and `veritysetup` must agree.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from bundle_tool import container, signing, verity, writer
from bundle_tool.container import layout
from bundle_tool.manifest import parse_manifest
from bundle_tool.writer import CreateOptions, create_bundle
from tests.bundle.bundles import BUILD_TIME
from tests.bundle.test_verity import veritysetup_format

BLOCK = verity.BLOCK_SIZE
SALT = bytes(range(32))


def sparse_image(path: Path, blocks: int, seed: int = 3) -> Path:
    """An image of holes, zero blocks written out, random blocks and partly written blocks."""
    rng = random.Random(seed)
    with path.open("wb") as f:
        f.truncate(blocks * BLOCK)
        block = 0
        while block < blocks:
            run = rng.randint(1, 300)
            kind = rng.choice(("hole", "hole", "zeros", "random", "partial"))
            n = min(run, blocks - block)
            if kind == "zeros":
                f.seek(block * BLOCK)
                f.write(bytes(n * BLOCK))
            elif kind == "random":
                f.seek(block * BLOCK)
                f.write(rng.randbytes(n * BLOCK))
            elif kind == "partial":  # a few bytes inside a block: the block is data
                f.seek(block * BLOCK + rng.randrange(BLOCK - 8))
                f.write(rng.randbytes(8))
                n = 1
            block += n
    return path


def dense_copy(image: Path, path: Path) -> Path:
    path.write_bytes(image.read_bytes())
    return path


def holes_are_reported(path: Path) -> bool:
    with path.open("rb") as f:
        return verity.data_runs(f.fileno(), path.stat().st_size // BLOCK) != [
            (0, path.stat().st_size // BLOCK)
        ]


def test_data_runs_are_the_blocks_written(tmp_path: Path) -> None:
    image = tmp_path / "img"
    with image.open("wb") as f:
        f.truncate(64 * BLOCK)
        f.seek(3 * BLOCK)
        f.write(b"x" * (2 * BLOCK))  # blocks 3 and 4
        f.seek(20 * BLOCK + 100)
        f.write(b"y")  # one byte of block 20
        f.seek(63 * BLOCK)
        f.write(b"z" * BLOCK)  # the last block
    if not holes_are_reported(image):
        pytest.skip("the filesystem of the test directory does not report holes")
    with image.open("rb") as f:
        runs = verity.data_runs(f.fileno(), 64)
        # The filesystem may allocate more than was written, never less.
        covered = {b for lo, n in runs for b in range(lo, lo + n)}
        assert {3, 4, 20, 63} <= covered
        assert len(covered) < 64
        assert verity.data_runs(f.fileno(), 10) == [r for r in runs if r[0] < 10]
    with image.open("wb") as f:
        f.truncate(8 * BLOCK)
    with image.open("rb") as f:
        assert verity.data_runs(f.fileno(), 8) == []  # nothing but a hole


def test_runs_clipped_to_a_span() -> None:
    runs = [(0, 5), (10, 10), (30, 1)]
    assert verity.clip_runs(runs, (0, 40)) == runs
    assert verity.clip_runs(runs, (3, 10)) == [(3, 2), (10, 3)]
    assert verity.clip_runs(runs, (12, 4)) == [(12, 4)]
    assert verity.clip_runs(runs, (20, 10)) == []
    assert verity.clip_runs(runs, (30, 1)) == [(30, 1)]
    assert verity.clip_runs([], (0, 8)) == []


def test_nonzero_runs_of_digests() -> None:
    zero, a, b = b"\x00" * 32, b"a" * 32, b"b" * 32
    assert list(verity.nonzero_runs(a + zero + zero + b + a + zero + a, zero)) == [
        (0, 1),
        (3, 2),
        (6, 1),
    ]
    assert list(verity.nonzero_runs(zero * 4, zero)) == []
    assert list(verity.nonzero_runs(a * 3, zero)) == [(0, 3)]
    # The zero digest's bytes across two entries is no zero entry.
    straddle = a[:16] + zero[:16] + zero[16:] + b[16:]
    assert list(verity.nonzero_runs(straddle, zero)) == [(0, 2)]


# Few blocks (one process) and more than four 4 MiB chunks (worker processes).
@pytest.mark.parametrize("blocks", [700, 5 * 1024 + 9])
def test_sparse_image_same_tree_as_veritysetup(tmp_path: Path, blocks: int) -> None:
    image = sparse_image(tmp_path / "img", blocks)
    dense = dense_copy(image, tmp_path / "dense")
    with verity.build_tree(str(image), blocks, SALT) as tree:
        assert veritysetup_format(image, tmp_path / "hash", SALT, tree) == tree.root_hash.hex()
        assert (tmp_path / "hash").read_bytes() == tree.area()
        with verity.build_tree(str(dense), blocks, SALT) as dense_tree:
            assert dense_tree.area() == tree.area()


@pytest.mark.parametrize("workers", [1, 2])
def test_store_gets_every_block_but_the_zero_blocks(tmp_path: Path, workers: int) -> None:
    blocks = 5 * 1024 + 9
    image = sparse_image(tmp_path / "img", blocks, seed=5)
    data = image.read_bytes()
    out_path = tmp_path / "out"
    written = tmp_path / "written"
    with out_path.open("wb") as out, written.open("ab") as log:

        def store(first: int, chunk: memoryview) -> None:
            os.pwrite(out.fileno(), chunk, 1000 + first * BLOCK)
            os.write(log.fileno(), f"{first} {len(chunk) // BLOCK}\n".encode())

        with verity.build_tree(str(image), blocks, SALT, workers=workers, store=store):
            pass
        out.truncate(1000 + blocks * BLOCK)
    assert out_path.read_bytes()[1000:] == data
    stored = {b for line in written.read_text().split("\n") if line for b in _blocks_of(line)}
    nonzero = {b for b in range(blocks) if data[b * BLOCK : (b + 1) * BLOCK] != bytes(BLOCK)}
    assert stored == nonzero


def _blocks_of(line: str) -> range:
    first, count = map(int, line.split())
    return range(first, first + count)


def make(image: Path, out: Path, signer: signing.Signer, *extra: tuple[str, Path]) -> bytes:
    opts = CreateOptions(
        image, "1.0.0", "test-board", [signer], BUILD_TIME, salt=SALT, extra_images=extra
    )
    create_bundle(opts, out)
    return out.read_bytes()


def test_sparse_image_makes_the_bundle_of_its_dense_copy(
    tmp_path: Path, signer: signing.Signer
) -> None:
    blocks = 5 * 1024 + 9
    image = sparse_image(tmp_path / "img", blocks)
    dense = dense_copy(image, tmp_path / "dense")
    bundle = make(image, tmp_path / "sparse.bundle", signer)
    assert bundle == make(dense, tmp_path / "dense.bundle", signer)
    header = container.parse_header(bundle)
    manifest = parse_manifest(bundle[64 : 64 + header.manifest_size])
    (part,), _ = layout(header, manifest)
    assert bundle[part.data_offset :] == image.read_bytes()
    # veritysetup agrees with the tree and the data as the bundle carries them.
    (tmp_path / "data").write_bytes(bundle[part.data_offset :])
    (tmp_path / "tree").write_bytes(
        bundle[part.area_offset : part.area_offset + part.image.verity.tree_size]
    )
    done = subprocess.run(
        [
            "veritysetup",
            "verify",
            tmp_path / "data",
            tmp_path / "tree",
            part.image.verity.root_hash.hex(),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_data_moves_when_the_signatures_come_out_of_another_length(
    tmp_path: Path, signer: signing.Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The data goes after a head signed once before hashing; if the final signatures
    are of another length (ECDSA), the data is written again after the real head."""
    rootfs = sparse_image(tmp_path / "rootfs", 900, seed=7)
    boot = sparse_image(tmp_path / "boot", 300, seed=8)
    expected = make(rootfs, tmp_path / "plain.bundle", signer, ("boot", boot))
    real_sign = writer.sign
    calls = []

    def longer_first(payload: bytes, s: signing.Signer) -> signing.SignatureEntry:
        entry = real_sign(payload, s)
        calls.append(payload)
        if len(calls) == 1:  # the head the data is placed after: one byte longer
            return signing.SignatureEntry(entry.certificate, entry.chain, entry.signature + b"!")
        return entry

    monkeypatch.setattr(writer, "sign", longer_first)
    moved = make(rootfs, tmp_path / "moved.bundle", signer, ("boot", boot))
    assert len(calls) >= 2
    assert moved == expected
