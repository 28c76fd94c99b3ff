"""Bundle signatures: signing on the host, trust decisions on the device.

Pure functions over bytes and parsed certificates; the caller reads and writes files.

A signature entry carries the signer's certificate, optional intermediate CA certificates
and the signature. The signature does not cover the payload alone: it covers

    message = SIGNATURE_CONTEXT || SHA-256(certificate DER) || SHA-256(chain) || payload

where SHA-256(chain) is the digest of the concatenation, for each intermediate in order, of
its length as a 4-byte big-endian number and its DER bytes. Binding the certificates into
the signed message means that every byte of an entry is covered by its own signature, so a
changed certificate is caught even when it still parses and still holds the same key. The
context string keeps a bundle signature from being valid for anything else the same key
signs. How each key algorithm signs the message is in `algorithms`.

Trust: a signer counts if its certificate chains, through the bundle's intermediates, to a
CA certificate of the device's keyring at the given time, is valid at that time, is made
for code signing (key usage digitalSignature, extended key usage codeSigning), and neither
it nor an intermediate on the path is revoked by a CRL of the keyring. Each distinct public
key counts once toward the threshold.
"""

from __future__ import annotations

import datetime
import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.utils import CryptographyDeprecationWarning

from . import algorithms
from .algorithms import PrivateKey, PublicKey
from .errors import BundleError, TrustError, UsageError
from .keyring import MALFORMED, Keyring, as_keyring, label, touch
from .trust import purpose_problem, trust_problem

SIGNATURE_CONTEXT = b"abupdate-bundle-signature-v1\x00"
# The limits of a signature entry (docs/bundle-format.md, "Signature block"). The
# container's parser and the trust checks both apply these.
MAX_SIGNATURES = 16
MAX_CERTIFICATE_SIZE = 16 * 1024
MAX_CHAIN_LENGTH = 4
# RSA-4096 signatures are 512 bytes; DER ECDSA P-384 at most 104, Ed25519 64. Version 1
# bundles were limited to 128 bytes (Ed25519, P-256): every one of them stays within this.
MAX_SIGNATURE_SIZE = 512


class TokenKey(Protocol):
    """A private key held elsewhere (a PKCS#11 token): it signs, it is never read."""

    def sign_message(self, message: bytes, public_key: PublicKey) -> bytes:
        """Sign the signed message by the scheme `algorithms` gives for ``public_key``."""
        ...


@dataclass(frozen=True)
class SignatureEntry:
    """One signature as it travels in the bundle.

    Attributes:
        certificate: The signer's certificate, DER.
        chain: Intermediate CA certificates, DER, from the signer's issuer upwards (may be
            empty).
        signature: The signature over `signed_message` of the payload and certificates.
    """

    certificate: bytes
    chain: tuple[bytes, ...]
    signature: bytes


@dataclass(frozen=True)
class Signer:
    """A private key with its certificate and intermediates, on the host that signs.

    Attributes:
        key: A private key in memory, or a key on a token that signs for us.
        certificate: The certificate for ``key``.
        chain: Intermediate CA certificates, from the certificate's issuer upwards.
    """

    key: PrivateKey | TokenKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True)
class VerifiedSigner:
    """A signer whose signature verified and whose certificate is trusted.

    Attributes:
        subject: The certificate subject, RFC 4514.
        fingerprint_sha256: Hex SHA-256 of the certificate DER.
        key_id: Hex SHA-256 of the certificate's SubjectPublicKeyInfo DER.
    """

    subject: str
    fingerprint_sha256: str
    key_id: str


def signed_message(payload: bytes, certificate: bytes, chain: Sequence[bytes]) -> bytes:
    """Return the exact bytes a signature entry's signature covers.

    Args:
        payload: The signed bundle bytes (the raw manifest).
        certificate: The signer's certificate, DER.
        chain: The intermediate certificates, DER, in the order the entry carries them.

    Returns:
        ``SIGNATURE_CONTEXT || SHA-256(certificate) || SHA-256(chain) || payload``.
    """
    chain_digest = hashlib.sha256()
    for der in chain:
        chain_digest.update(len(der).to_bytes(4, "big"))
        chain_digest.update(der)
    return (
        SIGNATURE_CONTEXT + hashlib.sha256(certificate).digest() + chain_digest.digest() + payload
    )


def entry_size_problem(certificate: int, chain: Sequence[int], signature: int) -> str | None:
    """Why an entry of these sizes (bytes; one per intermediate) exceeds the limits, or None."""
    if len(chain) > MAX_CHAIN_LENGTH:
        return (
            f"carries {len(chain)} intermediate certificates; at most {MAX_CHAIN_LENGTH} "
            "are allowed"
        )
    sizes = [("the certificate", certificate)]
    sizes += [(f"intermediate certificate {i}", n) for i, n in enumerate(chain, start=1)]
    for what, size in sizes:
        if size > MAX_CERTIFICATE_SIZE:
            return f"{what} is {size} bytes; at most {MAX_CERTIFICATE_SIZE} are allowed"
    if signature > MAX_SIGNATURE_SIZE:
        return f"is {signature} bytes; at most {MAX_SIGNATURE_SIZE} are allowed"
    return None


def check_entry_size(entry: SignatureEntry, number: int) -> None:
    """Refuse an entry that exceeds the limits.

    Raises:
        BundleError: It does; the message names the entry by ``number``.
    """
    problem = entry_size_problem(
        len(entry.certificate), [len(c) for c in entry.chain], len(entry.signature)
    )
    if problem is not None:
        raise BundleError(f"signature {number} {problem}")


# --- host side --------------------------------------------------------------------------


def load_signer(
    key_pem: bytes,
    cert_pem: bytes,
    chain_pem: bytes | None = None,
    password: bytes | None = None,
) -> Signer:
    """Load a signing key, its certificate and optional intermediates from PEM.

    Args:
        key_pem: The private key, PEM (PKCS#8 or traditional) of a supported algorithm.
        cert_pem: Exactly one certificate, for that key.
        chain_pem: Intermediate CA certificates, from the certificate's issuer upwards.
        password: The key's passphrase, if it is encrypted.

    Returns:
        The signer.

    Raises:
        UsageError: A file cannot be read as what it should hold, the passphrase is
            missing or wrong, the key type is not supported, the certificate is for another
            key, or it is not for code signing.
    """
    return signer_for(load_private_key(key_pem, password), cert_pem, chain_pem)


def key_is_encrypted(key_pem: bytes) -> bool:
    """Whether a PEM private key needs a passphrase."""
    try:
        serialization.load_pem_private_key(key_pem, None)
    except TypeError:
        return True
    except (ValueError, UnsupportedAlgorithm):
        return False
    return False


def load_private_key(key_pem: bytes, password: bytes | None = None) -> PrivateKey:
    """Load a PEM private key of a supported algorithm.

    Raises:
        UsageError: It is not a PEM private key, the passphrase is missing, wrong or
            given for a key that is not encrypted, or the algorithm is refused.
    """
    try:
        loaded = serialization.load_pem_private_key(key_pem, password)
    except TypeError as exc:
        hint = (
            "it is encrypted; give its passphrase (--key-passphrase-file, "
            "BUNDLE_TOOL_KEY_PASSPHRASE, or a terminal prompt)"
            if password is None
            else "it is not encrypted, but a passphrase was given"
        )
        raise UsageError(f"cannot load the signing key: {hint}") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        reason = (
            "not a PEM private key"
            if password is None
            else "the passphrase is wrong, or it is not a PEM private key"
        )
        raise UsageError(f"cannot load the signing key: {reason}") from exc
    if not isinstance(
        loaded, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    ):
        raise UsageError(
            f"the signing key is {algorithms.describe(loaded)}; {algorithms.SUPPORTED}"
        )
    problem = algorithms.key_problem(loaded)
    if problem is not None:
        raise UsageError(f"the signing key cannot sign bundles: {problem}")
    return loaded


def signer_for(
    key: PrivateKey | TokenKey, cert_pem: bytes, chain_pem: bytes | None = None
) -> Signer:
    """A signer from a key and its certificate (and intermediates), PEM.

    Raises:
        UsageError: See `load_signer`.
    """
    certs = _load_pem_certificates(cert_pem, "the signing certificate")
    if len(certs) != 1:
        raise UsageError(
            f"the certificate file holds {len(certs)} certificates; give exactly one and pass "
            "intermediates as the chain"
        )
    chain = _load_pem_certificates(chain_pem, "the certificate chain") if chain_pem else ()
    signer = Signer(key=key, certificate=certs[0], chain=chain)
    _check_signer(signer)
    reason = purpose_problem(signer.certificate)
    if reason is not None:
        raise UsageError(f"the signing certificate cannot sign bundles: {reason}")
    return signer


def _load_pem_certificates(pem: bytes, what: str) -> tuple[x509.Certificate, ...]:
    try:
        certs = tuple(x509.load_pem_x509_certificates(pem))
        for cert in certs:
            touch(cert)
    except MALFORMED as exc:
        raise UsageError(f"cannot load {what}: not PEM certificates") from exc
    return certs


def _certificate_public_key(cert: x509.Certificate) -> PublicKey:
    problem = algorithms.certificate_key_problem(cert)
    key = algorithms.certificate_key(cert)
    if problem is not None or key is None:
        raise UsageError(f"the signing certificate cannot sign bundles: {problem}")
    return key


def _check_signer(signer: Signer) -> None:
    cert_key = _certificate_public_key(signer.certificate)
    key = signer.key
    if isinstance(
        key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    ) and algorithms.spki(key.public_key()) != algorithms.spki(cert_key):
        raise UsageError(
            "the signing certificate does not belong to the signing key (their public keys differ)"
        )
    if len(signer.chain) > MAX_CHAIN_LENGTH:
        raise UsageError(
            f"the chain holds {len(signer.chain)} certificates; at most {MAX_CHAIN_LENGTH} fit"
        )
    for cert in (signer.certificate, *signer.chain):
        size = len(cert.public_bytes(serialization.Encoding.DER))
        if size > MAX_CERTIFICATE_SIZE:
            raise UsageError(f"{label(cert)} is {size} bytes; at most {MAX_CERTIFICATE_SIZE} fit")


def sign(payload: bytes, signer: Signer) -> SignatureEntry:
    """Sign payload bytes.

    Ed25519 and RSA signatures are deterministic: the same payload and signer give the
    same bytes. ECDSA signatures differ each time.

    Args:
        payload: The bytes to sign (the raw manifest).
        signer: The key, certificate and intermediates.

    Returns:
        The signature entry to store in the bundle.

    Raises:
        UsageError: The signer's key type is not supported, the certificate is not for the
            key (for a token key: its signature does not verify with the certificate), or
            the chain is too long.
    """
    _check_signer(signer)
    der = signer.certificate.public_bytes(serialization.Encoding.DER)
    chain = tuple(c.public_bytes(serialization.Encoding.DER) for c in signer.chain)
    message = signed_message(payload, der, chain)
    cert_key = _certificate_public_key(signer.certificate)
    key = signer.key
    if isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        signature = algorithms.sign_message(key, message)
    else:
        signature = key.sign_message(message, cert_key)
        try:
            algorithms.verify_message(cert_key, signature, message)
        except InvalidSignature as exc:
            raise UsageError(
                "the token's key made a signature that the signing certificate's key does not "
                "verify: the certificate belongs to another key"
            ) from exc
    return SignatureEntry(certificate=der, chain=chain, signature=signature)


# --- device side ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    number: int
    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key_id: str
    fingerprint: str


def verify_signatures(
    payload: bytes,
    entries: Sequence[SignatureEntry],
    keyring: Keyring | Sequence[x509.Certificate],
    *,
    at: datetime.datetime,
    threshold: int = 1,
) -> tuple[VerifiedSigner, ...]:
    """Check a bundle's signatures and decide whether enough trusted signers signed it.

    Every entry must be well formed and its signature must verify; one that does not
    refuses the bundle. Of those, an entry counts if its certificate chains to the keyring
    at ``at``, is made for code signing and is not revoked by a keyring CRL; each distinct
    public key counts once.

    Args:
        payload: The signed bytes (the raw manifest).
        entries: The signature entries of the bundle.
        keyring: The trust anchors and CRLs (`keyring.load_keyring`), or CA certificates.
        at: The time at which certificates must be valid (timezone-aware).
        threshold: How many distinct trusted keys must have signed, at least 1.

    Returns:
        The trusted signers, one per distinct key, in entry order.

    Raises:
        UsageError: ``threshold`` is below 1 or ``at`` has no time zone.
        BundleError: An entry is oversized or its certificates are not parseable DER.
        TrustError: A signature does not verify, uses an unsupported algorithm, or fewer
            distinct trusted keys than ``threshold`` signed; the message says why each
            entry that did not count was not trusted.
    """
    if threshold < 1:
        raise UsageError(f"the signature threshold must be at least 1, not {threshold}")
    if at.tzinfo is None or at.utcoffset() is None:
        raise UsageError("the verification time must carry a time zone")
    at = at.astimezone(datetime.UTC)
    ring = as_keyring(keyring)
    if not ring.anchors:
        raise TrustError("the keyring holds no certificate")
    if not entries:
        raise TrustError("the bundle carries no signature")
    if len(entries) > MAX_SIGNATURES:
        raise BundleError(
            f"the bundle carries {len(entries)} signatures; at most {MAX_SIGNATURES} are allowed"
        )
    parsed = [_check_entry(payload, entry, number) for number, entry in enumerate(entries, 1)]

    trusted: dict[str, _Entry] = {}
    reasons: list[str] = []
    for entry in parsed:
        first = trusted.get(entry.key_id)
        if first is not None:
            reasons.append(
                f"signature {entry.number}: same key as signature {first.number}, counted once"
            )
            continue
        problem = trust_problem(entry.leaf, entry.chain, ring, at)
        if problem is None:
            trusted[entry.key_id] = entry
        else:
            reasons.append(f"signature {entry.number}: {problem}")
    if len(trusted) < threshold:
        if not reasons:
            count = f"{len(trusted)} signature" + ("" if len(trusted) == 1 else "s")
            reasons.append(
                f"the bundle carries only {count}, all trusted: sign it with "
                f"{threshold} distinct trusted keys"
            )
        raise TrustError(
            f"{len(trusted)} of {threshold} required signatures trusted; " + "; ".join(reasons)
        )
    return tuple(
        VerifiedSigner(
            subject=e.leaf.subject.rfc4514_string(),
            fingerprint_sha256=e.fingerprint,
            key_id=e.key_id,
        )
        for e in trusted.values()
    )


def _parse_der(der: bytes, number: int, what: str) -> x509.Certificate:
    if len(der) > MAX_CERTIFICATE_SIZE:
        raise BundleError(
            f"signature {number}: {what} is {len(der)} bytes; at most {MAX_CERTIFICATE_SIZE} "
            "are allowed"
        )
    try:
        return _parse_certificate(der)
    except MALFORMED as exc:
        raise BundleError(f"signature {number}: {what} is not a valid DER certificate") from exc


def _parse_certificate(der: bytes) -> x509.Certificate:
    # cryptography only warns, for now, about some encodings RFC 5280 forbids (such
    # as a serial number that is not positive); a bundle's certificates must not have
    # them, and a warning printed in the middle of an install helps nobody.
    with warnings.catch_warnings():
        warnings.simplefilter("error", CryptographyDeprecationWarning)
        try:
            cert = x509.load_der_x509_certificate(der)
            touch(cert)
        except CryptographyDeprecationWarning as exc:
            raise ValueError(str(exc)) from exc
    return cert


def _check_entry(payload: bytes, entry: SignatureEntry, number: int) -> _Entry:
    """Parse an entry and check its signature; any failure refuses the whole bundle."""
    check_entry_size(entry, number)
    leaf = _parse_der(entry.certificate, number, "the certificate")
    chain = tuple(
        _parse_der(der, number, f"intermediate certificate {i}")
        for i, der in enumerate(entry.chain, start=1)
    )
    try:
        leaf.public_key()
    except ValueError as exc:
        raise BundleError(f"signature {number}: the certificate's public key is malformed") from exc
    except UnsupportedAlgorithm:
        pass  # named below
    key = algorithms.certificate_key(leaf)
    if key is None:
        problem = algorithms.certificate_key_problem(leaf)
        raise TrustError(f"signature {number}: the signer's {problem}")
    message = signed_message(payload, entry.certificate, entry.chain)
    try:
        algorithms.verify_message(key, entry.signature, message)
    except InvalidSignature as exc:
        raise TrustError(f"signature {number} does not match the bundle") from exc
    return _Entry(
        number=number,
        leaf=leaf,
        chain=chain,
        key_id=hashlib.sha256(algorithms.spki(key)).hexdigest(),
        fingerprint=hashlib.sha256(entry.certificate).hexdigest(),
    )
