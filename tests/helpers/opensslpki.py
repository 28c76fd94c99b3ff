"""A company-style PKI made with the `openssl` command line: offline root, intermediate, signer.

Nothing here uses our own key or certificate code, so the tests prove that certificates
as a real CA issues them work with the bundle tool and the updater. `openssl ca` keeps a
database per CA, so CRLs (revocations) are made the way a CA operator makes them.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

# genpkey options per algorithm name (the names of `bundle-tool keygen --algorithm`).
KEY_OPTIONS = {
    "ed25519": ["-algorithm", "ED25519"],
    "p256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "p384": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    "rsa1024": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
    "rsa2048": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    "rsa3072": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"],
    "rsa4096": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:4096"],
}

_CONFIG = """\
[req]
distinguished_name = dn
[dn]
[root]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[intermediate]
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[signer]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = codeSigning
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ca]
default_ca = this
[this]
dir = {dir}
database = $dir/index.txt
crlnumber = $dir/crlnumber
default_md = {md}
default_crl_days = 30
"""


def openssl(*args: str | Path) -> str:
    """Run openssl; fail the test with its message if it fails."""
    done = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(map(str, args))} failed: {done.stderr}")
    return done.stdout


def _digest(algorithm: str, wanted: str | None = None) -> list[str]:
    if algorithm == "ed25519":
        return []
    return [f"-{wanted or ('sha384' if algorithm == 'p384' else 'sha256')}"]


@dataclass(frozen=True)
class Party:
    """One key and certificate of the PKI, with its algorithm."""

    name: str
    algorithm: str
    key: Path
    cert: Path


class OpensslPki:
    """Files of one PKI under a folder; `root`, then `issue` intermediates and signers."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def key(self, name: str, algorithm: str) -> Path:
        path = self.folder / f"{name}.key"
        openssl("genpkey", *KEY_OPTIONS[algorithm], "-out", path)
        return path

    def _config(self, issuer: Party) -> Path:
        ca_dir = self.folder / f"{issuer.name}.db"
        ca_dir.mkdir(exist_ok=True)
        (ca_dir / "index.txt").touch()
        if not (ca_dir / "crlnumber").exists():
            (ca_dir / "crlnumber").write_text("01\n")
        md = "default" if issuer.algorithm == "ed25519" else "sha256"
        path = self.folder / f"{issuer.name}.cnf"
        path.write_text(_CONFIG.format(dir=ca_dir, md=md))
        return path

    def root(self, name: str, algorithm: str, *, days: int = 3650, subject: str = "") -> Party:
        """A self-signed root CA."""
        key = self.key(name, algorithm)
        cert = self.folder / f"{name}.pem"
        config = self._config(Party(name, algorithm, key, cert))
        openssl(
            "req", "-x509", "-new", "-key", key, "-subj", subject or f"/O=Example Corp/CN={name}",
            "-days", days, "-config", config, "-extensions", "root", *_digest(algorithm),
            "-out", cert,
        )  # fmt: skip
        return Party(name, algorithm, key, cert)

    def issue(
        self,
        issuer: Party,
        name: str,
        algorithm: str,
        *,
        profile: str = "signer",
        days: int = 365,
        digest: str | None = None,
    ) -> Party:
        """A certificate issued by ``issuer``: profile ``intermediate`` or ``signer``."""
        key = self.key(name, algorithm)
        csr = self.folder / f"{name}.csr"
        cert = self.folder / f"{name}.pem"
        config = self._config(issuer)
        openssl(
            "req", "-new", "-key", key, "-subj", f"/O=Example Corp/CN={name}", "-config", config,
            "-out", csr,
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", csr, "-CA", issuer.cert, "-CAkey", issuer.key,
            "-CAcreateserial", "-days", days, "-extfile", config, "-extensions", profile,
            *_digest(issuer.algorithm, digest), "-out", cert,
        )  # fmt: skip
        return Party(name, algorithm, key, cert)

    def revoke(self, issuer: Party, victim: Party) -> None:
        """Mark ``victim`` revoked in ``issuer``'s database (then make a CRL)."""
        openssl(
            "ca", "-config", self._config(issuer), "-keyfile", issuer.key, "-cert", issuer.cert,
            "-revoke", victim.cert, "-crl_reason", "keyCompromise",
        )  # fmt: skip

    def crl(
        self, issuer: Party, *, out: Path | None = None, pem: bool = True, expired: bool = False
    ) -> Path:
        """The issuer's CRL, valid from now for 30 days, or ``expired`` a year ago; PEM or DER."""
        path = out or self.folder / f"{issuer.name}.crl"
        times = ["-crl_lastupdate", "20240101000000Z", "-crl_nextupdate", "20240201000000Z"]
        openssl(
            "ca", "-gencrl", "-config", self._config(issuer), "-keyfile", issuer.key,
            "-cert", issuer.cert, "-out", path, *(times if expired else []),
        )  # fmt: skip
        if not pem:
            openssl("crl", "-in", path, "-outform", "DER", "-out", path)
        return path
