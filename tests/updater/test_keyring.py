"""The device keyring as a folder with CRLs: revoked signers refused, bad CRLs reported."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bundle_tool import keygen
from tests.bundle.bundles import run_tool
from tests.helpers.opensslpki import OpensslPki, Party
from tests.updater.device import Device, image_bytes, make_device
from updater.filesource import FileSource
from updater.install import Installer

BLOCKS = 64


def folder_keyring(device: Device, *files: Path) -> Path:
    """Make the device's keyring a folder holding ``files``."""
    folder = device.root / "keyring"
    folder.mkdir()
    for path in files:
        shutil.copy(path, folder / path.name)
    text = device.config_path.read_text()
    device.config_path.write_text(text.replace('keyring = "keyring.pem"', 'keyring = "keyring"'))
    return folder


@pytest.fixture
def ca(tmp_path: Path, pki: keygen.DevPki) -> tuple[OpensslPki, Party]:
    """The development CA run by `openssl ca`, with a database of its own for this test."""
    return OpensslPki(tmp_path / "ca"), Party("devca", "ed25519", pki.ca_key, pki.ca_cert)


def test_a_signer_revoked_by_a_keyring_crl_is_refused(
    tmp_path: Path, pki: keygen.DevPki, ca: tuple[OpensslPki, Party]
) -> None:
    device = make_device(tmp_path / "device", pki, image_bytes(BLOCKS, seed=1))
    bundle = device.bundle(image_bytes(BLOCKS, seed=2))
    openssl_ca, party = ca
    folder = folder_keyring(device, pki.ca_cert, openssl_ca.crl(party, out=tmp_path / "ca.crl"))
    with FileSource(bundle) as src:  # an empty CRL revokes nothing
        assert Installer(device.config()).check(src).signers

    signer = Party("signer", "ed25519", pki.signer_key, pki.signer_cert)
    openssl_ca.revoke(party, signer)
    openssl_ca.crl(party, out=folder / "ca.crl", pem=False)
    before = device.snapshot(target=True)
    r = device.cli("install", str(bundle))
    assert r.returncode == 4, r.stderr
    assert "is revoked by" in r.stderr
    assert "ca.crl" in r.stderr
    assert device.snapshot(target=True) == before


def test_a_stale_crl_is_reported_with_its_file(
    tmp_path: Path, pki: keygen.DevPki, ca: tuple[OpensslPki, Party]
) -> None:
    device = make_device(tmp_path / "device", pki, image_bytes(BLOCKS, seed=1))
    bundle = device.bundle(image_bytes(BLOCKS, seed=2))
    openssl_ca, party = ca
    stale = openssl_ca.crl(party, out=tmp_path / "old.crl", expired=True)
    folder_keyring(device, pki.ca_cert, stale)
    r = device.cli("install", str(bundle))
    assert r.returncode == 2, r.stderr  # the device's keyring is at fault, not the bundle
    assert "keyring/old.crl: the CRL of " in r.stderr
    assert "expired on 2024-02-01" in r.stderr


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        (b"", "is not a file of PEM CA certificates and CRLs"),
        (b"garbage\n", "is not a file of PEM CA certificates and CRLs"),
        (None, "PEM block 1 is a PRIVATE KEY"),  # the CA's key put there instead of its cert
    ],
)
def test_a_keyring_that_is_not_one_is_a_configuration_error(
    tmp_path: Path, pki: keygen.DevPki, contents: bytes | None, message: str
) -> None:
    """`updater install` and `bundle-tool verify` exit 2: the device is at fault, not the bundle."""
    device = make_device(tmp_path / "device", pki, image_bytes(BLOCKS, seed=1))
    bundle = device.bundle(image_bytes(BLOCKS, seed=2))
    keyring = device.root / "keyring.pem"
    keyring.write_bytes(pki.ca_key.read_bytes() if contents is None else contents)
    before = device.snapshot(target=True)
    r = device.cli("install", str(bundle))
    assert r.returncode == 2, r.stderr
    assert f"keyring {keyring} " in r.stderr or f"keyring {keyring}:" in r.stderr
    assert message in r.stderr
    assert device.snapshot(target=True) == before
    r = run_tool("verify", bundle, "--keyring", keyring)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
