"""Throwaway development boot keys: what the firmware or bootloader trusts.

* `fit/NAME.key`, `fit/NAME.crt`: the RSA-2048 key that signs FIT images; its public
  half goes into U-Boot's control DTB (`bundle-tool bootloader --dtb`).
* `uefi/PK`, `uefi/KEK`, `uefi/db` (`.key` + `.crt`): UEFI Secure Boot keys to enroll
  in the firmware; db signs GRUB and the UKIs (`sbsign`).
* `gpg/`: a gpg home with an RSA key, and `gpg/boot.gpg`, its public key for
  `grub-mkstandalone --pubkey`: GRUB then checks a detached signature of every file it
  loads from the disk.

Like `keygen`, every file is for trying the tool out and for tests, written
unencrypted and labelled as not for production.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from .bootimage import BootKeys, UefiSigner
from .errors import BundleIOError, UsageError
from .keygen import DEV_LABEL

UEFI_KEYS = ("PK", "KEK", "db")
_COMMENT = f"# {DEV_LABEL}: throwaway boot key made by `bundle-tool keygen --boot`\n".encode()


@dataclass(frozen=True)
class DevBootKeys(BootKeys):
    """The development boot keys under one folder (`fit/`, `uefi/`, `gpg/` inside)."""

    def uefi_cert(self, name: str) -> Path:
        """The PEM certificate of `PK`, `KEK` or `db`."""
        return self.root / "uefi" / f"{name}.crt"

    @property
    def gpg_home(self) -> Path:
        """The gpg home with GRUB's signing key."""
        return self.root / "gpg"

    @property
    def uefi_signer(self) -> UefiSigner:
        """What `build_uki` signs with: db and the gpg key."""
        return self.uefi


def enroll_uefi_keys(keys: DevBootKeys, template: Path, out: Path) -> None:
    """Write a firmware variable store with PK, KEK and db enrolled and Secure Boot on.

    `template` is the firmware's empty store (OVMF: `OVMF_VARS_4M.fd`); `virt-fw-vars`
    (PyPI `virt-firmware`) writes the keys. A real board's keys are enrolled in its
    firmware setup instead (docs/verified-boot.md).
    """
    owner = str(uuid.uuid5(uuid.NAMESPACE_URL, "abupdate-dev-boot-keys"))
    cmd = ["virt-fw-vars", "-i", str(template), "-o", str(out), "--sb"]
    cmd += ["--set-pk", owner, str(keys.uefi_cert("PK"))]
    cmd += ["--add-kek", owner, str(keys.uefi_cert("KEK"))]
    cmd += ["--add-db", owner, str(keys.uefi_cert("db"))]
    tool = shutil.which("virt-fw-vars", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if tool is None:
        raise UsageError("virt-fw-vars is not installed (pip install virt-firmware)")
    done = subprocess.run([tool, *cmd[1:]], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise UsageError(f"virt-fw-vars failed: {lines[-1] if lines else done.returncode}")


def _rsa_cert(common_name: str, days: int, now: datetime.datetime) -> tuple[bytes, bytes]:
    """A new RSA-2048 key and its self-signed certificate, both PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "abupdate"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} - {DEV_LABEL}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return _COMMENT + key_pem, _COMMENT + cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_dev_boot_keys(
    out_dir: Path, *, days: int = 3650, now: datetime.datetime | None = None
) -> DevBootKeys:
    """Write the FIT key, the UEFI PK/KEK/db and GRUB's gpg key into `out_dir`.

    Raises:
        UsageError: `out_dir` already holds boot keys, or gpg is missing.
        BundleIOError: The files could not be written.
    """
    keys = DevBootKeys(out_dir)
    if days < 1:
        raise UsageError(f"certificate validity must be at least 1 day, not {days}")
    start = now if now is not None else datetime.datetime.now(datetime.UTC)
    try:
        for sub in ("fit", "uefi", "gpg"):
            (out_dir / sub).mkdir(parents=True, exist_ok=False, mode=0o700)
        key, cert = _rsa_cert("abupdate FIT signing key", days, start)
        _write(keys.fit.directory / f"{keys.fit.name}.key", key, 0o600)
        _write(keys.fit.directory / f"{keys.fit.name}.crt", cert, 0o644)
        for name in UEFI_KEYS:
            key, cert = _rsa_cert(f"abupdate UEFI {name}", days, start)
            _write(out_dir / "uefi" / f"{name}.key", key, 0o600)
            _write(keys.uefi_cert(name), cert, 0o644)
    except FileExistsError as e:
        raise UsageError(f"{e.filename} already exists; choose an empty directory") from e
    except OSError as e:
        raise BundleIOError(f"cannot write boot keys to {out_dir}: {e}") from e
    _make_gpg_key(keys, days)
    return keys


def _make_gpg_key(keys: DevBootKeys, days: int) -> None:
    gpg = ["gpg", "--homedir", str(keys.gpg_home), "--batch", "--quiet"]
    uid = f"abupdate boot key ({DEV_LABEL})"
    try:
        subprocess.run(
            [
                *(*gpg, "--passphrase", "", "--pinentry-mode", "loopback"),
                *("--quick-generate-key", uid, "rsa2048", "sign", f"{days}d"),
            ],
            check=True,
            capture_output=True,
        )
        public = subprocess.run([*gpg, "--export"], check=True, capture_output=True).stdout
    except FileNotFoundError as e:
        raise UsageError("gpg is not installed; it makes GRUB's signing key") from e
    except subprocess.CalledProcessError as e:
        last = e.stderr.decode(errors="replace").strip().splitlines()
        raise UsageError(f"gpg failed: {last[-1] if last else e.returncode}") from e
    finally:
        # The agent gpg started keeps the home's path: stopped now, the folder can be moved
        # (a new agent starts where it is used; one left running would answer for the old
        # path, "No secret key").
        subprocess.run(
            ["gpgconf", "--homedir", str(keys.gpg_home), "--kill", "gpg-agent"],
            check=False,
            capture_output=True,
        )
    if not public:
        raise UsageError("gpg made no public key")
    _write(keys.gpg_public, public, 0o644)
