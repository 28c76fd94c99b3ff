"""The device's keyring: trusted CA certificates and the CRLs of the CAs.

A keyring is a PEM file, or a folder of files (taken in name order, hidden files left
out). Each file holds PEM certificates and PEM CRLs (``X509 CRL`` blocks), or is one CRL
in DER (the form CAs publish, usually ``*.crl``). Every certificate is a trust anchor:
a CA certificate of a supported algorithm.

A CRL names the certificates its CA revoked. One issued by a keyring CA is checked when
the keyring is loaded: it must be signed by that CA and current. One issued by an
intermediate CA (which the keyring does not hold: bundles carry their intermediates) is
checked when a bundle's path meets that CA. Every problem names the file.

A keyring that cannot be used as one (not PEM certificates and CRLs, a private key, no
certificate, a certificate that is not a CA, a CRL that is stale or not its CA's) is the
device's or caller's configuration at fault, not the bundle's: a `UsageError` (exit
status 2, docs/exit-status.md), never a `TrustError`, so that a misconfigured device is
told apart from an untrusted bundle.

`parse_keyring` is pure; `read_keyring` reads a file or folder and calls it.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from . import algorithms
from .errors import UsageError

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
# What cryptography raises for certificates and CRLs it cannot decode.
MALFORMED = (
    ValueError,
    TypeError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


@dataclass(frozen=True)
class KeyringCrl:
    """A CRL of the keyring.

    Attributes:
        source: The file it came from, for messages.
        crl: The parsed CRL.
        anchor: The keyring CA whose key signed it; None when its issuer is not a keyring
            CA (its signature is checked against the issuer a bundle's path meets).
    """

    source: str
    crl: x509.CertificateRevocationList
    anchor: x509.Certificate | None


@dataclass(frozen=True)
class Keyring:
    """The trust anchors and the CRLs a device checks bundles against."""

    anchors: tuple[x509.Certificate, ...]
    crls: tuple[KeyringCrl, ...] = ()

    def crls_of(self, issuer: x509.Certificate) -> tuple[KeyringCrl, ...]:
        """The CRLs that name ``issuer``'s subject as their issuer."""
        return tuple(c for c in self.crls if c.crl.issuer == issuer.subject)


def as_keyring(keyring: Keyring | Sequence[x509.Certificate]) -> Keyring:
    """A keyring from a `Keyring` or a plain sequence of CA certificates (no CRLs)."""
    return keyring if isinstance(keyring, Keyring) else Keyring(tuple(keyring))


#: Characters of a certificate's name a message shows (a bundle's certificate is anyone's:
#: its name can fill most of its 16384 bytes, and a bundle carries 16 of them).
MAX_NAME_SHOWN = 200


def shown_name(name: x509.Name) -> str:
    """A distinguished name (RFC 4514) as messages show it: shortened past `MAX_NAME_SHOWN`."""
    text = name.rfc4514_string()
    if len(text) <= MAX_NAME_SHOWN:
        return text
    return f"{text[:MAX_NAME_SHOWN]}... ({len(text)} characters)"


def label(cert: x509.Certificate) -> str:
    """How messages name a certificate."""
    return f"certificate '{shown_name(cert.subject)}'"


def when(moment: datetime.datetime) -> str:
    """A date (or date and time) as messages show it."""
    if moment.time() == datetime.time(0, 0):
        return f"{moment:%Y-%m-%d}"
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def ca_problem(cert: x509.Certificate) -> str | None:
    """Say why a certificate may not issue certificates, if it may not.

    A CA needs basicConstraints CA=true and a key usage with keyCertSign
    (docs/bundle-format.md). RFC 5280 lets a CA leave key usage out; this format
    does not, so that a CA states what its key may do.
    """
    exts = cert.extensions
    try:
        if not exts.get_extension_for_class(x509.BasicConstraints).value.ca:
            return f"{label(cert)} is not a CA (basicConstraints CA is false)"
    except x509.ExtensionNotFound:
        return f"{label(cert)} is not a CA (no basicConstraints)"
    try:
        if not exts.get_extension_for_class(x509.KeyUsage).value.key_cert_sign:
            return f"{label(cert)} may not sign certificates (key usage lacks keyCertSign)"
    except x509.ExtensionNotFound:
        return f"{label(cert)} may not sign certificates (no key usage; a CA needs keyCertSign)"
    return None


def touch(cert: x509.Certificate) -> None:
    """Decode every field the trust checks read, so malformed ones fail here and not later."""
    _ = (
        cert.version,
        cert.subject.rfc4514_string(),
        cert.issuer.rfc4514_string(),
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
        cert.signature_algorithm_oid,
        cert.public_key_algorithm_oid,
        [ext.value for ext in cert.extensions],
    )


def crl_time_problem(crl: x509.CertificateRevocationList, at: datetime.datetime) -> str | None:
    """Why a CRL is not current at ``at``, or None."""
    if at < crl.last_update_utc:
        return f"is not valid before {when(crl.last_update_utc)}"
    next_update = crl.next_update_utc
    if next_update is None:
        return "has no next-update time, so its freshness cannot be judged"
    if at > next_update:
        return f"expired on {when(next_update)}: install a fresh CRL from its CA"
    return None


def crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key signed the CRL (and the issuer may sign CRLs)."""
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.crl_sign:
            return False
    except x509.ExtensionNotFound:
        pass
    key = algorithms.certificate_key(issuer)
    return key is not None and crl.is_signature_valid(key)


def _crl_problem(crl: x509.CertificateRevocationList) -> str | None:
    problem = algorithms.signature_problem(crl.signature_algorithm_oid)
    if problem is not None:
        return problem
    for ext in crl.extensions:
        if ext.critical:
            return f"has a critical extension {algorithms.oid_name(ext.oid)}, not supported"
    for revoked in crl:
        for ext in revoked.extensions:
            if ext.critical:
                return f"has an entry with a critical extension {algorithms.oid_name(ext.oid)}"
    return None


def _blocks(
    name: str, data: bytes
) -> tuple[list[x509.Certificate], list[x509.CertificateRevocationList]]:
    certs: list[x509.Certificate] = []
    crls: list[x509.CertificateRevocationList] = []
    if b"-----BEGIN" not in data:
        try:
            crls.append(x509.load_der_x509_crl(data))
        except MALFORMED as exc:
            raise UsageError(
                f"keyring {name} is not a file of PEM CA certificates and CRLs, nor a DER CRL"
            ) from exc
        return certs, crls
    for number, match in enumerate(_PEM_BLOCK.finditer(data), start=1):
        kind = match.group(1)
        try:
            if kind == b"CERTIFICATE":
                cert = x509.load_pem_x509_certificate(match.group(0))
                touch(cert)
                certs.append(cert)
            elif kind == b"X509 CRL":
                crls.append(x509.load_pem_x509_crl(match.group(0)))
            else:
                raise UsageError(
                    f"keyring {name}: PEM block {number} is a {kind.decode()}; a keyring holds "
                    "only CERTIFICATE and X509 CRL blocks"
                )
        except MALFORMED as exc:
            raise UsageError(f"keyring {name}: PEM block {number} is malformed") from exc
    if not certs and not crls:
        raise UsageError(f"keyring {name} is not a file of PEM CA certificates and CRLs")
    return certs, crls


def parse_keyring(
    files: Sequence[tuple[str, bytes]], *, at: datetime.datetime | None = None
) -> Keyring:
    """Parse and check a keyring's files.

    Args:
        files: (name, contents) of each file, in order.
        at: The time CRLs must be current at (timezone-aware); None leaves their time to
            the bundle check.

    Returns:
        The keyring.

    Raises:
        UsageError: A file cannot be parsed, holds a certificate that is not a CA of a
            supported algorithm, or a CRL that is expired, not yet valid, not signed by
            its keyring CA or of an unsupported form; or there is no certificate at all.
            The message names the file.
    """
    anchors: list[x509.Certificate] = []
    pending: list[tuple[str, x509.CertificateRevocationList]] = []
    for name, data in files:
        certs, crls = _blocks(name, data)
        for number, cert in enumerate(certs, start=1):
            problem = algorithms.certificate_key_problem(cert)
            if problem is not None:
                problem = f"{label(cert)} has {problem}"
            problem = problem or ca_problem(cert)
            if problem is not None:
                raise UsageError(f"keyring {name}: certificate {number}: {problem}")
            anchors.append(cert)
        pending.extend((name, crl) for crl in crls)
    if not anchors:
        raise UsageError("the keyring holds no certificate")
    checked: list[KeyringCrl] = []
    for name, crl in pending:
        issuer = crl.issuer.rfc4514_string()
        problem = _crl_problem(crl)
        if problem is None and at is not None:
            problem = crl_time_problem(crl, at.astimezone(datetime.UTC))
        if problem is not None:
            raise UsageError(f"keyring {name}: the CRL of '{issuer}' {problem}")
        named = [a for a in anchors if a.subject == crl.issuer]
        signer = next((a for a in named if crl_signed_by(crl, a)), None)
        if named and signer is None:
            raise UsageError(
                f"keyring {name}: the CRL of '{issuer}' is not signed by that keyring CA "
                "(forged, or made with another key)"
            )
        checked.append(KeyringCrl(name, crl, signer))
    return Keyring(tuple(anchors), tuple(checked))


def load_keyring(pem: bytes, *, at: datetime.datetime | None = None, name: str = "file") -> Keyring:
    """Parse one keyring file (see `parse_keyring`)."""
    return parse_keyring([(name, pem)], at=at)


def read_keyring(path: Path, *, at: datetime.datetime | None = None) -> Keyring:
    """Read a keyring file or folder and parse it (see `parse_keyring`).

    Raises:
        UsageError: The file or folder is missing, cannot be read, is an empty folder, or
            is not a usable keyring (see `parse_keyring`): a configuration fault,
            docs/exit-status.md.
    """
    try:
        if path.is_dir():
            paths = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        else:
            paths = [path]
        files = [(str(p), p.read_bytes()) for p in paths]
    except OSError as exc:
        raise UsageError(f"cannot read keyring {exc.filename or path}: {exc.strerror}") from exc
    if not files:
        raise UsageError(f"keyring {path} is an empty folder")
    return parse_keyring(files, at=at)


def merge(keyrings: Sequence[Keyring]) -> Keyring:
    """One keyring holding the anchors and CRLs of several."""
    return Keyring(
        tuple(a for k in keyrings for a in k.anchors), tuple(c for k in keyrings for c in k.crls)
    )
