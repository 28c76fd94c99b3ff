"""PKCS#11 URIs (RFC 7512) as `--key` takes them: pure parsing."""

from __future__ import annotations

import pytest

from bundle_tool.errors import UsageError
from bundle_tool.pkcs11uri import is_pkcs11_uri, parse_pkcs11_uri


def test_path_and_query_attributes_are_percent_decoded() -> None:
    uri = parse_pkcs11_uri(
        "pkcs11:token=Build%20HSM;object=bundle%3Bsigner;id=%01%a0;type=private"
        "?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin"
    )
    assert uri.token == "Build HSM"
    assert uri.object == "bundle;signer"
    assert uri.object_id == b"\x01\xa0"
    assert uri.module_path == "/usr/lib/softhsm/libsofthsm2.so"
    assert uri.pin_source == "file:/run/pin"
    assert uri.pin_value is None


def test_rfc_7512_example_with_serial_and_pin_value() -> None:
    uri = parse_pkcs11_uri("pkcs11:serial=DECC0401648;object=SIGN%20pubkey?pin-value=1234")
    assert (uri.serial, uri.object, uri.pin_value) == ("DECC0401648", "SIGN pubkey", "1234")
    assert is_pkcs11_uri("PKCS11:object=x")
    assert not is_pkcs11_uri("keys/signer.key")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("keys/signer.key", "is not a PKCS#11 URI"),
        ("pkcs11:token=a", "name the key with object=LABEL or id="),
        ("pkcs11:object=a;object=b", "attribute 'object' is given twice"),
        ("pkcs11:object=a;flavour=x", "unknown path attribute 'flavour'"),
        ("pkcs11:object=a?pin=1", "unknown query attribute 'pin'"),
        ("pkcs11:object=a;type=public", "type=public names no private key"),
        ("pkcs11:object=a?pin-value=1&pin-source=f", "pin-value or pin-source, not both"),
        ("pkcs11:object", "attribute 'object' is not NAME=VALUE"),
        ("pkcs11:object=%ff", "attribute 'object' is not UTF-8"),
    ],
)
def test_bad_uris_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_pkcs11_uri(text)
