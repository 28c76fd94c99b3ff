"""The benchmarks' reference (dd + veritysetup verify) on bundles as `create` makes them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bundle_tool import keygen
from tests.updater.device import image_bytes, make_device
from tests.updater.test_install import manifest_root_hash

sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
import bench_install


@pytest.mark.parametrize("data_padding", [True, False], ids=["padded", "older form"])
def test_the_reference_copies_the_image_and_its_hash_area_from_their_places(
    tmp_path: Path, pki: keygen.DevPki, data_padding: bool
) -> None:
    blocks = 300
    device = make_device(tmp_path / "dev", pki, image_bytes(blocks, seed=1))
    new = image_bytes(blocks, seed=2)
    bundle = device.bundle(new, data_padding=data_padding)
    slot = tmp_path / "slot"
    # Each step fails the run if it fails: veritysetup verify last.
    bench_install.reference_runs(bundle, slot, len(new), manifest_root_hash(bundle))
    assert slot.read_bytes()[: len(new)] == new
