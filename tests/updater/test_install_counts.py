"""What an install says it did: each image byte fetched, reused or zero-filled; its phases."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.updater.device import Device, image_bytes

BLOCK = 4096
BLOCKS = 700  # the running slot's image (the `device` fixture)
COPIED = 256  # blocks 0..255: as on the running slot, at the same place
ZEROS = 256  # blocks 256..511: zeros, a whole 1 MiB span
NEW = BLOCKS - COPIED - ZEROS  # blocks 512..699: in no slot


def mixed_image() -> bytes:
    running = image_bytes(BLOCKS, seed=1)  # what slot A holds
    return running[: COPIED * BLOCK] + bytes(ZEROS * BLOCK) + image_bytes(NEW, seed=9)


def install_json(device: Device, *args: str) -> list[dict[str, Any]]:
    r = device.cli("install", *args, "--json")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def blocks(data: bytes) -> list[bytes]:
    return [data[at : at + BLOCK] for at in range(0, len(data), BLOCK)]


def zero_bytes(image: bytes) -> int:
    """The image's bytes in blocks of zeros, counted from the image itself."""
    return sum(BLOCK for block in blocks(image) if block == bytes(BLOCK))


def unchanged_bytes(image: bytes, running: bytes) -> int:
    """The image's bytes in blocks (not zeros) that the running slot holds at the same place."""
    return sum(
        BLOCK
        for at, block in enumerate(blocks(image))
        if block != bytes(BLOCK) and running[at * BLOCK : (at + 1) * BLOCK] == block
    )


@pytest.mark.parametrize("path", ["stream", "delta"])
def test_each_image_byte_is_fetched_reused_or_zero_filled(device: Device, path: str) -> None:
    image = mixed_image()
    zero = zero_bytes(image)
    # The stream path copies nothing from the running slot: it fetches those blocks.
    reused = unchanged_bytes(image, device.slot("A").read_bytes()) if path == "delta" else 0
    assert zero > 0 and (reused > 0 or path == "stream")  # the image has each kind
    bundle = device.bundle(image)
    args = [str(bundle)] + (["--delta"] if path == "delta" else [])
    result = install_json(device, *args)[-1]
    assert result["event"] == "result", result
    assert result["image_size"] == len(image), result
    assert (result["bytes_reused"], result["bytes_zero"]) == (reused, zero), result
    # The zeros were not fetched: what was is the rest of the image, the head and the tree.
    fetched_image = len(image) - reused - zero
    assert fetched_image <= result["bytes_fetched"] < fetched_image + 24 * BLOCK, result


def test_the_text_result_says_what_was_zero_filled(device: Device) -> None:
    r = device.cli("install", str(device.bundle(mixed_image())))
    assert r.returncode == 0, r.stderr
    assert f"0 reused, {ZEROS * BLOCK} zero-filled) in " in r.stdout, r.stdout


@pytest.mark.parametrize("path", ["stream", "delta"])
def test_the_tree_phase_is_reported_at_its_start_and_end(device: Device, path: str) -> None:
    bundle = device.bundle(image_bytes(BLOCKS, seed=3))
    args = [str(bundle)] + (["--delta"] if path == "delta" else [])
    tree = [
        (e["done"], e["total"])
        for e in install_json(device, *args)
        if e["event"] == "progress" and e["phase"] == "tree"
    ]
    assert len(tree) == 2 and tree[0][0] == 0 and tree[1][0] == tree[1][1] > 0, tree


def test_the_boot_files_phase_ends_with_every_file_done(artifact_device: Device) -> None:
    device = artifact_device
    kernel, notes = device.root / "kernel.img", device.root / "notes.txt"
    kernel.write_bytes(b"kernel\n" * 100)
    notes.write_bytes(b"release notes\n" * 30)
    bundle = device.bundle(image_bytes(300, seed=44), artifacts=[kernel, notes])
    files = [
        (e["done"], e["total"])
        for e in install_json(device, str(bundle))
        if e["event"] == "progress" and e["phase"] == "boot-files"
    ]
    assert files == [(0, 2), (1, 2), (2, 2)], files
