"""`bundle-tool info`, `extract` and `resign` of a bundle on a block device (a loop device).

A block device only has to hold the bundle: its bytes after the bundle's end are
not the bundle's (docs/bundle-format.md). Needs root and a working `losetup`, else
skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.bundle.bundles import run_tool
from tests.updater.device import Device, image_bytes
from tests.updater.test_blockdev_source import (  # noqa: F401 - the fixture
    SECTOR,
    LoopDevice,
    loop_device,
    on_sectors,
)


def test_info_extract_and_resign_take_a_bundle_on_a_block_device(
    device: Device,
    loop_device: LoopDevice,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    bundle = device.bundle(image_bytes(300, seed=2), data_padding=False)  # a partial sector
    dev = loop_device(on_sectors(bundle.read_bytes(), junk=1))
    info = run_tool("info", dev, "--json")
    assert (info.returncode, info.stderr) == (0, "")
    assert "warning" not in json.loads(info.stdout)
    for name, path in (("dev", dev), ("file", bundle)):
        r = run_tool("extract", path, tmp_path / name)
        assert r.returncode == 0, r.stderr
    extracted = sorted(p.relative_to(tmp_path / "dev") for p in (tmp_path / "dev").rglob("*"))
    assert extracted == sorted(
        p.relative_to(tmp_path / "file") for p in (tmp_path / "file").rglob("*")
    )
    for part in extracted:
        if (tmp_path / "file" / part).is_file():
            assert (tmp_path / "dev" / part).read_bytes() == (tmp_path / "file" / part).read_bytes()
    pki = device.pki
    out = tmp_path / "resigned.bundle"
    r = run_tool("resign", "--key", pki.signer_key, "--cert", pki.signer_cert, "-o", out, dev)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size == bundle.stat().st_size  # the bundle, not the device's rest
    assert run_tool("verify", out, "--keyring", pki.ca_cert).returncode == 0


def test_a_block_device_smaller_than_the_bundle_is_still_refused(
    device: Device,
    loop_device: LoopDevice,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    data = device.bundle(image_bytes(300, seed=2)).read_bytes()
    dev = loop_device(data[: len(data) - len(data) % SECTOR - SECTOR])
    info = run_tool("info", dev)
    assert info.returncode == 0 and "truncated (verify and extract refuse it)" in info.stderr
    assert run_tool("extract", dev, tmp_path / "x").returncode == 3
