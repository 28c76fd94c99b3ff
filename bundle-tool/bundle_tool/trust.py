"""Whether a signer's certificate is trusted: the path to the keyring, purposes, revocation.

Pure functions over parsed certificates and a `Keyring`. Two checks must both accept a
signer: a path search written here, which handles every algorithm we support and gives a
reason a user can act on, and, where it can serve (no Ed25519 on the path), cryptography's
own X.509 path validation.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from . import algorithms
from .keyring import (
    Keyring,
    ca_problem,
    crl_signed_by,
    crl_time_problem,
    label,
    shown_name,
    when,
)

# Extensions whose meaning we enforce or that carry no constraint. A certificate marking
# any other extension critical is refused, as RFC 5280 section 4.2 requires.
_UNDERSTOOD_EXTENSIONS = (
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
)


def _validity_problem(cert: x509.Certificate, at: datetime.datetime, what: str) -> str | None:
    if at < cert.not_valid_before_utc:
        return f"{what} not valid before {when(cert.not_valid_before_utc)}"
    if at > cert.not_valid_after_utc:
        return f"{what} expired on {when(cert.not_valid_after_utc)}"
    return None


def _algorithm_problem(cert: x509.Certificate, *, check_signature: bool = True) -> str | None:
    """Say why a certificate's key or signature algorithm is not accepted, if it is not."""
    problem = algorithms.certificate_key_problem(cert)
    if problem is not None:
        return f"{label(cert)} has {problem}"
    if check_signature:
        problem = algorithms.signature_problem(cert.signature_algorithm_oid)
        if problem is not None:
            return f"{label(cert)} {problem}"
    return None


def _spki_of(cert: x509.Certificate) -> bytes:
    key = algorithms.certificate_key(cert)
    return algorithms.spki(key) if key is not None else b""


def _revocation_problem(
    child: x509.Certificate, issuer: x509.Certificate, keyring: Keyring, at: datetime.datetime
) -> str | None:
    """Say why ``child`` counts as revoked by a keyring CRL of ``issuer``, if it does.

    A CRL that claims to come from ``issuer`` but does not verify with its key fails the
    link too: a device must not trust a path whose revocation state it cannot know.
    """
    crls = keyring.crls_of(issuer)
    if not crls:
        return None
    issuer_spki = _spki_of(issuer)
    mine = [
        c
        for c in crls
        if (c.anchor is None and crl_signed_by(c.crl, issuer))
        or (c.anchor is not None and _spki_of(c.anchor) == issuer_spki)
    ]
    if not mine:
        if all(c.anchor is not None for c in crls):
            return None  # the CRLs of another keyring CA of the same name
        files = ", ".join(c.source for c in crls if c.anchor is None)
        return (
            f"keyring CRL {files} names '{issuer.subject.rfc4514_string()}' as its issuer but is "
            "not signed by that CA's key (forged, or made with another key)"
        )
    for c in mine:
        problem = crl_time_problem(c.crl, at)
        if problem is not None:
            return f"keyring CRL {c.source} of '{issuer.subject.rfc4514_string()}' {problem}"
        revoked = c.crl.get_revoked_certificate_by_serial_number(child.serial_number)
        if revoked is not None:
            return (
                f"{label(child)} (serial {child.serial_number:#x}) is revoked by "
                f"'{issuer.subject.rfc4514_string()}' since {when(revoked.revocation_date_utc)} "
                f"(keyring CRL {c.source})"
            )
    return None


def purpose_problem(cert: x509.Certificate) -> str | None:
    """Say why a certificate may not sign bundles (wrong purpose), if it may not."""
    exts = cert.extensions
    try:
        if exts.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "certificate is a CA certificate; sign with a code-signing certificate it issued"
    except x509.ExtensionNotFound:
        pass
    try:
        usage = exts.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return "certificate has no key usage; digitalSignature is required"
    if not usage.digital_signature:
        return "certificate is not for signing (key usage lacks digitalSignature)"
    try:
        purposes = exts.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "certificate has no extended key usage; codeSigning is required"
    if ExtendedKeyUsageOID.CODE_SIGNING not in purposes:
        return "certificate is not for code signing (extended key usage lacks codeSigning)"
    return None


def _critical_problem(cert: x509.Certificate) -> str | None:
    for ext in cert.extensions:
        if ext.critical and ext.oid not in _UNDERSTOOD_EXTENSIONS:
            return (
                f"{label(cert)} has an unsupported critical extension "
                f"{algorithms.oid_name(ext.oid)}"
            )
    return None


def trust_problem(
    leaf: x509.Certificate,
    chain: tuple[x509.Certificate, ...],
    keyring: Keyring,
    at: datetime.datetime,
) -> str | None:
    """Say why a signer's certificate is not trusted at ``at``, or None if it is.

    Two checks must both accept: a path search written here, which handles every
    algorithm we support and gives a reason a user can act on, and, when it can serve,
    cryptography's own X.509 path validation.
    """
    problem = (
        _validity_problem(leaf, at, "certificate")
        or purpose_problem(leaf)
        or _algorithm_problem(leaf)
        or _critical_problem(leaf)
    )
    if problem is not None:
        return problem
    path = _build_path(leaf, chain, keyring, at)
    if isinstance(path, str):
        return path
    if _library_can_serve(path):
        return library_problem(leaf, chain, keyring, at)
    return None


def _build_path(
    leaf: x509.Certificate,
    chain: tuple[x509.Certificate, ...],
    keyring: Keyring,
    at: datetime.datetime,
) -> list[x509.Certificate] | str:
    """Find a path leaf -> intermediates -> keyring CA, checking each link (RFC 5280 subset).

    Written by hand because cryptography's path validation (x509.verification, as of
    version 50) admits only the Web PKI key algorithms and refuses Ed25519 keys anywhere in
    the path. Each link checks: the issuer's name matches, the issuer is a CA allowed to
    sign certificates, its key and the link's signature algorithm are supported, the
    signature verifies, the issuer is valid at ``at``, its path length constraint holds and
    it marks no extension critical that we do not process. The keyring CAs are trusted as
    they are, but must themselves be valid at ``at``.
    """
    anchors = list(keyring.anchors)
    problems: list[str] = []

    def candidates(cert: x509.Certificate) -> list[tuple[x509.Certificate, bool]]:
        found = [(c, True) for c in anchors if c.subject == cert.issuer]
        found += [(c, False) for c in chain if c.subject == cert.issuer and c not in anchors]
        return found

    def link_problem(child: x509.Certificate, issuer: x509.Certificate, below: int) -> str | None:
        problem = (
            ca_problem(issuer)
            or _algorithm_problem(issuer, check_signature=False)
            or _algorithm_problem(child)
        )
        if problem is not None:
            return problem
        try:
            child.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            return f"{label(child)} does not verify with the key of {label(issuer)}"
        limit = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
        if limit is not None and below > limit:
            return f"{label(issuer)} allows at most {limit} intermediate CAs below it"
        return (
            _validity_problem(issuer, at, label(issuer))
            or _critical_problem(issuer)
            or _revocation_problem(child, issuer, keyring, at)
        )

    def walk(path: list[x509.Certificate]) -> list[x509.Certificate] | None:
        child = path[-1]
        below = len(path) - 1  # intermediates already between the leaf and the next issuer
        for issuer, is_anchor in candidates(child):
            if issuer in path:
                continue
            problem = link_problem(child, issuer, below)
            if problem is not None:
                problems.append(problem)
                continue
            if is_anchor:
                return [*path, issuer]
            if below < len(chain):
                found = walk([*path, issuer])
                if found is not None:
                    return found
        return None

    path = walk([leaf])
    if path is not None:
        return path
    if problems and _names_reach_keyring(leaf, chain, anchors):
        return problems[0]
    return (
        f"certificate issued by '{shown_name(leaf.issuer)}', which is not a keyring CA "
        "nor reached through the bundle's intermediates"
    )


def _names_reach_keyring(
    leaf: x509.Certificate, chain: tuple[x509.Certificate, ...], anchors: list[x509.Certificate]
) -> bool:
    """Whether issuer names alone lead from the leaf to a keyring CA's name.

    When they do not, the useful reason is "unknown CA", not a failure met on the way.
    """
    anchor_names = {a.subject for a in anchors}
    seen: set[x509.Name] = set()
    todo = [leaf.issuer]
    while todo:
        name = todo.pop()
        if name in anchor_names:
            return True
        if name not in seen:
            seen.add(name)
            todo.extend(c.issuer for c in chain if c.subject == name)
    return False


def _library_can_serve(path: list[x509.Certificate]) -> bool:
    # cryptography's path validation refuses Ed25519 anywhere in a path.
    return not any(isinstance(c.public_key(), ed25519.Ed25519PublicKey) for c in path)


def _require_ca(_policy: Policy, _cert: x509.Certificate, value: x509.BasicConstraints) -> None:
    if not value.ca:
        raise ValueError("basicConstraints CA is false")


def _require_key_cert_sign(_policy: Policy, _cert: x509.Certificate, value: x509.KeyUsage) -> None:
    if not value.key_cert_sign:
        raise ValueError("key usage lacks keyCertSign")


def _require_digital_signature(
    _policy: Policy, _cert: x509.Certificate, value: x509.KeyUsage
) -> None:
    if not value.digital_signature:
        raise ValueError("key usage lacks digitalSignature")


def _require_code_signing(
    _policy: Policy, _cert: x509.Certificate, value: x509.ExtendedKeyUsage
) -> None:
    if ExtendedKeyUsageOID.CODE_SIGNING not in value:
        raise ValueError("extended key usage lacks codeSigning")


def library_problem(
    leaf: x509.Certificate,
    chain: tuple[x509.Certificate, ...],
    keyring: Keyring,
    at: datetime.datetime,
) -> str | None:
    """Ask cryptography's path validation (paths without Ed25519) and return its objection."""
    # The Web PKI default policies demand serverAuth/clientAuth purposes and names; ours
    # demand a CA flag and keyCertSign on issuers, digitalSignature + codeSigning on the signer.
    ca_policy = (
        ExtensionPolicy.permit_all()
        .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, _require_ca)
        .require_present(x509.KeyUsage, Criticality.AGNOSTIC, _require_key_cert_sign)
    )
    ee_policy = (
        ExtensionPolicy.permit_all()
        .require_present(x509.KeyUsage, Criticality.AGNOSTIC, _require_digital_signature)
        .require_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _require_code_signing)
    )
    anchors = [
        c
        for c in keyring.anchors
        if algorithms.certificate_key(c) is not None
        and not isinstance(c.public_key(), ed25519.Ed25519PublicKey)
    ]
    verifier = (
        PolicyBuilder()
        .store(Store(anchors))
        .time(at)
        .max_chain_depth(len(chain) + 1)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, list(chain))
    except VerificationError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        # Drop the certificate's repr the library appends; the subject is in our own reasons.
        detail = detail.split(" (encountered processing ", 1)[0]
        return f"X.509 path validation failed: {detail}"
    return None
