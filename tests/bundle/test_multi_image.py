"""Bundles with several images: a rootfs and a signed FIT (real `mkimage`), each with its tree.

`bundle-tool create --image rootfs=... --image boot=...` as a user runs it; every
image's hash area is checked by `veritysetup verify` against the data the bundle
carries, and `verify` refuses a changed byte of the boot image.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bundle_tool import bootkeys, keygen
from bundle_tool.bootversion import VERSION_PROPERTY, boot_image_info
from bundle_tool.container import layout, parse_header
from bundle_tool.manifest import parse_manifest
from tests.bundle.bundles import write_image
from tests.bundle.test_cli import create, run
from tests.helpers.boards import fit_board, signed_fit


@pytest.fixture(scope="module")
def keys(pki: keygen.DevPki) -> Path:
    """The folder of the development PKI (`signer.key`, `signer.pem`, `ca.pem`)."""
    return pki.signer_key.parent


@pytest.fixture(scope="module")
def fit(tmp_path_factory: pytest.TempPathFactory, boot_keys: bootkeys.DevBootKeys) -> Path:
    return signed_fit(tmp_path_factory.mktemp("fit"), boot_keys.fit, "2.1.0")


def test_rootfs_and_boot_image_each_get_a_tree(tmp_path: Path, keys: Path, fit: Path) -> None:
    rootfs = write_image(tmp_path / "rootfs.img", 40)
    board = fit_board(tmp_path / "board.toml")
    out = tmp_path / "b"
    r = create(
        keys, f"rootfs={rootfs}", out, "--image", f"boot={fit}", "--board-config", board, "--json"
    )
    assert r.returncode == 0, r.stderr
    info = json.loads(run("info", out, "--json").stdout)
    rootfs_entry, boot_entry = info["images"]
    assert (rootfs_entry["slot_class"], boot_entry["slot_class"]) == ("rootfs", "boot")
    assert "file_size" not in rootfs_entry
    assert boot_entry["file_size"] == fit.stat().st_size
    assert boot_entry["size"] == -(-fit.stat().st_size // 4096) * 4096
    text = run("info", out).stdout
    assert "image 1 (boot)" in text and f"a file of {fit.stat().st_size}" in text
    verified = run("verify", out, "--keyring", keys / "ca.pem", "--board-config", board)
    assert verified.returncode == 0, verified.stderr
    # The board without a verified chain has no place for a boot image: as its updater, refused.
    plain = fit_board(tmp_path / "plain.toml", chain="script")
    refused = run("verify", out, "--keyring", keys / "ca.pem", "--board-config", plain)
    assert refused.returncode == 5
    assert "has no slot or boot file of class boot" in refused.stderr

    # Each image: its hash area and its data, checked by veritysetup.
    data = out.read_bytes()
    header = parse_header(data[:64])
    manifest = parse_manifest(data[64 : 64 + header.manifest_size])
    images, _ = layout(header, manifest)
    for part, original in zip(images, (rootfs, fit), strict=True):
        v = part.image.verity
        (tmp_path / "data").write_bytes(data[part.data_offset : part.data_offset + part.image.size])
        (tmp_path / "tree").write_bytes(data[part.area_offset : part.area_offset + v.tree_size])
        done = subprocess.run(
            ["veritysetup", "verify", tmp_path / "data", tmp_path / "tree", v.root_hash.hex()],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        carried = (tmp_path / "data").read_bytes()
        assert carried[: part.image.length] == original.read_bytes()
        assert carried[part.image.length :] == bytes(part.image.size - part.image.length)

    # One changed byte of the boot image: refused as a corrupt bundle.
    boot = images[1]
    changed = bytearray(data)
    changed[boot.data_offset + 100] ^= 1
    (tmp_path / "bad").write_bytes(changed)
    r = run("verify", tmp_path / "bad", "--keyring", keys / "ca.pem")
    assert r.returncode == 3 and "does not match the hash tree" in r.stderr


@pytest.mark.parametrize(
    "images",
    [("{rootfs}", "{boot}"), ("rootfs={rootfs}", "rootfs={boot}"), ("{rootfs}", "rootfs={boot}")],
    ids=["plain-twice", "class-twice", "plain-and-rootfs"],
)
def test_an_image_class_given_twice_is_refused(
    tmp_path: Path, keys: Path, images: tuple[str, str]
) -> None:
    paths = {"rootfs": write_image(tmp_path / "r.img", 4), "boot": write_image(tmp_path / "b", 2)}
    first, second = (i.format(**paths) for i in images)
    r = create(keys, first, tmp_path / "out", "--image", second, "--compatible", "x")
    assert r.returncode == 2
    assert "--image given twice for slot class rootfs" in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_rootfs_image_must_be_whole_blocks(tmp_path: Path, keys: Path, fit: Path) -> None:
    r = create(keys, f"rootfs={fit}", tmp_path / "out", "--compatible", "x")
    assert r.returncode == 2 and "not a positive multiple of 4096" in r.stderr


def test_places_the_board_does_not_name_are_refused(tmp_path: Path, keys: Path, fit: Path) -> None:
    rootfs = write_image(tmp_path / "rootfs.img", 4)
    notes = tmp_path / "notes.txt"
    notes.write_text("release notes\n")
    board = fit_board(tmp_path / "board.toml")
    r = create(keys, rootfs, tmp_path / "a", "--board-config", board, "--artifact", notes)
    assert r.returncode == 2
    assert "artifact notes.txt: board qemu-arm64-uboot names no place for it" in r.stderr
    r = create(keys, rootfs, tmp_path / "b", "--board-config", board, "--image", f"appfs={fit}")
    assert r.returncode == 2 and "has no slot or boot file of class appfs" in r.stderr
    r = create(keys, rootfs, tmp_path / "c", "--board-config", board)
    assert r.returncode == 2
    assert "no image of class boot: board qemu-arm64-uboot boots each slot from its boot.itb" in (
        r.stderr
    )
    assert not any((tmp_path / n).exists() for n in "abc")
    placed = fit_board(tmp_path / "placed.toml", {"notes.txt": "notes.txt"})
    r = create(
        keys,
        rootfs,
        tmp_path / "d",
        "--board-config",
        placed,
        "--artifact",
        notes,
        "--image",
        f"boot={fit}",
    )
    assert r.returncode == 0, r.stderr


def test_the_fit_records_its_version(fit: Path) -> None:
    data = fit.read_bytes()
    assert boot_image_info(lambda at, n: data[at : at + n]).version == "2.1.0"
    listing = subprocess.run(["fdtget", fit, "/", VERSION_PROPERTY], capture_output=True, text=True)
    assert listing.stdout.strip() == "2.1.0", listing.stderr
    assert boot_image_info(lambda at, n: bytes(64)[at : at + n]).version is None
