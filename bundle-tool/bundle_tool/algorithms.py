"""Which key and signature algorithms bundles and keyrings may use, and how each signs.

One table for the signer (host) and the verifier (device). A bundle signature is made
over the signed message (see `signing.signed_message`) with the scheme its certificate's
key determines:

* Ed25519: the message itself (RFC 8032, deterministic).
* ECDSA P-256: SHA-256 of the message; ECDSA P-384: SHA-384 (each curve with the hash of
  its strength, as TLS and CNSA pair them); signature DER ``(r, s)``.
* RSA 2048 to 4096 bits: RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8017). Chosen over PSS
  because it is deterministic (the same key and bundle give the same bytes, so re-signing
  is reproducible), because every HSM and PKCS#11 token offers it
  (``CKM_SHA256_RSA_PKCS``), and because verification here is strict (the whole encoded
  block is compared), which rules out the forgeries that lax PKCS#1 v1.5 parsers allowed.

Certificates (signer, intermediates) may be signed with any of these keys and SHA-256,
SHA-384 or SHA-512 (RSA also with PSS). SHA-1 and RSA below 2048 bits are refused with a
reason; so are keys whose signatures would not fit the signature entry.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import SignatureAlgorithmOID

from .errors import UsageError

#: RSA keys must have at least this many bits (NIST SP 800-131A: 2048 since 2014).
MIN_RSA_BITS = 2048
#: And at most this many: a 4096-bit key's signature is 512 bytes, the entry's limit.
MAX_RSA_BITS = 4096

SUPPORTED = "supported: Ed25519, ECDSA P-256 and P-384, RSA 2048 to 4096 bits"

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_CURVES: dict[str, tuple[str, hashes.HashAlgorithm]] = {
    ec.SECP256R1.name: ("P-256", hashes.SHA256()),
    ec.SECP384R1.name: ("P-384", hashes.SHA384()),
}
_CERT_SIGNATURES = (
    SignatureAlgorithmOID.ED25519,
    SignatureAlgorithmOID.ECDSA_WITH_SHA256,
    SignatureAlgorithmOID.ECDSA_WITH_SHA384,
    SignatureAlgorithmOID.ECDSA_WITH_SHA512,
    SignatureAlgorithmOID.RSA_WITH_SHA256,
    SignatureAlgorithmOID.RSA_WITH_SHA384,
    SignatureAlgorithmOID.RSA_WITH_SHA512,
    SignatureAlgorithmOID.RSASSA_PSS,
)
_WEAK_SIGNATURES = {
    SignatureAlgorithmOID.RSA_WITH_SHA1: "SHA-1",
    SignatureAlgorithmOID._RSA_WITH_SHA1: "SHA-1",
    SignatureAlgorithmOID.ECDSA_WITH_SHA1: "SHA-1",
    SignatureAlgorithmOID.DSA_WITH_SHA1: "SHA-1",
    SignatureAlgorithmOID.RSA_WITH_MD5: "MD5",
}


def oid_name(oid: x509.ObjectIdentifier) -> str:
    """A readable name for an object identifier, or its dotted form."""
    name = oid._name
    return oid.dotted_string if name == "Unknown OID" else name


def describe(key: object) -> str:
    """Name a key's algorithm as messages show it: ``RSA-3072``, ``ECDSA P-384``, ..."""
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "Ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        known = _CURVES.get(key.curve.name)
        return f"ECDSA {known[0] if known else key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"RSA-{key.key_size}"
    return type(key).__name__


def key_problem(key: object) -> str | None:
    """Why a (public or private) key may not sign bundles or certificates, or None."""
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if key.curve.name in _CURVES:
            return None
        return f"key algorithm {describe(key)} is not supported ({SUPPORTED})"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            return (
                f"key algorithm {describe(key)} is too weak: RSA keys need at least "
                f"{MIN_RSA_BITS} bits"
            )
        if key.key_size > MAX_RSA_BITS:
            return (
                f"key algorithm {describe(key)} is too large: its signatures would not fit "
                f"(at most {MAX_RSA_BITS} bits)"
            )
        return None
    return f"key algorithm {describe(key)} is not supported ({SUPPORTED})"


def certificate_key(cert: x509.Certificate) -> PublicKey | None:
    """The certificate's public key if it is of a supported algorithm and size."""
    try:
        key: CertificatePublicKeyTypes = cert.public_key()
    except (UnsupportedAlgorithm, ValueError):
        return None
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return None
    return key if key_problem(key) is None else None


def certificate_key_problem(cert: x509.Certificate) -> str | None:
    """Why the certificate's key is not accepted, or None."""
    try:
        key = cert.public_key()
    except (UnsupportedAlgorithm, ValueError):
        name = oid_name(cert.public_key_algorithm_oid)
        return f"key algorithm {name} is not supported ({SUPPORTED})"
    return key_problem(key)


def signature_problem(oid: x509.ObjectIdentifier) -> str | None:
    """Why a certificate's or CRL's signature algorithm is not accepted, or None."""
    if oid in _CERT_SIGNATURES:
        return None
    weak = _WEAK_SIGNATURES.get(oid)
    if weak is not None:
        return f"is signed with {oid_name(oid)}: {weak} is broken and refused"
    return f"is signed with {oid_name(oid)}, which is not supported ({SUPPORTED}, SHA-2)"


def spki(key: PublicKey) -> bytes:
    """The key's SubjectPublicKeyInfo, DER."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def message_hash(key: PublicKey) -> hashes.HashAlgorithm | None:
    """The hash the bundle signature scheme applies for this key (None: Ed25519, no hash)."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _CURVES[key.curve.name][1]
    return hashes.SHA256()


def sign_message(key: PrivateKey, message: bytes) -> bytes:
    """Sign the signed message with a private key held in memory, by the bundle's scheme.

    Raises:
        UsageError: The key's algorithm or size is not accepted.
    """
    problem = key_problem(key)
    if problem is not None:
        raise UsageError(f"the signing key cannot sign bundles: {problem}")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    digest = message_hash(key.public_key())
    assert digest is not None  # only Ed25519 has none
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(message, ec.ECDSA(digest))
    return key.sign(message, padding.PKCS1v15(), digest)


def usual_signature_size(key: PublicKey) -> int:
    """The length a signature by `key` has most often, in bytes.

    Ed25519 and RSA signatures have one length. An ECDSA signature is a DER
    SEQUENCE of two INTEGERs of the curve's size, each with a leading zero byte
    when its top bit is set: one of the two has it in half of all signatures.
    """
    if isinstance(key, ec.EllipticCurvePublicKey):
        return 2 * ((key.key_size + 7) // 8) + 7
    if isinstance(key, rsa.RSAPublicKey):
        return (key.key_size + 7) // 8
    return 64


def verify_message(key: PublicKey, signature: bytes, message: bytes) -> None:
    """Check a bundle signature by the scheme the key determines.

    Raises:
        cryptography.exceptions.InvalidSignature: It does not verify.
    """
    if isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(signature, message)
        return
    digest = message_hash(key)
    assert digest is not None
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, message, ec.ECDSA(digest))
    else:
        key.verify(signature, message, padding.PKCS1v15(), digest)
