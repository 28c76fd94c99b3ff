"""A refusal names a bundle's untrusted certificates shortened.

Anyone can make a certificate, and its name can fill most of its 16384 bytes: a bundle of 16
such signatures was refused with a one-line reason of tens of kilobytes (on the terminal, in
the `--json` error, in the device's last-install.json), each issuer named whole.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bundle_tool import container, signing
from bundle_tool.errors import TrustError
from bundle_tool.keyring import MAX_NAME_SHOWN

COUNT = 16


def _signer(number: int) -> signing.Signer:
    """A self-made code-signing certificate whose name is 60 long units."""
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "u" * 60)] * 60)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(number)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=9))
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)
        .sign(key, None)
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return signing.load_signer(pem, cert.public_bytes(serialization.Encoding.PEM))


def test_untrusted_certificates_with_long_names_give_a_short_reason(
    keyring: tuple[object, ...],
) -> None:
    raw = b'{"x":1}'
    sigs = container.build_signature_block(
        [signing.sign(raw, _signer(n)) for n in range(1, COUNT + 1)]
    )
    head = container.Header(len(raw), len(sigs), 0).to_bytes() + raw + sigs
    try:
        container.verify_head(head, keyring, at=datetime.datetime.now(datetime.UTC))  # type: ignore[arg-type]
    except TrustError as e:
        reason = str(e)
    else:
        raise AssertionError("trusted")
    assert reason.startswith("0 of 1 required signatures trusted; signature 1: certificate")
    assert f"... ({len('OU=' + 'u' * 60) * 60 + 59} characters)" in reason
    assert len(reason) <= COUNT * (MAX_NAME_SHOWN + 150)
