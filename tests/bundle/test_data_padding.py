"""Data padding: each image's data starts on a 4096-byte boundary of the bundle file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from bundle_tool import container, keygen, reader, signing
from bundle_tool.errors import BundleError
from bundle_tool.keyring import load_keyring
from tests.bundle.bundles import BytesReader, now, resign, run_tool, write_image


def parts(raw: bytes, keyring: tuple[object, ...]) -> tuple[container.ImageLayout, ...]:
    """The images' places in a bundle whose signatures and payload were checked."""
    src = BytesReader(raw)
    head = reader.read_head(src, keyring, at=now())  # type: ignore[arg-type]
    reader.check_payload(src, head)
    return head.images


def manifest_images(raw: bytes) -> list[dict[str, object]]:
    h = container.parse_header(raw)
    images: list[dict[str, object]] = json.loads(raw[64 : 64 + h.manifest_size])["images"]
    return images


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256", "ecdsa-p384", "rsa3072"])
@pytest.mark.parametrize("leaf_summary", [True, False])
def test_every_image_data_starts_on_a_block(
    tmp_path: Path,
    make_bundle: Callable[..., Path],
    algorithm: str,
    leaf_summary: bool,
) -> None:
    pki = keygen.make_dev_pki(tmp_path / "pki", algorithm=algorithm)
    key = signing.load_signer(pki.signer_key.read_bytes(), pki.signer_cert.read_bytes())
    keyring = load_keyring(pki.ca_cert.read_bytes())
    second = write_image(tmp_path / "app.img", 300, seed=1)
    raw = make_bundle(
        blocks=140, signers=[key], leaf_summary=leaf_summary, extra_images=[("app", second)]
    ).read_bytes()
    places = parts(raw, keyring)
    assert len(places) == 2
    for part in places:
        assert part.data_offset % 4096 == 0
        pad = part.image.data_padding
        assert raw[part.data_offset - pad : part.data_offset] == bytes(pad)
    # Only the first image needs padding where its summary ends on a block.
    assert manifest_images(raw)[0]["data_padding"] == places[0].image.data_padding > 0


def test_without_padding_a_bundle_has_the_older_form(
    make_bundle: Callable[..., Path], keyring: tuple[object, ...]
) -> None:
    padded = make_bundle(blocks=140, name="a.bundle").read_bytes()
    older = make_bundle(blocks=140, name="b.bundle", data_padding=False).read_bytes()
    assert "data_padding" not in manifest_images(older)[0]
    (new,) = parts(padded, keyring)
    (old,) = parts(older, keyring)
    assert old.image.data_padding == 0
    assert old.data_offset % 4096 != 0  # this head does not end on a block
    size = new.image.size
    assert padded[new.data_offset : new.data_offset + size] == older[old.data_offset :][:size]
    assert (
        padded[new.area_offset : new.data_offset - new.image.data_padding]
        == (older[old.area_offset : old.data_offset])
    )


@pytest.mark.parametrize("value", [0, 4096, -1, "12", 1.5, True])
def test_a_padding_out_of_its_range_is_refused(
    make_bundle: Callable[..., Path],
    signer: signing.Signer,
    keyring: tuple[object, ...],
    value: object,
) -> None:
    raw = make_bundle().read_bytes()

    def edit(obj: dict) -> None:
        obj["images"][0]["data_padding"] = value

    hostile = resign(raw, signer, edit)
    with pytest.raises(BundleError, match=r"images\[0\]\.data_padding must be an integer"):
        reader.read_head(BytesReader(hostile), keyring, at=now())  # type: ignore[arg-type]


def test_padding_that_is_not_zeros_is_refused_by_verify(
    tmp_path: Path, make_bundle: Callable[..., Path], keyring: tuple[object, ...], pki: object
) -> None:
    path = make_bundle(blocks=140)
    raw = bytearray(path.read_bytes())
    (part,) = parts(bytes(raw), keyring)
    assert part.image.data_padding
    raw[part.data_offset - 1] = 1  # not signed: the signatures still verify
    bad = tmp_path / "bad.bundle"
    bad.write_bytes(bytes(raw))
    r = run_tool("verify", bad, "--keyring", pki.ca_cert)  # type: ignore[attr-defined]
    assert r.returncode == 3, r.stderr
    assert r.stderr.strip() == (
        "bundle-tool: error: rootfs image: the padding before its data is not zeros"
    )
    assert run_tool("verify", path, "--keyring", pki.ca_cert).returncode == 0  # type: ignore[attr-defined]


def test_info_shows_the_padding(make_bundle: Callable[..., Path]) -> None:
    path = make_bundle(blocks=140)
    pad = manifest_images(path.read_bytes())[0]["data_padding"]
    r = run_tool("info", path)
    assert r.returncode == 0, r.stderr
    assert f"  data padding {pad} bytes" in r.stdout.splitlines()


def test_a_head_of_another_size_than_planned_still_gives_a_valid_bundle(
    make_bundle: Callable[..., Path], keyring: tuple[object, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bundle_tool import writer

    # Plan for signatures of 1 byte: every real one is longer, the images are moved.
    monkeypatch.setattr(writer, "_usual_size", lambda signer: 1)
    raw = make_bundle(blocks=140).read_bytes()
    (part,) = parts(raw, keyring)  # verified, padding zeros included
    assert part.image.data_padding and part.data_offset % 4096 != 0


def test_the_plan_aligns_the_data_whatever_the_head_size(signer: signing.Signer) -> None:
    """Only where no padding fits its own digits (the head needs 9 bytes of a 1-digit
    padding or 10 of a 2-digit one, and so at 99 and 999) is the data left off a block;
    the plan is always one the head has."""
    from bundle_tool import leafsummary, verity, writer
    from bundle_tool.manifest import Image, VerityInfo

    blocks = 140
    vinfo = VerityInfo(bytes(32), bytes(32), blocks, verity.Geometry.for_blocks(blocks).area_size)
    image = Image("rootfs", blocks * 4096, None, vinfo, None, leafsummary.summary_size(blocks))
    unaligned = []
    for n in range(4096):  # the head takes each size modulo 4096 once
        opts = writer.CreateOptions(Path("x.img"), "1.0.0", "b" + "x" * n, [signer], build_time=0)
        (padded,), head_size = writer._plan(opts, [image], ())
        assert head_size == writer._planned_head_size(
            writer._manifest(opts, [padded], ()), [signer]
        )
        if (head_size + padded.data_start) % 4096:
            unaligned.append(n)
    assert len(unaligned) == 3, unaligned


def test_a_bundle_resigned_by_a_key_of_the_same_kind_keeps_its_data_on_a_block(
    tmp_path: Path, make_bundle: Callable[..., Path]
) -> None:
    """`resign` makes each signature of its usual length, as `create` does: an ECDSA
    signature, a byte longer or shorter half the time, would move every image's data."""
    from bundle_tool import writer

    pki = keygen.make_dev_pki(tmp_path / "pki", algorithm="ecdsa-p256")
    key = signing.load_signer(pki.signer_key.read_bytes(), pki.signer_cert.read_bytes())
    keyring = load_keyring(pki.ca_cert.read_bytes())
    path = make_bundle(blocks=140, signers=[key])
    size = container.parse_header(path.read_bytes()).head_size
    for n in range(8):
        out = tmp_path / f"{n}.bundle"
        writer.resign_bundle(path, [key], out)
        raw = out.read_bytes()
        assert container.parse_header(raw).head_size == size
        (part,) = parts(raw, keyring)
        assert part.data_offset % 4096 == 0


def test_a_signature_that_comes_out_the_same_is_not_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deterministic signer (RFC 6979 ECDSA, a token) gives one length only: signing
    again (each time on a token, perhaps asking for its PIN) would change nothing."""
    from bundle_tool import writer

    pki = keygen.make_dev_pki(tmp_path / "pki", algorithm="ecdsa-p256")
    key = signing.load_signer(pki.signer_key.read_bytes(), pki.signer_cert.read_bytes())
    calls: list[bytes] = []

    def deterministic(message: bytes, signer: signing.Signer) -> container.SignatureEntry:
        calls.append(message)
        return container.SignatureEntry(b"cert", (), bytes(70))  # one byte short of usual

    monkeypatch.setattr(writer, "sign", deterministic)
    assert writer._sign_usual(b"manifest", key).signature == bytes(70)
    assert len(calls) == 2


@pytest.mark.parametrize("algorithm", ["ed25519", "rsa3072", "ecdsa-p256"])
def test_two_creates_of_several_images_and_artifacts_are_the_same(
    tmp_path: Path, make_bundle: Callable[..., Path], algorithm: str
) -> None:
    """Byte for byte with Ed25519 and RSA; with ECDSA but for the signatures, which
    have their usual length, so the padding and every place are the same."""
    pki = keygen.make_dev_pki(tmp_path / "pki", algorithm=algorithm)
    key = signing.load_signer(pki.signer_key.read_bytes(), pki.signer_cert.read_bytes())
    extra = [("app", write_image(tmp_path / "app.img", 300, seed=1))]
    extra.append(("data", write_image(tmp_path / "data.img", 1, seed=2)))
    (tmp_path / "kernel").write_bytes(bytes(range(256)) * 39)
    (tmp_path / "notes.txt").write_bytes(b"notes\n")
    arts = [tmp_path / "kernel", tmp_path / "notes.txt"]
    a, b = (
        make_bundle(
            blocks=140, name=name, signers=[key], extra_images=extra, artifacts=arts
        ).read_bytes()
        for name in ("a.bundle", "b.bundle")
    )
    ha, hb = container.parse_header(a), container.parse_header(b)
    assert ha == hb and a[64 : 64 + ha.manifest_size] == b[64 : 64 + hb.manifest_size]
    assert a[ha.head_size :] == b[hb.head_size :]
    assert (a == b) == (algorithm != "ecdsa-p256")
    places = parts(a, load_keyring(pki.ca_cert.read_bytes()))
    assert [p.data_offset % 4096 for p in places] == [0, 0, 0]
