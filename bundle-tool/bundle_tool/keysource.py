"""Where signing keys come from: key files (maybe passphrase-protected) or PKCS#11 tokens.

A ``--key`` value is a PEM file, or a ``pkcs11:`` URI (RFC 7512) naming a key on a token.

Passphrase of an encrypted key file, first found: ``--key-passphrase-file FILE``, the
environment variable ``BUNDLE_TOOL_KEY_PASSPHRASE``, a prompt on the terminal.

Token PIN, first found: the URI's ``pin-value``, its ``pin-source`` (a file), the
environment variable ``BUNDLE_TOOL_PKCS11_PIN``, a prompt on the terminal. The PKCS#11
library: the URI's ``module-path``, else ``--pkcs11-module FILE``.

Secrets read from a file lose one trailing newline (``echo secret > file`` works).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError
from .pkcs11key import Pkcs11Key
from .pkcs11uri import is_pkcs11_uri, parse_pkcs11_uri
from .signing import Signer, key_is_encrypted, load_private_key, signer_for

PASSPHRASE_ENV = "BUNDLE_TOOL_KEY_PASSPHRASE"  # noqa: S105 - a variable name, not a secret
PIN_ENV = "BUNDLE_TOOL_PKCS11_PIN"

#: prompt(text) -> the answer; None when there is no terminal to ask on.
Prompt = Callable[[str], str]


@dataclass(frozen=True)
class KeySecrets:
    """What may unlock keys: the sources above, injected so tests need no terminal.

    Attributes:
        passphrase_file: ``--key-passphrase-file``.
        pkcs11_module: ``--pkcs11-module``.
        environ: The environment to read the two variables from.
        prompt: Asks on the terminal; None when standard input is not a terminal.
    """

    passphrase_file: Path | None = None
    pkcs11_module: Path | None = None
    environ: Mapping[str, str] = field(default_factory=dict)
    prompt: Prompt | None = None


def _read_secret(path: Path, what: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from exc
    text = data.decode(errors="surrogateescape")
    return text[:-1] if text.endswith("\n") else text


def _secret(
    *,
    given: str | None,
    path: Path | None,
    env: str,
    secrets: KeySecrets,
    what: str,
    ask: str,
    options: str,
) -> str:
    if given is not None:
        return given
    if path is not None:
        return _read_secret(path, what)
    if env in secrets.environ:
        return secrets.environ[env]
    if secrets.prompt is not None:
        return secrets.prompt(ask)
    raise UsageError(f"{what} needed and no terminal to ask on: give {options}")


def _pin_source(source: str | None) -> Path | None:
    if source is None:
        return None
    if source.startswith("file:"):
        rest = source[len("file:") :]
        return Path(rest[2:] if rest.startswith("//") else rest)
    if "://" in source or source.startswith("|"):
        raise UsageError(f"PKCS#11 URI: pin-source '{source}' is not a file")
    return Path(source)


def load_key_signer(
    key: str, cert_pem: bytes, chain_pem: bytes | None, secrets: KeySecrets
) -> Signer:
    """A signer for one ``--key`` value and its certificate.

    Raises:
        UsageError: The key cannot be used (see `signing.load_signer` and `Pkcs11Key`), a
            secret it needs is not given and there is no terminal, or a key, passphrase or
            PIN file cannot be read (a file named that is missing: docs/exit-status.md).
    """
    if is_pkcs11_uri(key):
        uri = parse_pkcs11_uri(key)
        module = uri.module_path or (str(secrets.pkcs11_module) if secrets.pkcs11_module else None)
        if module is None:
            raise UsageError(
                "a PKCS#11 key needs its module: give --pkcs11-module FILE or module-path= "
                "in the URI"
            )
        pin = _secret(
            given=uri.pin_value,
            path=_pin_source(uri.pin_source),
            env=PIN_ENV,
            secrets=secrets,
            what="the token PIN",
            ask=f"PIN for token {uri.token or '(any)'}: ",
            options=f"pin-source= in the URI or {PIN_ENV}",
        )
        token_key = Pkcs11Key(uri=uri, module=module, pin=pin)
        token_key.check()
        return signer_for(token_key, cert_pem, chain_pem)
    try:
        key_pem = Path(key).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read key {key}: {exc.strerror}") from exc
    password = None
    if key_is_encrypted(key_pem):
        passphrase = _secret(
            given=None,
            path=secrets.passphrase_file,
            env=PASSPHRASE_ENV,
            secrets=secrets,
            what="the key passphrase",
            ask=f"Passphrase for {key}: ",
            options=f"--key-passphrase-file FILE or {PASSPHRASE_ENV}",
        )
        password = passphrase.encode(errors="surrogateescape")
    try:
        private = load_private_key(key_pem, password)
    except UsageError as exc:
        raise UsageError(f"{key}: {exc}") from exc
    return signer_for(private, cert_pem, chain_pem)


def load_signers(
    keys: Sequence[str],
    certs: Sequence[bytes],
    chain_pem: bytes | None,
    secrets: KeySecrets,
) -> list[Signer]:
    """One signer per ``--key``/``--cert`` pair (see `load_key_signer`).

    Raises:
        UsageError: The counts differ, or a key cannot be used.
    """
    if len(keys) != len(certs):
        raise UsageError("give one --cert for every --key, in the same order")
    return [load_key_signer(k, c, chain_pem, secrets) for k, c in zip(keys, certs, strict=True)]
