"""Signing and trust: real keys and certificates, no mocks."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import stat
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bundle_tool import keygen, signing, trust
from bundle_tool.errors import BundleError, TrustError, UsageError
from bundle_tool.keygen import PrivateKey, make_ca, make_signer
from bundle_tool.keyring import Keyring, load_keyring
from bundle_tool.signing import SignatureEntry, Signer, sign, verify_signatures

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
END = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
PAYLOAD = b'{"compatible": "qemu-arm64-uboot", "version": "1.2.0"}'
ALGORITHMS = ["ed25519", "ecdsa-p256"]


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@functools.cache
def ca(algorithm: str, name: str = "Test Root") -> tuple[PrivateKey, x509.Certificate]:
    return make_ca(common_name=name, algorithm=algorithm, not_before=START, not_after=END)


def signer(
    algorithm: str,
    *,
    issuer: tuple[PrivateKey, x509.Certificate] | None = None,
    chain: tuple[x509.Certificate, ...] = (),
    not_before: dt.datetime = START,
    not_after: dt.datetime = END,
    **kwargs: bool,
) -> Signer:
    ca_key, ca_cert = issuer if issuer is not None else ca(algorithm)
    key, cert = make_signer(
        ca_key,
        ca_cert,
        algorithm=algorithm,
        not_before=not_before,
        not_after=not_after,
        **kwargs,
    )
    return Signer(key=key, certificate=cert, chain=chain)


def keyring(algorithm: str) -> tuple[x509.Certificate, ...]:
    return (ca(algorithm)[1],)


def untrusted_reason(entry: SignatureEntry, ring: tuple[x509.Certificate, ...]) -> str:
    with pytest.raises(TrustError) as info:
        verify_signatures(PAYLOAD, [entry], ring, at=NOW)
    message = str(info.value)
    assert message.startswith("0 of 1 required signatures trusted; signature 1: ")
    assert "\n" not in message
    return message


# --- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_round_trip(algorithm: str) -> None:
    s = signer(algorithm)
    entry = sign(PAYLOAD, s)
    [verified] = verify_signatures(PAYLOAD, [entry], keyring(algorithm), at=NOW)
    spki = s.certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert verified.subject == s.certificate.subject.rfc4514_string()
    assert verified.fingerprint_sha256 == hashlib.sha256(der(s.certificate)).hexdigest()
    assert verified.key_id == hashlib.sha256(spki).hexdigest()
    assert entry.certificate == der(s.certificate)
    assert entry.chain == ()


def test_ed25519_signatures_are_deterministic() -> None:
    s = signer("ed25519")
    assert sign(PAYLOAD, s) == sign(PAYLOAD, s)
    assert sign(PAYLOAD, s).signature != sign(PAYLOAD + b" ", s).signature


def test_ecdsa_signatures_differ_but_both_verify() -> None:
    s = signer("ecdsa-p256")
    first, second = sign(PAYLOAD, s), sign(PAYLOAD, s)
    assert first.signature != second.signature
    for entry in (first, second):
        assert verify_signatures(PAYLOAD, [entry], keyring("ecdsa-p256"), at=NOW)


def test_signature_binds_the_certificates() -> None:
    s = signer("ed25519")
    message = signing.signed_message(PAYLOAD, der(s.certificate), ())
    assert message.startswith(signing.SIGNATURE_CONTEXT)
    assert message.endswith(PAYLOAD)
    assert signing.signed_message(PAYLOAD, der(s.certificate), (b"x",)) != message
    assert isinstance(s.key, ed25519.Ed25519PrivateKey)
    assert sign(PAYLOAD, s).signature == s.key.sign(message)


# --- untrusted signers ------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_unknown_ca(algorithm: str) -> None:
    entry = sign(PAYLOAD, signer(algorithm))
    other = ca(algorithm, "Other Root")[1]
    reason = untrusted_reason(entry, (other,))
    assert "Test Root" in reason
    assert "not a keyring CA" in reason


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_impostor_ca_with_the_same_name(algorithm: str) -> None:
    entry = sign(PAYLOAD, signer(algorithm))
    _, impostor = make_ca(
        common_name="Test Root", algorithm=algorithm, not_before=START, not_after=END
    )
    assert "does not verify with the key of" in untrusted_reason(entry, (impostor,))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_expired_certificate(algorithm: str) -> None:
    s = signer(algorithm, not_after=dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    reason = untrusted_reason(sign(PAYLOAD, s), keyring(algorithm))
    assert reason.endswith("certificate expired on 2026-03-01")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_not_yet_valid_certificate(algorithm: str) -> None:
    s = signer(algorithm, not_before=dt.datetime(2026, 7, 1, 8, 30, tzinfo=dt.UTC))
    reason = untrusted_reason(sign(PAYLOAD, s), keyring(algorithm))
    assert reason.endswith("certificate not valid before 2026-07-01 08:30:00 UTC")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_wrong_purpose_extended_key_usage(algorithm: str) -> None:
    s = signer(algorithm, eku_code_signing=False)
    assert "codeSigning" in untrusted_reason(sign(PAYLOAD, s), keyring(algorithm))
    with pytest.raises(UsageError, match="codeSigning"):
        signing.load_signer(keygen.key_pem(s.key), keygen.cert_pem(s.certificate))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_wrong_purpose_key_usage(algorithm: str) -> None:
    s = signer(algorithm, digital_signature=False)
    assert "digitalSignature" in untrusted_reason(sign(PAYLOAD, s), keyring(algorithm))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_ca_certificate_cannot_sign_bundles(algorithm: str) -> None:
    ca_key, ca_cert = ca(algorithm)
    entry = sign(PAYLOAD, Signer(key=ca_key, certificate=ca_cert))
    assert "CA certificate" in untrusted_reason(entry, keyring(algorithm))
    with pytest.raises(UsageError, match="CA certificate"):
        signing.load_signer(keygen.key_pem(ca_key), keygen.cert_pem(ca_cert))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_unknown_critical_extension_is_refused(algorithm: str) -> None:
    ca_key, ca_cert = ca(algorithm)
    s = signer(algorithm)
    builder = (
        x509.CertificateBuilder()
        .subject_name(s.certificate.subject)
        .issuer_name(ca_cert.subject)
        .public_key(s.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(START)
        .not_valid_after(END)
    )
    for ext in s.certificate.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    builder = builder.add_extension(
        x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00"),
        critical=True,
    )
    hash_algorithm = None if algorithm == "ed25519" else hashes.SHA256()
    cert = builder.sign(ca_key, hash_algorithm)  # type: ignore[arg-type]
    entry = sign(PAYLOAD, replace(s, certificate=cert))
    assert "unsupported critical extension 1.3.6.1.4.1.55555.1" in untrusted_reason(
        entry, keyring(algorithm)
    )


# --- wrong key, tampering ---------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_certificate_of_another_key_is_refused_at_load(algorithm: str) -> None:
    a, b = signer(algorithm), signer(algorithm)
    with pytest.raises(UsageError, match="does not belong to the signing key"):
        signing.load_signer(keygen.key_pem(a.key), keygen.cert_pem(b.certificate))
    with pytest.raises(UsageError, match="does not belong to the signing key"):
        sign(PAYLOAD, Signer(key=a.key, certificate=b.certificate))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_tampered_payload(algorithm: str) -> None:
    entry = sign(PAYLOAD, signer(algorithm))
    with pytest.raises(TrustError, match=r"^signature 1 does not match the bundle$"):
        verify_signatures(PAYLOAD + b"\n", [entry], keyring(algorithm), at=NOW)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_signature_swapped_between_certificates(algorithm: str) -> None:
    a, b = sign(PAYLOAD, signer(algorithm)), sign(PAYLOAD, signer(algorithm))
    with pytest.raises(TrustError, match="signature 2 does not match the bundle"):
        verify_signatures(
            PAYLOAD, [a, replace(b, signature=a.signature)], keyring(algorithm), at=NOW
        )


@functools.cache
def chained_entry(algorithm: str) -> tuple[SignatureEntry, tuple[x509.Certificate, ...]]:
    root_key, root = make_ca(
        common_name="Flip Root", algorithm=algorithm, not_before=START, not_after=END
    )
    inter_key, inter = make_ca(
        common_name="Flip Intermediate",
        algorithm=algorithm,
        not_before=START,
        not_after=END,
        issuer_key=root_key,
        issuer_cert=root,
    )
    entry = sign(PAYLOAD, signer(algorithm, issuer=(inter_key, inter), chain=(inter,)))
    verify_signatures(PAYLOAD, [entry], (root,), at=NOW)
    return entry, (root,)


@settings(max_examples=300, deadline=None)
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    field=st.sampled_from(["certificate", "chain", "signature"]),
    position=st.floats(min_value=0, max_value=1, exclude_max=True),
    mask=st.integers(min_value=1, max_value=255),
)
def test_any_flipped_byte_in_an_entry_is_refused(
    algorithm: str, field: str, position: float, mask: int
) -> None:
    entry, ring = chained_entry(algorithm)
    original = entry.chain[0] if field == "chain" else getattr(entry, field)
    data = bytearray(original)
    index = int(position * len(data))
    data[index] ^= mask
    if field == "chain":
        tampered = replace(entry, chain=(bytes(data),))
    else:
        tampered = replace(entry, **{field: bytes(data)})
    with pytest.raises((TrustError, BundleError)):
        verify_signatures(PAYLOAD, [tampered], ring, at=NOW)


def test_a_certificate_with_a_negative_serial_is_refused_without_a_warning() -> None:
    """RFC 5280 wants serial numbers positive; cryptography only warns about it (for now)."""
    entry, ring = chained_entry("ed25519")
    der = bytearray(entry.certificate)
    at = der.index(b"\xa0\x03\x02\x01\x02\x02") + 6  # the serial, after the version
    assert 0 < der[at] < 0x80  # its length
    der[at + 1] = 0x80  # the first byte of the serial: the number is now negative
    tampered = replace(entry, certificate=bytes(der))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would fail this test
        with pytest.raises(BundleError, match="not a valid DER certificate"):
            verify_signatures(PAYLOAD, [tampered], ring, at=NOW)


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(["certificate", "chain"]),
    position=st.floats(min_value=0, max_value=1, exclude_max=True),
    mask=st.integers(min_value=1, max_value=255),
)
# Turns a name attribute into a BitString, which cryptography refused with TypeError.
@example(field="chain", position=0.37890625, mask=15)
def test_flipped_byte_in_an_extra_entry_refuses_the_bundle(
    field: str, position: float, mask: int
) -> None:
    """A trusted first signature does not excuse a changed second entry."""
    entry, ring = chained_entry("ed25519")
    good = sign(PAYLOAD, signer("ed25519", issuer=ca("ed25519")))
    ring = (*ring, ca("ed25519")[1])
    assert len(verify_signatures(PAYLOAD, [good, entry], ring, at=NOW, threshold=2)) == 2
    data = bytearray(entry.chain[0] if field == "chain" else entry.certificate)
    data[int(position * len(data))] ^= mask
    if field == "chain":
        tampered = replace(entry, chain=(bytes(data),))
    else:
        tampered = replace(entry, certificate=bytes(data))
    with pytest.raises((TrustError, BundleError), match="signature 2"):
        verify_signatures(PAYLOAD, [good, tampered], ring, at=NOW)


@pytest.mark.parametrize("field", ["certificate", "signature"])
def test_truncated_entry_is_refused(field: str) -> None:
    entry, ring = chained_entry("ed25519")
    for cut in range(len(getattr(entry, field))):
        tampered = replace(entry, **{field: getattr(entry, field)[:cut]})
        with pytest.raises((TrustError, BundleError)):
            verify_signatures(PAYLOAD, [tampered], ring, at=NOW)


def test_garbage_certificate_is_a_bundle_error() -> None:
    entry = sign(PAYLOAD, signer("ed25519"))
    with pytest.raises(BundleError, match="signature 1: the certificate is not a valid DER"):
        verify_signatures(
            PAYLOAD, [replace(entry, certificate=b"\x30\x03abc")], keyring("ed25519"), at=NOW
        )


# --- thresholds and distinct keys -------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_duplicated_signature_counts_once(algorithm: str) -> None:
    entry = sign(PAYLOAD, signer(algorithm))
    ring = keyring(algorithm)
    assert len(verify_signatures(PAYLOAD, [entry, entry], ring, at=NOW)) == 1
    with pytest.raises(TrustError) as info:
        verify_signatures(PAYLOAD, [entry, entry], ring, at=NOW, threshold=2)
    assert str(info.value) == (
        "1 of 2 required signatures trusted; signature 2: same key as signature 1, counted once"
    )


def test_two_of_two_with_two_keys() -> None:
    a, b = signer("ed25519"), signer("ecdsa-p256")
    ring = (*keyring("ed25519"), *keyring("ecdsa-p256"))
    entries = [sign(PAYLOAD, a), sign(PAYLOAD, b)]
    verified = verify_signatures(PAYLOAD, entries, ring, at=NOW, threshold=2)
    assert [v.fingerprint_sha256 for v in verified] == [
        hashlib.sha256(e.certificate).hexdigest() for e in entries
    ]
    with pytest.raises(TrustError, match=r"^2 of 3 required"):
        verify_signatures(PAYLOAD, entries, ring, at=NOW, threshold=3)


def test_same_key_in_two_certificates_counts_once() -> None:
    ca_key, ca_cert = ca("ed25519")
    key, first = make_signer(ca_key, ca_cert, not_before=START, not_after=END)
    _, renewed = make_signer(ca_key, ca_cert, key=key, not_before=START, not_after=END)
    entries = [sign(PAYLOAD, Signer(key, first)), sign(PAYLOAD, Signer(key, renewed))]
    assert entries[0].certificate != entries[1].certificate
    with pytest.raises(TrustError, match="same key as signature 1, counted once"):
        verify_signatures(PAYLOAD, entries, keyring("ed25519"), at=NOW, threshold=2)


def test_renewed_certificate_counts_when_the_old_one_expired() -> None:
    ca_key, ca_cert = ca("ed25519")
    key, old = make_signer(
        ca_key, ca_cert, not_before=START, not_after=dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    )
    _, renewed = make_signer(ca_key, ca_cert, key=key, not_before=START, not_after=END)
    entries = [sign(PAYLOAD, Signer(key, old)), sign(PAYLOAD, Signer(key, renewed))]
    [verified] = verify_signatures(PAYLOAD, entries, keyring("ed25519"), at=NOW)
    assert verified.fingerprint_sha256 == hashlib.sha256(der(renewed)).hexdigest()


def test_untrusted_entry_does_not_count_and_is_named() -> None:
    good = sign(PAYLOAD, signer("ed25519"))
    expired = sign(PAYLOAD, signer("ed25519", not_after=dt.datetime(2026, 1, 2, tzinfo=dt.UTC)))
    ring = keyring("ed25519")
    assert len(verify_signatures(PAYLOAD, [good, expired], ring, at=NOW)) == 1
    with pytest.raises(TrustError) as info:
        verify_signatures(PAYLOAD, [good, expired], ring, at=NOW, threshold=2)
    assert str(info.value) == (
        "1 of 2 required signatures trusted; signature 2: certificate expired on 2026-01-02"
    )


@pytest.mark.parametrize("threshold", [0, -1])
def test_threshold_below_one_is_refused(threshold: int) -> None:
    entry = sign(PAYLOAD, signer("ed25519"))
    with pytest.raises(UsageError, match="at least 1"):
        verify_signatures(PAYLOAD, [entry], keyring("ed25519"), at=NOW, threshold=threshold)


def test_no_signature_and_bounds() -> None:
    entry = sign(PAYLOAD, signer("ed25519"))
    ring = keyring("ed25519")
    with pytest.raises(TrustError, match="no signature"):
        verify_signatures(PAYLOAD, [], ring, at=NOW)
    with pytest.raises(TrustError, match="keyring holds no certificate"):
        verify_signatures(PAYLOAD, [entry], (), at=NOW)
    with pytest.raises(BundleError, match="at most 16"):
        verify_signatures(PAYLOAD, [entry] * 17, ring, at=NOW)
    with pytest.raises(BundleError, match="at most 4"):
        verify_signatures(PAYLOAD, [replace(entry, chain=(entry.certificate,) * 5)], ring, at=NOW)
    with pytest.raises(BundleError, match="at most 16384"):
        verify_signatures(PAYLOAD, [replace(entry, certificate=b"\x30" * 16385)], ring, at=NOW)
    limit = signing.MAX_SIGNATURE_SIZE
    with pytest.raises(BundleError, match=f"at most {limit}"):
        verify_signatures(PAYLOAD, [replace(entry, signature=bytes(limit + 1))], ring, at=NOW)
    with pytest.raises(UsageError, match="time zone"):
        verify_signatures(PAYLOAD, [entry], ring, at=NOW.replace(tzinfo=None))
    assert len(verify_signatures(PAYLOAD, [entry] * 16, ring, at=NOW)) == 1


# --- intermediates ----------------------------------------------------------------------


def hierarchy(
    root_algorithm: str,
    algorithm: str,
    *,
    path_length: int | None = None,
    inter_end: dt.datetime = END,
) -> tuple[x509.Certificate, tuple[PrivateKey, x509.Certificate]]:
    root_key, root = make_ca(
        common_name=f"Root {root_algorithm}",
        algorithm=root_algorithm,
        not_before=START,
        not_after=END,
        path_length=path_length,
    )
    inter = make_ca(
        common_name=f"Intermediate {algorithm}",
        algorithm=algorithm,
        not_before=START,
        not_after=inter_end,
        issuer_key=root_key,
        issuer_cert=root,
    )
    return root, inter


@pytest.mark.parametrize(
    ("root_algorithm", "algorithm"),
    [
        ("ed25519", "ed25519"),
        ("ecdsa-p256", "ecdsa-p256"),
        ("ed25519", "ecdsa-p256"),
        ("ecdsa-p256", "ed25519"),
    ],
)
def test_intermediate_in_chain(root_algorithm: str, algorithm: str) -> None:
    root, inter = hierarchy(root_algorithm, algorithm)
    s = signer(algorithm, issuer=inter, chain=(inter[1],))
    entry = sign(PAYLOAD, s)
    assert entry.chain == (der(inter[1]),)
    [verified] = verify_signatures(PAYLOAD, [entry], (root,), at=NOW)
    assert verified.subject == s.certificate.subject.rfc4514_string()
    without = sign(PAYLOAD, replace(s, chain=()))
    assert "not a keyring CA" in untrusted_reason(without, (root,))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_four_intermediates_fit(algorithm: str) -> None:
    issuer_key, root = make_ca(
        common_name="Deep Root", algorithm=algorithm, not_before=START, not_after=END
    )
    issuer = root
    chain: list[x509.Certificate] = []
    for depth in range(4):
        issuer_key, issuer = make_ca(
            common_name=f"Level {depth}",
            algorithm=algorithm,
            not_before=START,
            not_after=END,
            issuer_key=issuer_key,
            issuer_cert=issuer,
        )
        chain.insert(0, issuer)
    s = signer(algorithm, issuer=(issuer_key, issuer), chain=tuple(chain))
    assert verify_signatures(PAYLOAD, [sign(PAYLOAD, s)], (root,), at=NOW)
    # Out of order in the bundle still builds the same path.
    shuffled = sign(PAYLOAD, replace(s, chain=tuple(reversed(chain))))
    assert verify_signatures(PAYLOAD, [shuffled], (root,), at=NOW)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_intermediate_expired(algorithm: str) -> None:
    root, inter = hierarchy(algorithm, algorithm, inter_end=dt.datetime(2026, 5, 1, tzinfo=dt.UTC))
    entry = sign(PAYLOAD, signer(algorithm, issuer=inter, chain=(inter[1],)))
    reason = untrusted_reason(entry, (root,))
    assert f"Intermediate {algorithm}" in reason
    assert "expired on 2026-05-01" in reason


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_path_length_constraint(algorithm: str) -> None:
    root, inter = hierarchy(algorithm, algorithm, path_length=0)
    entry = sign(PAYLOAD, signer(algorithm, issuer=inter, chain=(inter[1],)))
    assert "allows at most 0 intermediate CAs" in untrusted_reason(entry, (root,))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_signer_cannot_act_as_a_ca(algorithm: str) -> None:
    middle = signer(algorithm)
    entry = sign(
        PAYLOAD,
        signer(algorithm, issuer=(middle.key, middle.certificate), chain=(middle.certificate,)),
    )
    assert "is not a CA" in untrusted_reason(entry, keyring(algorithm))


def without_key_usage(cert: x509.Certificate, issuer_key: PrivateKey) -> x509.Certificate:
    """`cert` issued again by `issuer_key` with all its extensions but key usage."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(START)
        .not_valid_after(END)
    )
    for ext in cert.extensions:
        if not isinstance(ext.value, x509.KeyUsage):
            builder = builder.add_extension(ext.value, critical=ext.critical)
    hash_algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(issuer_key, hash_algorithm)  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_ca_without_key_usage_may_not_issue(algorithm: str) -> None:
    """A CA must say keyCertSign (docs/bundle-format.md), though RFC 5280 lets it say nothing."""
    root_key, root = make_ca(
        common_name="KU Root", algorithm=algorithm, not_before=START, not_after=END
    )
    inter_key, inter = make_ca(
        common_name="Intermediate without key usage",
        algorithm=algorithm,
        not_before=START,
        not_after=END,
        issuer_key=root_key,
        issuer_cert=root,
    )
    bare = without_key_usage(inter, root_key)
    s = signer(algorithm, issuer=(inter_key, bare), chain=(bare,))
    reason = untrusted_reason(sign(PAYLOAD, s), (root,))
    assert "'CN=Intermediate without key usage" in reason
    assert "may not sign certificates (no key usage; a CA needs keyCertSign)" in reason
    if algorithm != "ed25519":  # the library's path validation refuses it too
        problem = trust.library_problem(s.certificate, (bare,), Keyring((root,)), NOW)
        assert problem is not None and "X.509 path validation failed" in problem
    with pytest.raises(UsageError, match="no key usage; a CA needs keyCertSign"):
        load_keyring(keygen.cert_pem(without_key_usage(root, root_key)))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cross_signed_loop_without_anchor_ends(algorithm: str) -> None:
    key_a, key_b = keygen.generate_key(algorithm), keygen.generate_key(algorithm)
    _, cert_a = make_ca(common_name="Loop", key=key_a, not_before=START, not_after=END)
    _, a_by_b = make_ca(
        common_name="Loop",
        key=key_a,
        not_before=START,
        not_after=END,
        issuer_key=key_b,
        issuer_cert=cert_a,  # same name: B's certificate below says "Loop" too
    )
    _, b_by_a = make_ca(
        common_name="Loop",
        key=key_b,
        not_before=START,
        not_after=END,
        issuer_key=key_a,
        issuer_cert=cert_a,
    )
    s = signer(algorithm, issuer=(key_a, cert_a), chain=(a_by_b, b_by_a, cert_a))
    assert "not a keyring CA" in untrusted_reason(sign(PAYLOAD, s), keyring(algorithm))


def test_library_path_validation_agrees_on_ecdsa() -> None:
    """The second opinion from cryptography's verifier runs for all-ECDSA paths."""
    root, inter = hierarchy("ecdsa-p256", "ecdsa-p256")
    s = signer("ecdsa-p256", issuer=inter, chain=(inter[1],))
    ring = Keyring((root,))
    assert trust.library_problem(s.certificate, s.chain, ring, NOW) is None
    late = NOW + dt.timedelta(days=400)
    assert "not valid" in (trust.library_problem(s.certificate, s.chain, ring, late) or "")
    wrong = signer("ecdsa-p256", eku_code_signing=False)
    problem = trust.library_problem(wrong.certificate, (), Keyring(keyring("ecdsa-p256")), NOW)
    assert problem is not None
    assert "codeSigning" in problem


# --- algorithms -------------------------------------------------------------------------


def test_unsupported_signer_algorithm_is_named() -> None:
    ca_key, ca_cert = ca("ecdsa-p256")
    key = ec.generate_private_key(ec.SECP521R1())
    _, cert = make_signer(ca_key, ca_cert, key=key, not_before=START, not_after=END)  # type: ignore[arg-type]
    message = signing.signed_message(PAYLOAD, der(cert), ())
    entry = SignatureEntry(der(cert), (), key.sign(message, ec.ECDSA(hashes.SHA512())))
    with pytest.raises(
        TrustError, match=r"key algorithm ECDSA secp521r1 is not supported \(supported: Ed25519"
    ):
        verify_signatures(PAYLOAD, [entry], (ca_cert,), at=NOW)
    with pytest.raises(UsageError, match="secp521r1"):
        signing.load_signer(keygen.key_pem(key), keygen.cert_pem(cert))


def rsa_ca(bits: int) -> x509.Certificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "RSA Root")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(START)
        .not_valid_after(END)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


# --- keyring ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        (b"", "not a file of PEM CA certificates"),
        (b"garbage\n", "not a file of PEM CA certificates"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "block 1 is malformed"),
    ],
)
def test_keyring_garbage_is_refused(pem: bytes, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_keyring(pem)


def test_keyring_refuses_non_ca_and_unsupported_algorithms() -> None:
    leaf = signer("ed25519").certificate
    with pytest.raises(UsageError, match=r"keyring file: certificate 2: .* is not a CA"):
        load_keyring(keygen.cert_pem(ca("ed25519")[1], leaf))
    with pytest.raises(UsageError, match="key algorithm RSA-1024 is too weak"):
        load_keyring(keygen.cert_pem(rsa_ca(1024)))


def test_keyring_with_several_anchors() -> None:
    ring = load_keyring(keygen.cert_pem(ca("ed25519")[1], ca("ecdsa-p256")[1]))
    assert len(ring.anchors) == 2
    for algorithm in ALGORITHMS:
        assert verify_signatures(PAYLOAD, [sign(PAYLOAD, signer(algorithm))], ring, at=NOW)


# --- loading signers and the development PKI --------------------------------------------


def test_load_signer_with_chain_and_password() -> None:
    root, inter = hierarchy("ed25519", "ed25519")
    s = signer("ed25519", issuer=inter)
    encrypted = s.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    cert = keygen.cert_pem(s.certificate)
    chain = keygen.cert_pem(inter[1])
    loaded = signing.load_signer(encrypted, cert, chain, password=b"secret")
    assert loaded.chain == (inter[1],)
    assert verify_signatures(PAYLOAD, [sign(PAYLOAD, loaded)], (root,), at=NOW)
    with pytest.raises(UsageError, match="give its passphrase"):
        signing.load_signer(encrypted, cert)
    with pytest.raises(UsageError, match="passphrase is wrong"):
        signing.load_signer(encrypted, cert, password=b"wrong")
    with pytest.raises(UsageError, match="not encrypted"):
        signing.load_signer(keygen.key_pem(s.key), cert, password=b"secret")
    with pytest.raises(UsageError, match="give exactly one"):
        signing.load_signer(keygen.key_pem(s.key), cert + chain)
    with pytest.raises(UsageError, match="signing certificate: not PEM"):
        signing.load_signer(keygen.key_pem(s.key), b"nonsense")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_make_dev_pki(tmp_path: Path, algorithm: str) -> None:
    out = tmp_path / "keys"
    pki = keygen.make_dev_pki(out, algorithm=algorithm, days=30, now=NOW)
    assert sorted(p.name for p in out.iterdir()) == ["ca.key", "ca.pem", "signer.key", "signer.pem"]
    for path in (pki.ca_key, pki.signer_key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for path in (pki.ca_cert, pki.ca_key, pki.signer_key, pki.signer_cert):
        assert "DEVELOPMENT ONLY - NOT FOR PRODUCTION" in path.read_text()
    loaded = signing.load_signer(pki.signer_key.read_bytes(), pki.signer_cert.read_bytes())
    assert "NOT FOR PRODUCTION" in loaded.certificate.subject.rfc4514_string()
    ring = load_keyring(pki.ca_cert.read_bytes())
    entry = sign(PAYLOAD, loaded)
    assert verify_signatures(PAYLOAD, [entry], ring, at=NOW)
    with pytest.raises(TrustError, match="expired on"):
        verify_signatures(PAYLOAD, [entry], ring, at=NOW + dt.timedelta(days=31))
    with pytest.raises(UsageError, match="already exists"):
        keygen.make_dev_pki(out, now=NOW)


def test_make_dev_pki_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown key algorithm 'rsa'"):
        keygen.make_dev_pki(tmp_path, algorithm="rsa")
    with pytest.raises(UsageError, match="at least 1 day"):
        keygen.make_dev_pki(tmp_path, days=0)
    assert list(tmp_path.iterdir()) == []
