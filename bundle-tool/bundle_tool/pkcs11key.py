"""Signing with a key on a PKCS#11 token (an HSM, a smart card, SoftHSM2).

The private key never leaves the token: the token computes each signature, by the
scheme `algorithms` gives for the certificate's key (``CKM_SHA256_RSA_PKCS`` for RSA,
``CKM_ECDSA`` over the SHA-256 or SHA-384 digest for ECDSA, ``CKM_EDDSA`` for Ed25519).
Uses the python-pkcs11 binding (``pip install abupdate[pkcs11]``), imported only here
and only when a ``pkcs11:`` key is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from . import algorithms
from .algorithms import PublicKey
from .errors import UsageError
from .pkcs11uri import Pkcs11Uri


@dataclass(frozen=True)
class Pkcs11Key:
    """A private key on a token; opens a session for each signature it makes.

    Attributes:
        uri: The parsed URI naming token and object.
        module: The PKCS#11 library to load.
        pin: The user PIN.
    """

    uri: Pkcs11Uri = field(repr=False)  # may hold pin-value
    module: str
    pin: str = field(repr=False)

    def check(self) -> None:
        """Log in and find the key once, so a wrong PIN or label fails before any work.

        Raises:
            UsageError: See `sign_message`.
        """
        self._with_key(lambda _key, _p11: b"")

    def sign_message(self, message: bytes, public_key: PublicKey) -> bytes:
        """Have the token sign the message by the scheme of ``public_key``.

        Raises:
            UsageError: The binding or module is missing, the token or key is not found,
                the PIN is wrong, or the token cannot make this kind of signature.
        """

        def make(key: Any, p11: Any) -> bytes:
            digest = algorithms.message_hash(public_key)
            if isinstance(public_key, ed25519.Ed25519PublicKey):
                return bytes(key.sign(message, mechanism=p11.Mechanism.EDDSA))
            assert digest is not None
            if isinstance(public_key, ec.EllipticCurvePublicKey):
                h = hashes.Hash(digest)
                h.update(message)
                raw = bytes(key.sign(h.finalize(), mechanism=p11.Mechanism.ECDSA))
                half = len(raw) // 2
                r, s = int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
                return encode_dss_signature(r, s)
            return bytes(key.sign(message, mechanism=p11.Mechanism.SHA256_RSA_PKCS))

        return self._with_key(make)

    def _with_key(self, action: Any) -> bytes:
        p11 = _binding()
        where = f"PKCS#11 module {self.module}"
        try:
            lib = p11.lib(self.module)
            token = self._token(lib, p11)
        except (p11.PKCS11Error, OSError, RuntimeError) as exc:
            raise UsageError(f"cannot load {where}: {exc or type(exc).__name__}") from exc
        try:
            with token.open(user_pin=self.pin) as session:
                key = session.get_key(
                    object_class=p11.ObjectClass.PRIVATE_KEY,
                    label=self.uri.object,
                    id=self.uri.object_id,
                )
                result: bytes = action(key, p11)
                return result
        except p11.exceptions.PinIncorrect as exc:
            raise UsageError(f"the PIN for token '{token.label}' is wrong") from exc
        except p11.exceptions.PinLocked as exc:
            raise UsageError(
                f"the PIN for token '{token.label}' is locked after too many wrong tries; "
                "its security officer must unlock it"
            ) from exc
        except (p11.exceptions.PinLenRange, p11.exceptions.PinInvalid) as exc:
            raise UsageError(f"the PIN for token '{token.label}' is not a valid PIN") from exc
        except p11.exceptions.NoSuchKey as exc:
            raise UsageError(
                f"token '{token.label}' holds no private key {self._object_name()}"
            ) from exc
        except p11.exceptions.MultipleObjectsReturned as exc:
            raise UsageError(
                f"token '{token.label}' holds several private keys {self._object_name()}; "
                "add id=... to the URI"
            ) from exc
        except p11.PKCS11Error as exc:
            name = type(exc).__name__
            raise UsageError(f"{where} refused to sign: {name} {exc}".rstrip()) from exc

    def _object_name(self) -> str:
        parts = []
        if self.uri.object is not None:
            parts.append(f"object={self.uri.object}")
        if self.uri.object_id is not None:
            parts.append(f"id={self.uri.object_id.hex()}")
        return " ".join(parts)

    def _token(self, lib: Any, p11: Any) -> Any:
        tokens = [
            t
            for t in lib.get_tokens(token_label=self.uri.token)
            if all(
                want is None or want == have
                for want, have in (
                    (self.uri.serial, _text(t.serial)),
                    (self.uri.path.get("manufacturer"), t.manufacturer_id),
                    (self.uri.path.get("model"), t.model),
                )
            )
        ]
        if not tokens:
            wanted = f"'{self.uri.token}'" if self.uri.token else "matching the URI"
            raise UsageError(f"no token {wanted} in PKCS#11 module {self.module}")
        if len(tokens) > 1:
            raise UsageError(
                f"{len(tokens)} tokens in PKCS#11 module {self.module} match the URI; "
                "add token=... or serial=..."
            )
        return tokens[0]


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace").strip() if isinstance(value, bytes) else value.strip()


def _binding() -> Any:
    try:
        import pkcs11  # noqa: PLC0415 - optional; only PKCS#11 keys need it
        import pkcs11.exceptions  # noqa: PLC0415
    except ImportError as exc:
        raise UsageError(
            "signing with a PKCS#11 key needs the python-pkcs11 package: "
            "pip install 'abupdate[pkcs11]'"
        ) from exc
    return pkcs11
