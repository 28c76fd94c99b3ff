"""Signing with a key that stays on a PKCS#11 token, for real: SoftHSM2 and python-pkcs11."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bundle.bundles import run_tool, write_image
from tests.helpers.opensslpki import OpensslPki, Party
from tests.helpers.softhsm import Token, find_module, make_token

MODULE = find_module()
pytestmark = pytest.mark.skipif(
    MODULE is None, reason="SoftHSM2 is not installed (Debian package softhsm2)"
)


@pytest.fixture
def token(tmp_path: Path) -> Token:
    assert MODULE is not None
    return make_token(tmp_path / "hsm", MODULE)


def hsm_signer(tmp_path: Path, token: Token, algorithm: str) -> tuple[Party, Party, Party]:
    """Root and intermediate on disk; the signer's key moved onto the token."""
    pki = OpensslPki(tmp_path / "pki")
    root = pki.root("Root", "rsa3072")
    inter = pki.issue(root, "Intermediate", "p384", profile="intermediate")
    signer = pki.issue(inter, "HSM Signer", algorithm)
    token.import_key(signer.key, "bundle-signer", "01")
    signer.key.unlink()  # from now on the private key exists only on the token
    return root, inter, signer


def create(tmp_path: Path, token: Token, uri: str, signer: Party, inter: Party,
           *extra: str | Path, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]  # fmt: skip
    image = write_image(tmp_path / "rootfs.img", 8)
    return run_tool(
        "create", "--image", image, "--version", "1.0.0", "--compatible", "board",
        "--key", uri, "--cert", signer.cert, "--chain", inter.cert,
        "-o", tmp_path / "out.bundle", *extra, env={**token.env, **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize("algorithm", ["ed25519", "p256", "p384", "rsa2048", "rsa4096"])
def test_sign_on_the_token_and_verify_with_a_device_keyring(
    tmp_path: Path, token: Token, algorithm: str
) -> None:
    root, inter, signer = hsm_signer(tmp_path, token, algorithm)
    pin_file = tmp_path / "pin"
    pin_file.write_text(token.pin + "\n")
    uri = (
        f"pkcs11:token={token.label};object=bundle-signer;type=private"
        f"?module-path={token.module}&pin-source=file:{pin_file}"
    )
    r = create(tmp_path, token, uri, signer, inter)
    assert r.returncode == 0, r.stderr
    v = run_tool("verify", tmp_path / "out.bundle", "--keyring", root.cert, "--json")
    assert v.returncode == 0, v.stderr
    assert json.loads(v.stdout)["signers"] == ["CN=HSM Signer,O=Example Corp"]


def test_pin_from_the_environment_and_module_from_the_option(tmp_path: Path, token: Token) -> None:
    root, inter, signer = hsm_signer(tmp_path, token, "p256")
    uri = f"pkcs11:token={token.label};id=%01"
    r = create(tmp_path, token, uri, signer, inter, "--pkcs11-module", token.module,
               env={"BUNDLE_TOOL_PKCS11_PIN": token.pin})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert run_tool("verify", tmp_path / "out.bundle", "--keyring", root.cert).returncode == 0


@pytest.mark.parametrize(
    ("uri_tail", "message"),
    [
        ("object=bundle-signer?pin-value=9999", "the PIN for token 'build-hsm' is wrong"),
        ("object=nothing?pin-value=1234", "token 'build-hsm' holds no private key object=nothing"),
        ("object=bundle-signer;type=cert?pin-value=1234", "type=cert names no private key"),
        ("object=bundle-signer;colour=red", "unknown path attribute 'colour'"),
    ],
)
def test_token_problems_are_usage_errors(
    tmp_path: Path, token: Token, uri_tail: str, message: str
) -> None:
    _, inter, signer = hsm_signer(tmp_path, token, "p256")
    uri = f"pkcs11:token={token.label};{uri_tail}"
    r = create(tmp_path, token, uri, signer, inter, "--pkcs11-module", token.module)
    assert r.returncode == 2, r.stderr
    assert r.stderr == f"bundle-tool: error: {r.stderr.split('error: ', 1)[1]}"
    assert message in r.stderr
    assert r.stderr.count("\n") == 1
    assert not (tmp_path / "out.bundle").exists()


def test_certificate_of_another_key_is_refused(tmp_path: Path, token: Token) -> None:
    _, inter, _ = hsm_signer(tmp_path, token, "p256")
    other_pki = OpensslPki(tmp_path / "other")
    other = other_pki.issue(other_pki.root("Other Root", "p256"), "Other", "p256")
    uri = f"pkcs11:token={token.label};object=bundle-signer?pin-value={token.pin}"
    r = create(tmp_path, token, uri, other, inter, "--pkcs11-module", token.module)
    assert r.returncode == 2
    assert "the certificate belongs to another key" in r.stderr


def test_no_module_no_pin(tmp_path: Path, token: Token) -> None:
    _, inter, signer = hsm_signer(tmp_path, token, "p256")
    r = create(tmp_path, token, "pkcs11:object=bundle-signer", signer, inter)
    assert r.returncode == 2
    assert "give --pkcs11-module FILE or module-path=" in r.stderr
    r = create(tmp_path, token, "pkcs11:object=bundle-signer", signer, inter,
               "--pkcs11-module", token.module)  # fmt: skip
    assert r.returncode == 2
    assert "the token PIN needed and no terminal to ask on" in r.stderr
