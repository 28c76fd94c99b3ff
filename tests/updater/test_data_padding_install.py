"""Installing bundles whose images carry data padding, as `create` makes it and as a
hostile builder might: any length 1-4095, on some images only, of bytes other than zeros.

The padding is counted by the signed manifest (so the header's payload size must
agree) but its bytes are neither signed nor used: the updater skips them whatever
they are, from a file, a stream or over HTTPS (`bundle-tool verify` refuses any
that is not zeros, so that a bundle has one form).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bundle_tool import bootkeys, container, keygen, signing
from bundle_tool.errors import BundleError
from tests.helpers.boards import signed_fit
from tests.helpers.nginx import NginxServer
from tests.updater.device import Device, fit_device, group_bundle, image_bytes
from tests.updater.test_install import (
    SMALL_REGIONS,
    FailingAfter500Blocks,
    assert_installed,
    install_file,
)
from tests.updater.test_install_https import https_install
from updater.errors import DeviceError
from updater.filesource import FileSource, StdinSource
from updater.install import Installer

BLOCKS = 700


def repadded(raw: bytes, signer: signing.Signer, padding: dict[int, int], fill: int) -> bytes:
    """`raw` with image N's data padding made `padding[N]` bytes of `fill`, signed again.

    The header's payload size follows, as a builder would make it.
    """
    header = container.parse_header(raw)
    manifest, _ = container.inspect_head(raw[: header.head_size])
    images, artifacts = container.layout(header, manifest)
    obj = json.loads(raw[64 : 64 + header.manifest_size])
    payload = b""
    for n, part in enumerate(images):
        pad = padding.get(n, part.image.data_padding)
        obj["images"][n].pop("data_padding", None)
        if pad:
            obj["images"][n]["data_padding"] = pad
        payload += raw[part.area_offset : part.data_offset - part.image.data_padding]
        payload += bytes([fill]) * pad + raw[part.data_offset :][: part.image.size]
    if artifacts:
        payload += raw[artifacts[0].offset :]
    mraw = json.dumps(obj).encode()
    sigs = container.build_signature_block([signing.sign(mraw, signer)])
    return container.Header(len(mraw), len(sigs), len(payload)).to_bytes() + mraw + sigs + payload


def install(device: Device, bundle: Path, source: str) -> None:
    if source == "stdin":
        with bundle.open("rb") as f:
            Installer(device.config()).install(StdinSource(f))
    else:
        install_file(device, bundle)


@pytest.mark.parametrize("source", ["file", "stdin"])
@pytest.mark.parametrize(("pad", "fill"), [(1, 0), (4095, 0), (1, 0xFF), (4095, 0xFF)])
def test_any_padding_installs_as_the_same_image(
    device: Device, source: str, pad: int, fill: int
) -> None:
    new = image_bytes(BLOCKS, seed=4)
    bundle = device.bundle(new)
    bundle.write_bytes(repadded(bundle.read_bytes(), device.signer(), {0: pad}, fill))
    install(device, bundle, source)
    assert_installed(device, bundle=bundle)
    assert device.slot("B").read_bytes()[: len(new)] == new


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_a_padding_the_header_does_not_count_is_refused(device: Device, source: str) -> None:
    bundle = device.bundle(image_bytes(BLOCKS, seed=4))
    raw = bundle.read_bytes()
    h = container.parse_header(raw)
    obj = json.loads(raw[64 : 64 + h.manifest_size])
    obj["images"][0]["data_padding"] += 1  # the bytes and the header's payload size stay
    mraw = json.dumps(obj).encode()
    sigs = container.build_signature_block([signing.sign(mraw, device.signer())])
    head = container.Header(len(mraw), len(sigs), h.payload_size).to_bytes() + mraw + sigs
    bundle.write_bytes(head + raw[h.head_size :])
    before = device.snapshot()
    with pytest.raises(BundleError, match=r"header announces a \d+-byte payload, the manifest"):
        install(device, bundle, source)
    assert device.snapshot() == before


@pytest.fixture(scope="module")
def fit(tmp_path_factory: pytest.TempPathFactory, boot_keys: bootkeys.DevBootKeys) -> Path:
    return signed_fit(tmp_path_factory.mktemp("fit"), boot_keys.fit, "2.0.0")


@pytest.mark.parametrize("source", ["file", "stdin"])
@pytest.mark.parametrize("boot_first", [False, True], ids=["rootfs first", "boot first"])
@pytest.mark.parametrize("padded", [(0,), (1,), ()], ids=["first only", "second only", "none"])
def test_a_group_with_padding_on_some_images_installs(
    tmp_path: Path,
    pki: keygen.DevPki,
    fit: Path,
    *,
    source: str,
    boot_first: bool,
    padded: tuple[int, ...],
) -> None:
    device = fit_device(tmp_path / "dev", pki)
    bundle = group_bundle(device, fit, boot_first=boot_first)
    pads = {n: 4095 if n in padded else 0 for n in range(2)}
    bundle.write_bytes(repadded(bundle.read_bytes(), device.signer(), pads, 0xA5))
    install(device, bundle, source)
    assert device.control().boot_state().order[0] == "B"
    assert (device.boot_dir("B") / "boot.itb").read_bytes() == fit.read_bytes()


@pytest.mark.parametrize("fill", [0, 0xFF])
def test_any_padding_installs_over_https_whole_then_by_delta(
    device: Device, nginx_server: NginxServer, fill: int
) -> None:
    new = image_bytes(BLOCKS, seed=4)
    bundle = device.bundle(new)
    bundle.write_bytes(repadded(bundle.read_bytes(), device.signer(), {0: 4095}, fill))
    (Path(nginx_server.root) / "u.bundle").write_bytes(bundle.read_bytes())
    url = nginx_server.url("u.bundle")
    https_install(device, url, nginx_server.ca_file)
    assert_installed(device, bundle=bundle)
    again = https_install(device, url, nginx_server.ca_file)  # B holds it: all reused
    assert again.bytes_reused == len(new)  # type: ignore[attr-defined]
    assert_installed(device, bundle=bundle)
    assert device.slot("B").read_bytes()[: len(new)] == new


@pytest.mark.parametrize("first", [True, False], ids=["padded first", "older form first"])
def test_an_install_interrupted_from_one_form_resumes_from_the_other(
    device: Device, *, first: bool
) -> None:
    """Progress is the slot's, checked against the tree: where the data lay in the
    bundle it came from does not matter (both forms have the same root hash)."""
    new = image_bytes(BLOCKS, seed=14)
    one = device.bundle(new, "one.bundle", data_padding=first)
    other = device.bundle(new, "other.bundle", data_padding=not first)
    failing = Installer(device.config(), open_slot=FailingAfter500Blocks, tuning=SMALL_REGIONS)
    with FileSource(one) as src, pytest.raises(DeviceError, match="Input/output error"):
        failing.install(src)
    again = install_file(device, other, SMALL_REGIONS)
    assert again.bytes_reused >= 448 * 4096  # type: ignore[attr-defined]
    assert_installed(device, bundle=other)
    assert device.slot("B").read_bytes()[: len(new)] == new
