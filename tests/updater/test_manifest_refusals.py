"""Bundles the manifest rules refuse are refused by the updater before it writes anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bundle_tool import container, signing, verity
from bundle_tool.errors import BundleError, PolicyError
from tests.updater.device import Device, image_bytes
from updater.filesource import FileSource
from updater.install import Installer

BLOCKS = 40


def install(device: Device, bundle: Path) -> None:
    with FileSource(bundle) as src:
        Installer(device.config()).install(src)


def test_an_empty_salt_is_refused_before_the_slot_is_written(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 8: such a bundle was written to the slot whole, then refused by the env code."""
    # What a writer without the salt rule made (`bundle-tool create --salt ''` did).
    monkeypatch.setattr(verity, "check_salt", lambda salt: None)
    monkeypatch.setattr("tests.updater.device.SALT", b"")
    bundle = device.bundle(image_bytes(BLOCKS, seed=3))
    before = device.snapshot(target=True)
    with pytest.raises(BundleError, match="salt"):
        install(device, bundle)
    assert device.snapshot(target=True) == before


def test_a_bundle_for_another_architecture_is_refused(device: Device) -> None:
    """Item 4: only each image's architecture was compared with the board's."""
    good = device.bundle(image_bytes(BLOCKS, seed=4))
    data = good.read_bytes()
    h = container.parse_header(data)
    obj = json.loads(data[64 : 64 + h.manifest_size])
    assert obj["architecture"] == obj["images"][0]["architecture"] == "arm64"
    obj["architecture"] = "amd64"
    raw = json.dumps(obj).encode()
    sigs = container.build_signature_block([signing.sign(raw, device.signer())])
    header = container.Header(len(raw), len(sigs), h.payload_size)
    amd64 = device.root / "amd64.bundle"
    amd64.write_bytes(header.to_bytes() + raw + sigs + data[h.head_size :])
    before = device.snapshot(target=True)
    with pytest.raises(PolicyError, match="bundle is built for amd64, this device is arm64"):
        install(device, amd64)
    assert device.snapshot(target=True) == before
