"""Signing with PKIs made by `openssl` as a company makes them: root -> intermediate -> signer.

Every algorithm as signer and as anchor, mixed keyrings, weak keys and SHA-1 refused,
CRLs of a signer and of an intermediate, stale and forged CRLs.
"""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path

import pytest

from bundle_tool import signing
from bundle_tool.errors import TrustError, UsageError
from bundle_tool.keyring import read_keyring
from bundle_tool.signing import sign, verify_signatures
from tests.helpers.opensslpki import OpensslPki, Party, openssl

ALGORITHMS = ["ed25519", "p256", "p384", "rsa2048", "rsa3072", "rsa4096"]
PAYLOAD = b'{"compatible": "board", "version": "1.0.0"}'
# Bits of signature each algorithm makes at most (DER ECDSA varies by a few bytes).
SIGNATURE_BYTES = {"ed25519": 64, "p256": 72, "p384": 104, "rsa2048": 256, "rsa3072": 384,
                   "rsa4096": 512}  # fmt: skip


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Chain:
    """Root, intermediate and signer of one PKI."""

    def __init__(self, pki: OpensslPki, root: Party, inter: Party, signer: Party) -> None:
        self.pki, self.root, self.inter, self.signer = pki, root, inter, signer

    def load(self) -> signing.Signer:
        return signing.load_signer(
            self.signer.key.read_bytes(),
            self.signer.cert.read_bytes(),
            self.inter.cert.read_bytes(),
        )


@functools.cache
def _chain(folder: str, root_alg: str, inter_alg: str, signer_alg: str) -> Chain:
    pki = OpensslPki(Path(folder) / f"{root_alg}-{inter_alg}-{signer_alg}")
    root = pki.root(f"Root {root_alg}", root_alg)
    inter = pki.issue(root, f"Intermediate {inter_alg}", inter_alg, profile="intermediate")
    signer = pki.issue(inter, f"Signer {signer_alg}", signer_alg)
    return Chain(pki, root, inter, signer)


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory) -> functools.partial[Chain]:
    return functools.partial(_chain, str(tmp_path_factory.mktemp("pkis")))


def ring_folder(tmp_path: Path, *files: Path) -> Path:
    folder = tmp_path / "keyring"
    folder.mkdir(exist_ok=True)
    for path in files:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def reason(entry: signing.SignatureEntry, ring: object, at: dt.datetime | None = None) -> str:
    with pytest.raises(TrustError) as info:
        verify_signatures(PAYLOAD, [entry], ring, at=at or now())  # type: ignore[arg-type]
    return str(info.value)


# --- algorithms -------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_as_signer_and_anchor(
    chains: functools.partial[Chain], algorithm: str
) -> None:
    chain = chains(algorithm, algorithm, algorithm)
    entry = sign(PAYLOAD, chain.load())
    assert len(entry.signature) <= SIGNATURE_BYTES[algorithm] <= signing.MAX_SIGNATURE_SIZE
    ring = read_keyring(chain.root.cert, at=now())
    [verified] = verify_signatures(PAYLOAD, [entry], ring, at=now())
    assert verified.subject == f"CN=Signer {algorithm},O=Example Corp"
    if algorithm.startswith(("ed", "rsa")):
        assert sign(PAYLOAD, chain.load()) == entry  # deterministic: reproducible bundles


def test_openssl_verifies_an_rsa_signature_as_pkcs1_v15_sha256(
    chains: functools.partial[Chain], tmp_path: Path
) -> None:
    chain = chains("rsa3072", "rsa3072", "rsa3072")
    s = chain.load()
    entry = sign(PAYLOAD, s)
    message = tmp_path / "message"
    message.write_bytes(signing.signed_message(PAYLOAD, entry.certificate, entry.chain))
    (tmp_path / "sig").write_bytes(entry.signature)
    openssl("x509", "-in", chain.signer.cert, "-pubkey", "-noout", "-out", tmp_path / "pub.pem")
    out = openssl("dgst", "-sha256", "-verify", tmp_path / "pub.pem", "-signature",
                  tmp_path / "sig", message)  # fmt: skip
    assert "Verified OK" in out


@pytest.mark.parametrize(
    "algorithms",
    [("rsa4096", "p384", "ed25519"), ("ed25519", "rsa2048", "p256"), ("p384", "p256", "rsa3072")],
)
def test_mixed_algorithms_along_a_path(
    chains: functools.partial[Chain], algorithms: tuple[str, str, str]
) -> None:
    chain = chains(*algorithms)
    entry = sign(PAYLOAD, chain.load())
    assert verify_signatures(PAYLOAD, [entry], read_keyring(chain.root.cert), at=now())


def test_mixed_keyring_with_two_roots_and_a_threshold(
    chains: functools.partial[Chain], tmp_path: Path
) -> None:
    rsa = chains("rsa3072", "rsa3072", "rsa3072")
    ed = chains("ed25519", "p256", "ed25519")
    ring = read_keyring(ring_folder(tmp_path, rsa.root.cert, ed.root.cert), at=now())
    assert len(ring.anchors) == 2
    entries = [sign(PAYLOAD, rsa.load()), sign(PAYLOAD, ed.load())]
    assert len(verify_signatures(PAYLOAD, entries, ring, at=now(), threshold=2)) == 2
    only_rsa = read_keyring(rsa.root.cert)
    with pytest.raises(TrustError, match="1 of 2 required signatures trusted; signature 2: "):
        verify_signatures(PAYLOAD, entries, only_rsa, at=now(), threshold=2)


def test_rsa_1024_is_refused_everywhere(chains: functools.partial[Chain], tmp_path: Path) -> None:
    weak = chains("rsa1024", "rsa1024", "rsa1024")
    with pytest.raises(UsageError, match="RSA-1024 is too weak: RSA keys need at least 2048"):
        weak.load()
    with pytest.raises(UsageError, match="RSA-1024 is too weak"):
        read_keyring(weak.root.cert)
    good = chains("rsa2048", "rsa2048", "rsa2048")
    weak_inter = good.pki.issue(good.root, "Weak Intermediate", "rsa1024", profile="intermediate")
    s = good.pki.issue(weak_inter, "Signer under weak", "rsa2048")
    signer = signing.load_signer(s.key.read_bytes(), s.cert.read_bytes(),
                                 weak_inter.cert.read_bytes())  # fmt: skip
    message = reason(sign(PAYLOAD, signer), read_keyring(good.root.cert))
    assert "'CN=Weak Intermediate,O=Example Corp' has key algorithm RSA-1024 is too weak" in message


def test_sha1_certificate_is_refused(chains: functools.partial[Chain]) -> None:
    chain = chains("rsa2048", "rsa2048", "rsa2048")
    s = chain.pki.issue(chain.inter, "SHA1 Signer", "rsa2048", digest="sha1")
    signer = signing.load_signer(s.key.read_bytes(), s.cert.read_bytes(),
                                 chain.inter.cert.read_bytes())  # fmt: skip
    message = reason(sign(PAYLOAD, signer), read_keyring(chain.root.cert))
    assert "'CN=SHA1 Signer,O=Example Corp' is signed with sha1WithRSAEncryption" in message
    assert "SHA-1 is broken and refused" in message


# --- revocation -------------------------------------------------------------------------


@pytest.fixture
def fresh(tmp_path: Path) -> Chain:
    """A PKI of its own: revocations must not leak into other tests."""
    pki = OpensslPki(tmp_path / "pki")
    root = pki.root("Root", "p384")
    inter = pki.issue(root, "Intermediate", "p256", profile="intermediate")
    return Chain(pki, root, inter, pki.issue(inter, "Signer", "ed25519"))


def test_revoked_signer_does_not_count(fresh: Chain, tmp_path: Path) -> None:
    entry = sign(PAYLOAD, fresh.load())
    fresh.pki.revoke(fresh.inter, fresh.signer)
    crl = fresh.pki.crl(fresh.inter, out=tmp_path / "intermediate.crl", pem=False)
    ring = read_keyring(ring_folder(tmp_path, fresh.root.cert, crl), at=now())
    message = reason(entry, ring)
    assert "certificate 'CN=Signer,O=Example Corp'" in message
    assert "is revoked by 'CN=Intermediate,O=Example Corp'" in message
    assert "intermediate.crl" in message
    # Another signer of the same intermediate still counts.
    other = fresh.pki.issue(fresh.inter, "Other Signer", "p256")
    s = signing.load_signer(other.key.read_bytes(), other.cert.read_bytes(),
                            fresh.inter.cert.read_bytes())  # fmt: skip
    assert verify_signatures(PAYLOAD, [sign(PAYLOAD, s)], ring, at=now())


def test_revoked_intermediate_does_not_count(fresh: Chain, tmp_path: Path) -> None:
    entry = sign(PAYLOAD, fresh.load())
    fresh.pki.revoke(fresh.root, fresh.inter)
    keyring_file = tmp_path / "keyring.pem"
    crl = fresh.pki.crl(fresh.root)
    keyring_file.write_bytes(fresh.root.cert.read_bytes() + crl.read_bytes())
    message = reason(entry, read_keyring(keyring_file, at=now()))
    assert "certificate 'CN=Intermediate,O=Example Corp'" in message
    assert "is revoked by 'CN=Root,O=Example Corp'" in message


def test_an_empty_crl_revokes_nothing(fresh: Chain, tmp_path: Path) -> None:
    crls = [fresh.pki.crl(fresh.root, out=tmp_path / "root.crl"),
            fresh.pki.crl(fresh.inter, out=tmp_path / "inter.crl")]  # fmt: skip
    ring = read_keyring(ring_folder(tmp_path, fresh.root.cert, *crls), at=now())
    assert len(ring.crls) == 2
    assert verify_signatures(PAYLOAD, [sign(PAYLOAD, fresh.load())], ring, at=now())


def test_stale_crl_is_a_keyring_error_naming_the_file(fresh: Chain, tmp_path: Path) -> None:
    crl = fresh.pki.crl(fresh.root, out=tmp_path / "root.crl")
    folder = ring_folder(tmp_path, fresh.root.cert, crl)
    later = now() + dt.timedelta(days=31)
    with pytest.raises(UsageError, match=r"keyring .*root\.crl: the CRL of 'CN=Root,O=Example "
                       r"Corp' expired on .*: install a fresh CRL"):  # fmt: skip
        read_keyring(folder, at=later)
    # An intermediate's stale CRL is met on the path: the signer does not count.
    inter_crl = fresh.pki.crl(fresh.inter, out=tmp_path / "inter.crl")
    ring = read_keyring(ring_folder(tmp_path, inter_crl))
    message = reason(sign(PAYLOAD, fresh.load()), ring, at=later)
    assert "inter.crl of 'CN=Intermediate,O=Example Corp' expired on" in message


def test_forged_crl_is_a_keyring_error_naming_the_file(fresh: Chain, tmp_path: Path) -> None:
    impostor_pki = OpensslPki(tmp_path / "impostor")
    impostor = impostor_pki.root("Root", "p384")  # same name as the real root, another key
    forged = impostor_pki.crl(impostor, out=tmp_path / "forged.crl")
    with pytest.raises(UsageError, match=r"forged\.crl: the CRL of 'CN=Root,O=Example Corp' is "
                       r"not signed by that keyring CA \(forged"):  # fmt: skip
        read_keyring(ring_folder(tmp_path, fresh.root.cert, forged), at=now())


def test_forged_intermediate_crl_fails_the_path(fresh: Chain, tmp_path: Path) -> None:
    impostor_pki = OpensslPki(tmp_path / "impostor")
    impostor = impostor_pki.root("Intermediate", "p256")
    forged = impostor_pki.crl(impostor, out=tmp_path / "forged-inter.crl")
    ring = read_keyring(ring_folder(tmp_path, fresh.root.cert, forged), at=now())
    message = reason(sign(PAYLOAD, fresh.load()), ring)
    assert "forged-inter.crl names 'CN=Intermediate,O=Example Corp' as its issuer but is not " \
        "signed by that CA's key" in message  # fmt: skip


def test_keyring_file_errors_name_the_file(tmp_path: Path, fresh: Chain) -> None:
    bad = tmp_path / "keyring"
    bad.mkdir()
    (bad / "root.pem").write_bytes(fresh.root.cert.read_bytes())
    (bad / "junk.crl").write_bytes(b"not a crl")
    with pytest.raises(UsageError, match=r"keyring .*junk\.crl is not a file of PEM"):
        read_keyring(bad)
    (bad / "junk.crl").unlink()
    (bad / "key.pem").write_bytes(fresh.root.key.read_bytes())
    with pytest.raises(UsageError, match=r"key\.pem: PEM block 1 is a PRIVATE KEY"):
        read_keyring(bad)
