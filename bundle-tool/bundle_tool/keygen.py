"""Throwaway development keys: a CA that devices trust and a code-signing certificate.

Everything made here is for trying the tool out and for tests. The keys are written
unencrypted and every file says that it is not for production.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bundle_tool.algorithms import PrivateKey
from bundle_tool.errors import BundleIOError, UsageError

DEV_LABEL = "DEVELOPMENT ONLY - NOT FOR PRODUCTION"
#: What `generate_key` makes, by name (the names `keygen --algorithm` takes).
_GENERATORS: dict[str, Callable[[], PrivateKey]] = {
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "rsa2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "rsa3072": lambda: rsa.generate_private_key(public_exponent=65537, key_size=3072),
    "rsa4096": lambda: rsa.generate_private_key(public_exponent=65537, key_size=4096),
}
ALGORITHMS = tuple(_GENERATORS)
#: Older names still accepted.
ALIASES = {"ecdsa-p256": "p256", "ecdsa-p384": "p384"}

_PEM_COMMENT = f"# {DEV_LABEL}: throwaway material made by `bundle-tool keygen`\n".encode()


@dataclass(frozen=True)
class DevPki:
    """Paths of the files that `make_dev_pki` wrote.

    Attributes:
        ca_cert: The CA certificate; devices hold it in their keyring (trust anchor).
        ca_key: The CA private key, needed only to issue more signing certificates.
        signer_key: The private key that signs bundles.
        signer_cert: The signing certificate, issued by the CA.
    """

    ca_cert: Path
    ca_key: Path
    signer_key: Path
    signer_cert: Path


def generate_key(algorithm: str = "ed25519") -> PrivateKey:
    """Make a new private key.

    Args:
        algorithm: One of `ALGORITHMS` (or `ALIASES`).

    Returns:
        The new private key.

    Raises:
        UsageError: The algorithm is not one of those supported.
    """
    return _GENERATORS[algorithm_name(algorithm)]()


def algorithm_name(algorithm: str) -> str:
    """The name in `ALGORITHMS` for an algorithm name or alias.

    Raises:
        UsageError: It is neither.
    """
    name = ALIASES.get(algorithm, algorithm)
    if name not in _GENERATORS:
        raise UsageError(
            f"unknown key algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}"
        )
    return name


def _sign_certificate(builder: x509.CertificateBuilder, issuer_key: PrivateKey) -> x509.Certificate:
    if isinstance(issuer_key, ed25519.Ed25519PrivateKey):
        return builder.sign(issuer_key, None)
    if isinstance(issuer_key, ec.EllipticCurvePrivateKey) and issuer_key.key_size > 256:
        return builder.sign(issuer_key, hashes.SHA384())
    return builder.sign(issuer_key, hashes.SHA256())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "abupdate"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ski(key: PrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def make_ca(
    *,
    common_name: str = f"abupdate dev CA - {DEV_LABEL}",
    algorithm: str = "ed25519",
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    issuer_key: PrivateKey | None = None,
    issuer_cert: x509.Certificate | None = None,
    key: PrivateKey | None = None,
    path_length: int | None = None,
) -> tuple[PrivateKey, x509.Certificate]:
    """Make a CA certificate: self-signed (a root), or issued by another CA (an intermediate).

    Args:
        common_name: The subject common name.
        algorithm: Key algorithm when ``key`` is not given.
        not_before: Start of validity (timezone-aware).
        not_after: End of validity (timezone-aware).
        issuer_key: The issuing CA's key; ``None`` for a self-signed root.
        issuer_cert: The issuing CA's certificate; given together with ``issuer_key``.
        key: An existing key to certify instead of a new one.
        path_length: The basicConstraints path length, ``None`` for no limit.

    Returns:
        The CA's private key and its certificate.

    Raises:
        UsageError: Only one of ``issuer_key`` and ``issuer_cert`` was given, or the
            algorithm is unknown.
    """
    if (issuer_key is None) != (issuer_cert is None):
        raise UsageError("give both the issuing CA's key and certificate, or neither")
    ca_key = key if key is not None else generate_key(algorithm)
    subject = _name(common_name)
    signing_key = issuer_key if issuer_key is not None else ca_key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_ski(ca_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
            critical=False,
        )
    )
    return ca_key, _sign_certificate(builder, signing_key)


def make_signer(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    *,
    common_name: str = f"abupdate dev signer - {DEV_LABEL}",
    algorithm: str = "ed25519",
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    eku_code_signing: bool = True,
    digital_signature: bool = True,
    key: PrivateKey | None = None,
) -> tuple[PrivateKey, x509.Certificate]:
    """Make a bundle-signing (end-entity) certificate issued by a CA.

    Args:
        ca_key: The issuing CA's private key.
        ca_cert: The issuing CA's certificate.
        common_name: The subject common name.
        algorithm: Key algorithm when ``key`` is not given.
        not_before: Start of validity (timezone-aware).
        not_after: End of validity (timezone-aware).
        eku_code_signing: Whether the extended key usage names codeSigning; when false it
            names serverAuth instead (a certificate issued for another purpose).
        digital_signature: Whether the key usage allows digitalSignature.
        key: An existing key to certify instead of a new one.

    Returns:
        The signer's private key and its certificate.

    Raises:
        UsageError: The algorithm is unknown.
    """
    signer_key = key if key is not None else generate_key(algorithm)
    purpose = (
        ExtendedKeyUsageOID.CODE_SIGNING if eku_code_signing else ExtendedKeyUsageOID.SERVER_AUTH
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(signer_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
                content_commitment=False,
                key_encipherment=not digital_signature,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(_ski(signer_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    return signer_key, _sign_certificate(builder, ca_key)


def key_pem(key: PrivateKey) -> bytes:
    """Encode a private key as unencrypted PKCS#8 PEM, preceded by a not-for-production line."""
    body = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return _PEM_COMMENT + body


def cert_pem(*certificates: x509.Certificate) -> bytes:
    """Encode certificates as PEM, preceded by a not-for-production line."""
    return _PEM_COMMENT + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def _write(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never replace an existing key; the mode is set at creation, so a key is
    # never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, mode)  # the umask may have narrowed it; make it exact


def make_dev_pki(
    out_dir: Path,
    *,
    algorithm: str = "ed25519",
    days: int = 3650,
    now: datetime.datetime | None = None,
) -> DevPki:
    """Write a throwaway CA and signing certificate for development and the quick start.

    Writes ``ca.pem`` (the trust anchor for devices), ``ca.key``, ``signer.key`` and
    ``signer.pem`` into ``out_dir`` (created if missing). Keys are unencrypted with mode
    0600. Existing files are never overwritten.

    Args:
        out_dir: The directory to write into.
        algorithm: One of `ALGORITHMS`, for both keys.
        days: Validity of both certificates, counted from ``now``.
        now: Start of validity; the current time when ``None``.

    Returns:
        The paths written.

    Raises:
        UsageError: Unknown algorithm, ``days`` below 1, or a file already exists.
        BundleIOError: The files could not be written.
    """
    algorithm_name(algorithm)
    if days < 1:
        raise UsageError(f"certificate validity must be at least 1 day, not {days}")
    start = now if now is not None else datetime.datetime.now(datetime.UTC)
    if start.tzinfo is None:
        raise UsageError("the start of validity must carry a time zone")
    # A minute of slack so a device whose clock is slightly behind accepts a fresh key.
    not_before = start - datetime.timedelta(minutes=1)
    not_after = start + datetime.timedelta(days=days)
    pki = DevPki(
        ca_cert=out_dir / "ca.pem",
        ca_key=out_dir / "ca.key",
        signer_key=out_dir / "signer.key",
        signer_cert=out_dir / "signer.pem",
    )
    for path in (pki.ca_cert, pki.ca_key, pki.signer_key, pki.signer_cert):
        if path.exists():
            raise UsageError(f"{path} already exists; choose an empty directory")

    ca_key, ca_cert = make_ca(algorithm=algorithm, not_before=not_before, not_after=not_after)
    signer_key, signer_cert = make_signer(
        ca_key, ca_cert, algorithm=algorithm, not_before=not_before, not_after=not_after
    )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write(pki.ca_key, key_pem(ca_key), 0o600)
        _write(pki.signer_key, key_pem(signer_key), 0o600)
        _write(pki.ca_cert, cert_pem(ca_cert), 0o644)
        _write(pki.signer_cert, cert_pem(signer_cert), 0o644)
    except FileExistsError as exc:
        raise UsageError(f"{exc.filename} already exists; choose an empty directory") from exc
    except OSError as exc:
        raise BundleIOError(f"cannot write development keys to {out_dir}: {exc}") from exc
    return pki
