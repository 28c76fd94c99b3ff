"""The leaf summary: its bytes in a bundle, and finding a leaf block's changed parts."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bundle_tool import container, keygen, leafsummary, reader
from bundle_tool.errors import BundleError
from bundle_tool.manifest import parse_manifest
from tests.bundle.bundles import BytesReader, now


def leaf_block(digests: list[bytes]) -> bytes:
    return b"".join(digests).ljust(4096, b"\0")


def test_sizes() -> None:
    assert leafsummary.ENTRY_SIZE == 64
    assert leafsummary.summary_size(1) == 0  # one block: no tree, no leaf level
    assert leafsummary.summary_size(2) == 64
    assert leafsummary.summary_size(128) == 64
    assert leafsummary.summary_size(129) == 128
    assert leafsummary.summary_size(262144) == 2048 * 64  # 1 GiB: 128 KiB


def test_entry_is_the_truncated_sha256_of_each_512_byte_part() -> None:
    block = os.urandom(4096)
    want = b"".join(hashlib.sha256(block[k : k + 512]).digest()[:8] for k in range(0, 4096, 512))
    assert leafsummary.entry(block) == want
    with pytest.raises(ValueError, match="4096 bytes"):
        leafsummary.entry(block[:-1])


def test_differing_parts_names_the_parts_with_changed_digests() -> None:
    old = [os.urandom(32) for _ in range(128)]
    new = list(old)
    new[37] = os.urandom(32)  # part 2 (entries 32-47)
    assert leafsummary.differing_parts(leaf_block(old), leafsummary.entry(leaf_block(new))) == [2]
    new[0], new[127] = os.urandom(32), os.urandom(32)
    got = leafsummary.differing_parts(leaf_block(old), leafsummary.entry(leaf_block(new)))
    assert got == [0, 2, 7]
    assert leafsummary.differing_parts(leaf_block(new), leafsummary.entry(leaf_block(new))) == []


def summary_of_bundle(raw: bytes, keyring: tuple[object, ...]) -> tuple[bytes, bytes]:
    """(summary bytes in the bundle, leaf level bytes of its hash area)."""
    src = BytesReader(raw)
    head = reader.read_head(src, keyring, at=now())  # type: ignore[arg-type]
    part = head.images[0]
    image = part.image
    leaves = -(-image.verity.data_blocks // 128) * 4096
    area_end = part.area_offset + image.verity.tree_size
    summary_end = part.summary_offset + image.leaf_summary_size
    return raw[part.summary_offset : summary_end], raw[area_end - leaves : area_end]


def test_bundle_carries_the_summary_of_its_leaf_level(
    make_bundle: Callable[..., Path], keyring: tuple[object, ...]
) -> None:
    raw = make_bundle(blocks=300).read_bytes()  # 3 leaf blocks, the last one partly padding
    summary, leaves = summary_of_bundle(raw, keyring)
    assert len(summary) == 3 * 64
    for j in range(3):
        block = leaves[j * 4096 : (j + 1) * 4096]
        for k in range(8):
            part = block[k * 512 : (k + 1) * 512]
            assert (
                summary[j * 64 + k * 8 : j * 64 + (k + 1) * 8] == hashlib.sha256(part).digest()[:8]
            )
    h = container.parse_header(raw)
    manifest = json.loads(raw[64 : 64 + h.manifest_size])
    assert manifest["images"][0]["leaf_summary_size"] == 3 * 64


def test_bundle_without_a_summary(
    make_bundle: Callable[..., Path], keyring: tuple[object, ...]
) -> None:
    with_it = make_bundle(blocks=300, name="a.bundle").read_bytes()
    without = make_bundle(blocks=300, name="b.bundle", leaf_summary=False).read_bytes()
    src = BytesReader(without)
    head = reader.read_head(src, keyring, at=now())  # type: ignore[arg-type]
    reader.check_payload(src, head)
    part = head.images[0]
    assert part.image.leaf_summary_size == 0
    assert part.data_offset == part.summary_offset + part.image.data_padding
    h = container.parse_header(without)
    assert "leaf_summary_size" not in json.loads(without[64 : 64 + h.manifest_size])["images"][0]
    # The same payload but for the summary (and the padding that puts the data on a block).
    with_head = reader.read_head(BytesReader(with_it), keyring, at=now())  # type: ignore[arg-type]
    padded = with_head.images[0].image.data_padding
    assert with_head.images[0].data_offset % 4096 == part.data_offset % 4096 == 0
    assert len(with_it) - with_head.header.head_size - padded == (
        len(without) - h.head_size - part.image.data_padding + 3 * 64
    )


def test_verify_refuses_a_summary_that_does_not_match_the_tree(
    make_bundle: Callable[..., Path], keyring: tuple[object, ...]
) -> None:
    raw = bytearray(make_bundle(blocks=300).read_bytes())
    src = BytesReader(bytes(raw))
    part = reader.read_head(src, keyring, at=now()).images[0]  # type: ignore[arg-type]
    raw[part.summary_offset + 100] ^= 1
    src = BytesReader(bytes(raw))
    head = reader.read_head(src, keyring, at=now())  # type: ignore[arg-type]
    with pytest.raises(BundleError, match="leaf summary does not match the hash tree"):
        reader.check_payload(src, head)


def test_a_summary_size_for_an_image_without_leaves_is_refused(
    make_bundle: Callable[..., Path],
) -> None:
    raw = make_bundle(blocks=1).read_bytes()
    h = container.parse_header(raw)
    manifest = json.loads(raw[64 : 64 + h.manifest_size])
    assert "leaf_summary_size" not in manifest["images"][0]
    manifest["images"][0]["leaf_summary_size"] = 64
    with pytest.raises(BundleError, match="leaf_summary_size is 64, expected none"):
        parse_manifest(json.dumps(manifest).encode())


def test_cli_create_no_leaf_summary(tmp_path: Path, pki: keygen.DevPki) -> None:
    image = tmp_path / "img"
    image.write_bytes(os.urandom(300 * 4096))
    base = [sys.executable, "-m", "bundle_tool.cli", "create", "--image", str(image)]
    base += ["--version", "1.0.0", "--compatible", "b", "--json"]
    base += ["--key", str(pki.signer_key), "--cert", str(pki.signer_cert)]
    for extra, size in (([], 192), (["--no-leaf-summary"], None)):
        out = tmp_path / f"{size}.bundle"
        proc = subprocess.run([*base, *extra, "-o", str(out)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        info = subprocess.run(
            [sys.executable, "-m", "bundle_tool.cli", "info", str(out)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert json.loads(proc.stdout)["images"][0].get("leaf_summary_size") == size
        assert ("leaf summary 192 bytes" in info) == (size is not None)
