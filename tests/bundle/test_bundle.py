"""Bundles end to end: build, verify, tamper, truncate, reproduce."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundle_tool import container, reader, signing
from bundle_tool.errors import BundleError, PolicyError, TrustError, UsageError
from bundle_tool.keyring import load_keyring
from bundle_tool.manifest import parse_manifest
from bundle_tool.policy import check_policy
from bundle_tool.writer import CreateOptions, create_bundle
from tests.bundle.bundles import BUILD_TIME, BytesReader, now, resign, write_image


def verify(data: bytes, keyring: tuple[object, ...]) -> container.VerifiedHead:
    src = BytesReader(data)
    head = reader.read_head(src, keyring, at=now())  # type: ignore[arg-type]
    reader.check_payload(src, head)
    return head


def test_round_trip(make_bundle: Callable[..., Path], keyring: tuple[object, ...]) -> None:
    path = make_bundle(blocks=300)
    head = verify(path.read_bytes(), keyring)
    image = head.manifest.images[0]
    data = (path.parent / "b.bundle.img").read_bytes()
    assert image.size == len(data)
    assert image.sha256 is None  # the tree binds every byte: no whole-image pass by default
    assert head.total_size == path.stat().st_size
    # The data region of the bundle is the image, byte for byte.
    part = head.images[0]
    raw = path.read_bytes()
    assert raw[part.data_offset : part.data_offset + image.size] == data


def test_the_whole_image_sha256_on_request(
    make_bundle: Callable[..., Path], keyring: tuple[object, ...]
) -> None:
    path = make_bundle(blocks=300, image_sha256=True)
    data = (path.parent / "b.bundle.img").read_bytes()
    image = verify(path.read_bytes(), keyring).manifest.images[0]
    assert image.sha256 == hashlib.sha256(data).digest()
    assert '"sha256":"' in path.read_bytes()[64:4096].decode("utf-8", "replace")


def test_a_wrong_whole_image_sha256_is_refused(
    make_bundle: Callable[..., Path], keyring: tuple[object, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle whose manifest gives a whole-image SHA-256 is still held to it."""
    from bundle_tool import writer

    class WrongSha:
        def update(self, data: bytes) -> None:
            pass

        def digest(self) -> bytes:
            return bytes(32)

    monkeypatch.setattr(writer, "hashlib", SimpleNamespace(sha256=WrongSha))
    path = make_bundle(blocks=40, image_sha256=True)
    monkeypatch.undo()
    with pytest.raises(BundleError, match="image sha256 does not match"):
        verify(path.read_bytes(), keyring)


def test_reproducible(make_bundle: Callable[..., Path]) -> None:
    a = make_bundle(name="a.bundle").read_bytes()
    b = make_bundle(name="b.bundle").read_bytes()
    assert a == b


def test_ecdsa_reproducible_but_for_signature(
    tmp_path: Path, make_bundle: Callable[..., Path]
) -> None:
    from bundle_tool import keygen

    pki = keygen.make_dev_pki(tmp_path / "ec", algorithm="ecdsa-p256")
    ec = signing.load_signer(pki.signer_key.read_bytes(), pki.signer_cert.read_bytes())
    a = make_bundle(name="a.bundle", signers=[ec]).read_bytes()
    b = make_bundle(name="b.bundle", signers=[ec]).read_bytes()
    ha, hb = container.parse_header(a), container.parse_header(b)
    assert (ha.manifest_size, ha.payload_size) == (hb.manifest_size, hb.payload_size)
    assert a[64 : 64 + ha.manifest_size] == b[64 : 64 + hb.manifest_size]
    assert a[ha.head_size :] == b[hb.head_size :]
    assert a[: ha.head_size] != b[: hb.head_size]  # ECDSA signatures are randomised


REGIONS = ("header", "manifest", "signatures", "tree", "summary", "padding", "data")
SMALL_SUMMARY = 2 * 64  # 140 blocks: two leaf blocks, 64 bytes each


def region_span(data: bytes, region: str) -> tuple[int, int]:
    h = container.parse_header(data)
    (part,), _ = container.layout(h, parse_manifest(data[64 : 64 + h.manifest_size]))
    summary_end = part.summary_offset + part.image.leaf_summary_size
    return {
        "header": (0, 64),
        "manifest": (64, 64 + h.manifest_size),
        "signatures": (64 + h.manifest_size, h.head_size),
        "tree": (h.head_size, part.summary_offset),
        "summary": (part.summary_offset, summary_end),
        "padding": (summary_end, part.data_offset),
        "data": (part.data_offset, len(data)),
    }[region]


def test_the_regions_are_the_parts_of_the_bundle(small_bundle: bytes) -> None:
    spans = [region_span(small_bundle, r) for r in REGIONS]
    assert [lo for lo, _ in spans[1:]] == [hi for _, hi in spans[:-1]]  # each after the last
    assert spans[-1][1] == len(small_bundle)
    lengths = {r: hi - lo for r, (lo, hi) in zip(REGIONS, spans, strict=True)}
    assert lengths["summary"] == SMALL_SUMMARY and lengths["data"] == 140 * 4096
    assert 0 < lengths["padding"] < 4096 and spans[-1][0] % 4096 == 0
    summary, padding = (small_bundle[lo:hi] for lo, hi in spans[4:6])
    assert any(summary) and not any(padding)


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory: pytest.TempPathFactory, signer: signing.Signer) -> bytes:
    image = write_image(tmp_path_factory.mktemp("img") / "img", 140)
    out = image.with_suffix(".bundle")
    create_bundle(
        CreateOptions(image, "1.0.0", "test-board", [signer], BUILD_TIME, salt=b"x" * 32), out
    )
    return out.read_bytes()


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    region=st.sampled_from(REGIONS),
    where=st.floats(0, 1, exclude_max=True),
    mask=st.integers(1, 255),
)
def test_any_flipped_byte_is_refused(
    small_bundle: bytes, keyring: tuple[object, ...], region: str, where: float, mask: int
) -> None:
    lo, hi = region_span(small_bundle, region)
    pos = lo + int(where * (hi - lo))
    bad = bytearray(small_bundle)
    bad[pos] ^= mask
    with pytest.raises((BundleError, TrustError)):
        verify(bytes(bad), keyring)


def boundaries(data: bytes) -> list[int]:
    h = container.parse_header(data)
    tree_end = region_span(data, "tree")[1]
    padding, data_start = region_span(data, "padding")
    points = [
        0,
        8,
        63,
        64,
        65 + 10,
        64 + h.manifest_size,
        h.head_size - 1,
        h.head_size,
        h.head_size + 4096,
        tree_end - 1,
        tree_end,
        padding - 1,
        padding,
        data_start - 1,
        data_start,
        data_start + 4096,
        len(data) - 1,
    ]
    return sorted(set(points))


def test_truncation_at_every_boundary_fails_cleanly(
    small_bundle: bytes, keyring: tuple[object, ...]
) -> None:
    for cut in boundaries(small_bundle):
        with pytest.raises(BundleError):
            verify(small_bundle[:cut], keyring)


def test_appended_byte_fails(small_bundle: bytes, keyring: tuple[object, ...]) -> None:
    with pytest.raises(BundleError, match="1 bytes the manifest does not account for"):
        verify(small_bundle + b"\0", keyring)


def test_image_size_not_multiple_of_4096_is_refused(tmp_path: Path, signer: signing.Signer) -> None:
    image = tmp_path / "odd.img"
    image.write_bytes(bytes(4096 * 3 + 100))
    with pytest.raises(UsageError, match="not a positive multiple of 4096"):
        create_bundle(CreateOptions(image, "1.0.0", "b", [signer], BUILD_TIME), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(extra=1), "unknown key 'extra'"),
        (lambda m: m["images"][0]["verity"].update(flavour="x"), "unknown key 'flavour'"),
        (lambda m: m.update(format=2), "format 2 is not supported"),
        (lambda m: m.pop("compatible"), "lacks 'compatible'"),
        (lambda m: m.update(version="1.0"), "version is malformed"),
        (lambda m: m.update(security_version=-1), "security_version must be"),
        (lambda m: m["images"][0].update(size=4096), "size does not match"),
        (lambda m: m["images"][0]["verity"].update(tree_size=8192), "tree_size is 8192"),
        (lambda m: m["images"][0]["verity"].update(data_block_size=512), "data_block_size"),
        (lambda m: m["images"][0]["verity"].update(hash_algorithm="sha1"), "hash_algorithm"),
        (lambda m: m["images"][0].update(leaf_summary_size=64), "leaf_summary_size is 64"),
        (lambda m: m["images"][0].update(leaf_summary_size=0), "leaf_summary_size must be"),
    ],
)
def test_signed_but_malformed_manifests_are_refused(
    small_bundle: bytes,
    signer: signing.Signer,
    keyring: tuple[object, ...],
    edit: Callable[[dict], None],
    message: str,
) -> None:
    with pytest.raises(BundleError, match=message):
        verify(resign(small_bundle, signer, edit), keyring)


def test_duplicate_manifest_keys_are_refused() -> None:
    with pytest.raises(BundleError, match="duplicate key 'format'"):
        parse_manifest(b'{"format":1,"format":1}')


@pytest.mark.parametrize("raw", [b"", b"[]", b"{", b"\xff", b'{"format":1}', b"1" * 10])
def test_garbage_manifests_raise_bundle_error(raw: bytes) -> None:
    with pytest.raises(BundleError):
        parse_manifest(raw)


def test_unsigned_bundle_is_refused(small_bundle: bytes, keyring: tuple[object, ...]) -> None:
    h = container.parse_header(small_bundle)
    empty = (0).to_bytes(8, "little")
    header = container.Header(h.manifest_size, len(empty), h.payload_size)
    data = header.to_bytes() + small_bundle[64 : 64 + h.manifest_size] + empty
    with pytest.raises(BundleError, match="signature block"):
        verify(data + small_bundle[h.head_size :], keyring)


def test_untrusted_signer_is_refused(tmp_path: Path, small_bundle: bytes) -> None:
    from bundle_tool import keygen

    other = keygen.make_dev_pki(tmp_path / "other")
    with pytest.raises(TrustError):
        verify(small_bundle, load_keyring(other.ca_cert.read_bytes()))


def test_policy(small_bundle: bytes, keyring: tuple[object, ...]) -> None:
    m = verify(small_bundle, keyring).manifest
    check_policy(m, compatible="test-board", at=now(), security_floor=0)
    with pytest.raises(PolicyError, match="bundle is for 'test-board'"):
        check_policy(m, compatible="other", at=now())
    with pytest.raises(PolicyError, match="below this device's anti-rollback floor 1"):
        check_policy(m, compatible=None, at=now(), security_floor=1)
    expiring = replace(m, expires=BUILD_TIME)
    with pytest.raises(PolicyError, match="expired on 2023-11-14"):
        check_policy(expiring, compatible=None, at=now())


def test_header_bounds() -> None:
    good = container.Header(100, 100, 0).to_bytes()
    container.parse_header(good)
    for header in (
        container.Header(-1, 100, 0),
        container.Header(100, -1, 0),
        container.Header(100, 100, -1),
        container.Header(2 << 20, 100, 0),
        container.Header(100, 2 << 20, 0),
    ):
        with pytest.raises(BundleError):
            container.parse_header(header.to_bytes())
    with pytest.raises(BundleError, match="bad magic"):
        container.parse_header(b"X" + good[1:])
    with pytest.raises(BundleError, match="malformed"):
        container.parse_header(good[:40] + b"\1" + good[41:])


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a tmpfs at /dev/shm")
def test_image_and_output_on_different_filesystems(
    tmp_path: Path, signer: signing.Signer, keyring: tuple[object, ...]
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        image = write_image(Path(shm) / "img", 300)
        out = tmp_path / "b.bundle"
        create_bundle(CreateOptions(image, "1.0.0", "b", [signer], BUILD_TIME), out)
        head = verify(out.read_bytes(), keyring)
        part = head.images[0]
        assert out.read_bytes()[part.data_offset :] == image.read_bytes()
