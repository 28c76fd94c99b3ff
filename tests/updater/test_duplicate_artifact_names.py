"""A signed manifest with two artifacts of the same name is refused (bad bundle, status 3).

`bundle-tool create` refuses to make one, but readers took it: `verify` called it valid, and
the updater installed both under the one name, the second silently replacing the first in
the boot folder, so which signed file a device ends up with was the order's accident.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bootctl import exitstatus
from bundle_tool import container, manifest, signing
from bundle_tool.errors import BundleError
from tests.bundle.bundles import minimal_manifest, run_tool
from tests.updater.device import Device, image_bytes

BLOCKS = 40


def _two_kernels(device: Device, tmp_path: Path) -> Path:
    """A bundle signed by the device's signer whose manifest names kernel.img twice."""
    kernel = tmp_path / "kernel.img"
    kernel.write_bytes(b"the first kernel\n")
    good = device.bundle(image_bytes(BLOCKS, seed=60), artifacts=[kernel])
    data = good.read_bytes()
    h = container.parse_header(data)
    obj = json.loads(data[64 : 64 + h.manifest_size])
    second = b"the other kernel, installed over the first\n"
    obj["artifacts"].append(
        {"name": "kernel.img", "size": len(second), "sha256": hashlib.sha256(second).hexdigest()}
    )
    raw = json.dumps(obj).encode()
    sigs = container.build_signature_block([signing.sign(raw, device.signer())])
    header = container.Header(len(raw), len(sigs), h.payload_size + len(second))
    bad = tmp_path / "two-kernels.bundle"
    bad.write_bytes(header.to_bytes() + raw + sigs + data[h.head_size :] + second)
    return bad


def test_the_manifest_reader_refuses_two_artifacts_of_one_name() -> None:
    art = {"name": "a.bin", "size": 0, "sha256": hashlib.sha256(b"").hexdigest()}
    obj = {**minimal_manifest(), "artifacts": [art]}
    manifest.parse_manifest(json.dumps(obj).encode())
    obj["artifacts"] = [art, {**art, "size": 1}]
    with pytest.raises(BundleError, match=r"manifest: two artifacts have the same name: a\.bin"):
        manifest.parse_manifest(json.dumps(obj).encode())


def test_an_install_of_two_artifacts_of_one_name_is_refused_before_writing(
    artifact_device: Device, tmp_path: Path
) -> None:
    device = artifact_device
    bad = _two_kernels(device, tmp_path)
    before = device.snapshot(target=True)
    run = device.cli("install", str(bad))
    assert run.returncode == exitstatus.BAD_BUNDLE, run.stderr
    assert run.stderr.splitlines() == [
        "updater: error: manifest: two artifacts have the same name: kernel.img"
    ]
    assert device.snapshot(target=True) == before
    assert not (device.boot_dir("B") / "kernel.img").exists()


def test_bundle_tool_verify_refuses_two_artifacts_of_one_name(
    artifact_device: Device, tmp_path: Path
) -> None:
    bad = _two_kernels(artifact_device, tmp_path)
    run = run_tool("verify", bad, "--keyring", artifact_device.pki.ca_cert)
    assert run.returncode == exitstatus.BAD_BUNDLE, run.stdout
    assert "two artifacts have the same name: kernel.img" in run.stderr
