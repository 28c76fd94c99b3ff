"""The signing commands as a user runs them: protected keys, resign, extract, keygen."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from bundle_tool import keysource
from bundle_tool.errors import UsageError
from tests.bundle.bundles import run_tool, write_image
from tests.helpers.opensslpki import OpensslPki, Party, openssl

EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[OpensslPki, Party, Party]:
    pki = OpensslPki(tmp_path_factory.mktemp("pki"))
    root = pki.root("Root", "rsa4096")
    inter = pki.issue(root, "Intermediate", "p384", profile="intermediate")
    return pki, root, inter


@pytest.fixture(scope="module")
def signers(pki: tuple[OpensslPki, Party, Party]) -> dict[str, Party]:
    folder, _, inter = pki
    return {a: folder.issue(inter, f"Signer {a}", a) for a in ("ed25519", "rsa2048", "p256")}


@pytest.fixture(scope="module")
def bundle(
    tmp_path_factory: pytest.TempPathFactory,
    pki: tuple[OpensslPki, Party, Party],
    signers: dict[str, Party],
) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    image = write_image(out / "rootfs.img", 300, seed=7)
    artifact = out / "kernel.bin"
    artifact.write_bytes(b"kernel bytes\n" * 100)
    s = signers["ed25519"]
    r = run_tool(
        "create", "--image", image, "--version", "1.0.0", "--compatible", "board",
        "--key", s.key, "--cert", s.cert, "--chain", pki[2].cert, "--artifact", artifact,
        "--salt", "00" * 32, "-o", out / "one.bundle", env=EPOCH,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return out / "one.bundle"


def verify(bundle: Path, root: Party, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_tool("verify", bundle, "--keyring", root.cert, "--json", *extra)


# --- protected key files ----------------------------------------------------------------


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory, signers: dict[str, Party]) -> Path:
    out = tmp_path_factory.mktemp("enc") / "signer.key"
    openssl("pkcs8", "-topk8", "-in", signers["rsa2048"].key, "-v2", "aes-256-cbc",
            "-passout", "pass:correct horse", "-out", out)  # fmt: skip
    return out


def create_with(
    tmp_path: Path, key: Path, cert: Path, chain: Path, *extra: str | Path, **kw: object
) -> subprocess.CompletedProcess[str]:
    image = write_image(tmp_path / "img", 4)
    return run_tool(
        "create", "--image", image, "--version", "1.0.0", "--compatible", "board",
        "--key", key, "--cert", cert, "--chain", chain, "-o", tmp_path / "b", *extra,
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_passphrase_from_a_file(
    tmp_path: Path, encrypted: Path, signers: dict[str, Party], pki: tuple[OpensslPki, Party, Party]
) -> None:
    (tmp_path / "pass").write_text("correct horse\n")
    r = create_with(tmp_path, encrypted, signers["rsa2048"].cert, pki[2].cert,
                    "--key-passphrase-file", tmp_path / "pass")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert verify(tmp_path / "b", pki[1]).returncode == 0


def test_passphrase_from_the_environment(
    tmp_path: Path, encrypted: Path, signers: dict[str, Party], pki: tuple[OpensslPki, Party, Party]
) -> None:
    r = create_with(tmp_path, encrypted, signers["rsa2048"].cert, pki[2].cert,
                    env={"BUNDLE_TOOL_KEY_PASSPHRASE": "correct horse"})  # fmt: skip
    assert r.returncode == 0, r.stderr


def run_on_a_terminal(args: list[str | Path], answer: str, prompt: bytes) -> tuple[int, str]:
    """Run bundle-tool on a pseudo-terminal; type ``answer`` once ``prompt`` shows."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: bundle-tool with the terminal as its stdin and /dev/tty
        os.execvpe(sys.executable, [sys.executable, "-m", "bundle_tool.cli", *map(str, args)],
                   {**os.environ, **EPOCH})  # fmt: skip
    seen = b""
    try:
        while prompt not in seen:
            seen += os.read(fd, 1024)
        os.write(fd, answer.encode() + b"\n")
        while chunk := os.read(fd, 1024):
            seen += chunk
    except OSError:  # EIO: the child closed the terminal
        pass
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")


def test_passphrase_typed_at_the_prompt(
    tmp_path: Path, encrypted: Path, signers: dict[str, Party], pki: tuple[OpensslPki, Party, Party]
) -> None:
    image = write_image(tmp_path / "img", 4)
    args: list[str | Path] = ["create", "--image", image, "--version", "1.0.0", "--compatible",
        "board", "--key", encrypted, "--cert", signers["rsa2048"].cert, "--chain", pki[2].cert,
        "-o", tmp_path / "b"]  # fmt: skip
    status, output = run_on_a_terminal(args, "correct horse", b"Passphrase for ")
    assert status == 0, output
    assert "correct horse" not in output  # not echoed
    assert verify(tmp_path / "b", pki[1]).returncode == 0
    status, output = run_on_a_terminal(args, "wrong", b"Passphrase for ")
    assert status == 2
    assert "the passphrase is wrong" in output


def test_passphrase_from_the_terminal_prompt(encrypted: Path, signers: dict[str, Party]) -> None:
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return "correct horse"

    secrets = keysource.KeySecrets(prompt=prompt)
    signer = keysource.load_key_signer(
        str(encrypted), signers["rsa2048"].cert.read_bytes(), None, secrets
    )
    assert asked == [f"Passphrase for {encrypted}: "]
    assert signer.certificate.subject.rfc4514_string() == "CN=Signer rsa2048,O=Example Corp"
    # The file and the environment come before the prompt.
    env_first = keysource.KeySecrets(
        environ={"BUNDLE_TOOL_KEY_PASSPHRASE": "correct horse"}, prompt=prompt
    )
    keysource.load_key_signer(str(encrypted), signers["rsa2048"].cert.read_bytes(), None, env_first)
    assert len(asked) == 1


@pytest.mark.parametrize("source", ["file", "env"])
def test_wrong_passphrase_is_refused_cleanly(
    tmp_path: Path,
    encrypted: Path,
    source: str,
    signers: dict[str, Party],
    pki: tuple[OpensslPki, Party, Party],
) -> None:
    (tmp_path / "pass").write_text("wrong\n")
    extra: list[str | Path] = (
        ["--key-passphrase-file", tmp_path / "pass"] if source == "file" else []
    )
    env = {"BUNDLE_TOOL_KEY_PASSPHRASE": "wrong"} if source == "env" else {}
    r = create_with(tmp_path, encrypted, signers["rsa2048"].cert, pki[2].cert, *extra, env=env)
    assert r.returncode == 2
    assert r.stderr == (
        f"bundle-tool: error: {encrypted}: cannot load the signing key: the passphrase is "
        "wrong, or it is not a PEM private key\n"
    )
    assert not (tmp_path / "b").exists()


def test_encrypted_key_without_passphrase_or_terminal(
    tmp_path: Path, encrypted: Path, signers: dict[str, Party], pki: tuple[OpensslPki, Party, Party]
) -> None:
    r = create_with(tmp_path, encrypted, signers["rsa2048"].cert, pki[2].cert, stdin="")
    assert r.returncode == 2
    assert "the key passphrase needed and no terminal to ask on: give --key-passphrase-file" in (
        r.stderr
    )
    with pytest.raises(UsageError, match="no terminal"):
        keysource.load_key_signer(str(encrypted), b"", None, keysource.KeySecrets())


def test_a_passphrase_file_that_cannot_be_read_is_a_usage_error(
    tmp_path: Path, encrypted: Path, signers: dict[str, Party], pki: tuple[OpensslPki, Party, Party]
) -> None:
    """A file named on the command line that is not there: 2, as a missing key or image."""
    missing = tmp_path / "no-pass"
    r = create_with(
        tmp_path, encrypted, signers["rsa2048"].cert, pki[2].cert,
        "--key-passphrase-file", missing,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("bundle-tool: error: cannot read ") and str(missing) in r.stderr
    assert not (tmp_path / "b").exists()


# --- resign -----------------------------------------------------------------------------


def payload_of(bundle: Path) -> bytes:
    info = json.loads(run_tool("info", bundle, "--json").stdout)
    size = info["payload_size"]
    return bundle.read_bytes()[-size:]


def test_resign_append_meets_a_threshold(
    tmp_path: Path, bundle: Path, signers: dict[str, Party], pki: tuple[OpensslPki, Party, Party]
) -> None:
    root = pki[1]
    assert verify(bundle, root, "--threshold", "2").returncode == 4
    s = signers["rsa2048"]
    out = tmp_path / "two.bundle"
    r = run_tool("resign", bundle, "--key", s.key, "--cert", s.cert, "--chain", pki[2].cert,
                 "--append", "-o", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    v = verify(out, root, "--threshold", "2")
    assert v.returncode == 0, v.stderr
    assert json.loads(v.stdout)["signers"] == [
        "CN=Signer ed25519,O=Example Corp",
        "CN=Signer rsa2048,O=Example Corp",
    ]
    assert payload_of(out) == payload_of(bundle)
    # Reproducible with deterministic keys (Ed25519, RSA PKCS#1 v1.5).
    again = tmp_path / "again.bundle"
    run_tool("resign", bundle, "--key", s.key, "--cert", s.cert, "--chain", pki[2].cert,
             "--append", "-o", again)  # fmt: skip
    assert again.read_bytes() == out.read_bytes()
    # A key counts once: appending it again is refused.
    r = run_tool("resign", out, "--key", s.key, "--cert", s.cert, "--append", "-o", tmp_path / "x")
    assert r.returncode == 2
    assert "same key as signature 2" in r.stderr


def test_resign_replace(
    tmp_path: Path, bundle: Path, signers: dict[str, Party], pki: tuple[OpensslPki, Party, Party]
) -> None:
    s = signers["p256"]
    out = tmp_path / "replaced.bundle"
    r = run_tool("resign", bundle, "--key", s.key, "--cert", s.cert, "--chain", pki[2].cert,
                 "-o", out, "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [e["subject"] for e in json.loads(r.stdout)["signatures"]] == [
        "CN=Signer p256,O=Example Corp"
    ]
    v = verify(out, pki[1])
    assert json.loads(v.stdout)["signers"] == ["CN=Signer p256,O=Example Corp"]
    assert payload_of(out) == payload_of(bundle)
    assert (
        json.loads(run_tool("info", out, "--json").stdout)["images"]
        == json.loads(run_tool("info", bundle, "--json").stdout)["images"]
    )


def test_resign_refuses_a_damaged_bundle(
    tmp_path: Path, bundle: Path, signers: dict[str, Party]
) -> None:
    cut = tmp_path / "cut.bundle"
    cut.write_bytes(bundle.read_bytes()[:-1])
    s = signers["p256"]
    r = run_tool("resign", cut, "--key", s.key, "--cert", s.cert, "-o", tmp_path / "o")
    assert r.returncode == 3
    assert "its header and manifest account for" in r.stderr
    assert not (tmp_path / "o").exists()


# --- extract ----------------------------------------------------------------------------


def test_extract_round_trip_with_veritysetup(tmp_path: Path, bundle: Path) -> None:
    out = tmp_path / "parts"
    r = run_tool("extract", bundle, out, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(run_tool("info", bundle, "--json").stdout)
    image = info["images"][0]
    data = out / "images" / "0.img"
    assert data.read_bytes() == (bundle.parent / "rootfs.img").read_bytes()
    assert (out / "artifacts" / "kernel.bin").read_bytes() == b"kernel bytes\n" * 100
    assert (out / "images" / "0.leafsummary").stat().st_size == image["leaf_summary_size"]
    assert (out / "signatures" / "1" / "chain-1.der").is_file()
    assert (out / "signatures" / "1" / "signature.bin").stat().st_size == 64
    manifest = json.loads((out / "manifest.json").read_bytes())
    assert manifest["images"][0]["verity"]["root_hash"] == image["verity"]["root_hash"]
    v = subprocess.run(
        ["veritysetup", "verify", data, out / "images" / "0.verity", image["verity"]["root_hash"]],
        capture_output=True,
        text=True,
    )
    assert v.returncode == 0, v.stderr
    # A flipped data byte is caught by veritysetup: the extracted tree really protects it.
    raw = bytearray(data.read_bytes())
    raw[5000] ^= 1
    data.write_bytes(bytes(raw))
    bad = subprocess.run(
        ["veritysetup", "verify", data, out / "images" / "0.verity", image["verity"]["root_hash"]],
        capture_output=True,
    )
    assert bad.returncode != 0
    r = run_tool("extract", bundle, out)
    assert r.returncode == 2
    assert "is not an empty folder" in r.stderr


# --- keygen -----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["p384", "rsa2048"])
def test_keygen_algorithms(tmp_path: Path, algorithm: str) -> None:
    keys = tmp_path / "keys"
    assert run_tool("keygen", "-o", keys, "--algorithm", algorithm).returncode == 0
    text = openssl("x509", "-in", keys / "signer.pem", "-noout", "-text")
    assert ("NIST CURVE: P-384" if algorithm == "p384" else "Public-Key: (2048 bit)") in text
    image = write_image(tmp_path / "img", 4)
    r = run_tool("create", "--image", image, "--version", "1.0.0", "--compatible", "board",
                 "--key", keys / "signer.key", "--cert", keys / "signer.pem",
                 "-o", tmp_path / "b")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert run_tool("verify", tmp_path / "b", "--keyring", keys / "ca.pem").returncode == 0
