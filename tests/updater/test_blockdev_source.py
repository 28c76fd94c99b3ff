"""A bundle on a block device (written with dd onto a partition or stick), through a loop device.

A block device is a whole number of sectors, so it holds bytes after the bundle's
end; they are not the bundle's. Needs root and a working `losetup`, else skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bundle_tool import reader
from bundle_tool.errors import BundleError
from bundle_tool.filereader import FileReader
from bundle_tool.keyring import read_keyring
from tests.updater.device import Device, image_bytes, straight_reads
from updater.filesource import FileSource
from updater.install import Installer

SECTOR = 512

LoopDevice = Callable[[bytes], str]


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[LoopDevice]:
    """Attach a read-only loop device over a file of the given bytes; detached afterwards."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("needs root and losetup")
    attached: list[str] = []

    def attach(data: bytes) -> str:
        backing = tmp_path / f"disk{len(attached)}.img"
        backing.write_bytes(data)
        r = subprocess.run(
            ["losetup", "--find", "--show", "--read-only", str(backing)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            pytest.skip(f"losetup failed: {r.stderr.strip()}")
        attached.append(r.stdout.strip())
        return attached[-1]

    yield attach
    for dev in attached:
        subprocess.run(["losetup", "--detach", dev], check=False)


def on_sectors(bundle: bytes, junk: int = 0) -> bytes:
    """The bundle, the rest of its last sector (zeros), then `junk` non-zero sectors."""
    return bundle + bytes(-len(bundle) % SECTOR) + b"\xa5" * (junk * SECTOR)


@pytest.mark.parametrize("data_padding", [True, False], ids=["padded", "older form"])
def test_a_bundle_on_a_block_device_installs(
    device: Device, loop_device: LoopDevice, monkeypatch: pytest.MonkeyPatch, data_padding: bool
) -> None:
    """The device's bytes after the bundle's end, zeros or not, are ignored.

    A padded bundle without artifacts ends on a block, so on whole sectors; its
    data is read by direct I/O straight into the hashing ring, from the device too.
    """
    image = image_bytes(300, seed=2)
    raw = device.bundle(image, data_padding=data_padding).read_bytes()
    assert (len(raw) % 4096 == 0) == data_padding
    dev = loop_device(on_sectors(raw, junk=3))
    straight = straight_reads(monkeypatch)
    with FileSource(dev) as src:
        Installer(device.config()).install(src)
    assert device.slot("B").read_bytes()[: len(image)] == image
    assert device.control().boot_state().order[0] == "B"
    assert straight and all(straight) == data_padding and any(straight) == data_padding


def test_verify_reads_a_bundle_on_a_block_device(device: Device, loop_device: LoopDevice) -> None:
    bundle = device.bundle(image_bytes(300, seed=2))
    dev = loop_device(on_sectors(bundle.read_bytes(), junk=1))
    at = datetime.now(UTC)
    with FileReader(dev) as src:
        head = reader.read_head(src, read_keyring(device.pki.ca_cert, at=at), at=at)
        assert head.total_size == bundle.stat().st_size < src.size()
        reader.check_payload(src, head)


def test_a_block_device_smaller_than_the_bundle_is_refused(
    device: Device, loop_device: LoopDevice
) -> None:
    # The older form, which ends inside a sector.
    data = device.bundle(image_bytes(300, seed=2), data_padding=False).read_bytes()
    assert len(data) % SECTOR
    cut = len(data) - len(data) % SECTOR - SECTOR  # whole sectors, one short of the end
    at = datetime.now(UTC)
    keyring = read_keyring(device.pki.ca_cert, at=at)
    truncated = r"truncated: \d+ bytes, the manifest accounts for"
    with FileReader(loop_device(data[:cut])) as src, pytest.raises(BundleError, match=truncated):
        reader.read_head(src, keyring, at=at)
    with FileSource(loop_device(on_sectors(data))) as src:
        src.check_end(len(data))  # the rest of the last sector is not the bundle's
        with pytest.raises(BundleError, match="ends early"):
            src.check_end(src.size() + 1)


def test_a_regular_file_still_has_to_end_at_the_bundles_end(device: Device) -> None:
    """Outside a block device, trailing bytes stay an error."""
    bundle = device.bundle(image_bytes(300, seed=2), data_padding=False)
    assert bundle.stat().st_size % SECTOR  # the older form, which ends inside a sector
    with bundle.open("ab") as f:
        f.write(bytes(-bundle.stat().st_size % SECTOR))
    at = datetime.now(UTC)
    trailing = "bytes the manifest does not account for"
    with FileReader(bundle) as src, pytest.raises(BundleError, match=trailing):
        reader.read_head(src, read_keyring(device.pki.ca_cert, at=at), at=at)
