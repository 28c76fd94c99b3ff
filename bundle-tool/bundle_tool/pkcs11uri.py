"""PKCS#11 URIs (RFC 7512): which token and key object to sign with.

    pkcs11:token=build%20hsm;object=bundle-signer;type=private?module-path=/usr/lib/x.so&pin-source=file:/run/pin

The path part (before ``?``, attributes separated by ``;``) selects the token and the
object; the query part (``&``-separated) says how to reach them: ``module-path`` (the
PKCS#11 library), ``pin-value`` or ``pin-source`` (a file holding the PIN). Values are
percent-decoded. Pure: parsing only.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field

from .errors import UsageError

SCHEME = "pkcs11:"
# RFC 7512 section 2.3 and its registered additions; an unknown path attribute is refused
# (it would select something we cannot honour), an unknown query attribute too.
PATH_ATTRIBUTES = frozenset(
    {
        "token",
        "manufacturer",
        "serial",
        "model",
        "library-manufacturer",
        "library-description",
        "library-version",
        "slot-description",
        "slot-manufacturer",
        "slot-id",
        "object",
        "id",
        "type",
    }
)
QUERY_ATTRIBUTES = frozenset({"module-path", "module-name", "pin-value", "pin-source"})
OBJECT_TYPES = frozenset({"private", "public", "cert", "secret-key", "data"})


@dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed PKCS#11 URI.

    Attributes:
        path: Path attributes (token and object selection), decoded; ``id`` stays raw bytes
            in `object_id`.
        query: Query attributes (module, PIN), decoded.
        object_id: The ``id`` attribute as bytes, if given.
    """

    path: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    object_id: bytes | None = None

    @property
    def token(self) -> str | None:
        """The token label."""
        return self.path.get("token")

    @property
    def object(self) -> str | None:
        """The key object's label."""
        return self.path.get("object")

    @property
    def serial(self) -> str | None:
        """The token serial number."""
        return self.path.get("serial")

    @property
    def module_path(self) -> str | None:
        """The PKCS#11 library to load."""
        return self.query.get("module-path")

    @property
    def pin_value(self) -> str | None:
        """The PIN itself (avoid: it ends up in shell history and process lists)."""
        return self.query.get("pin-value")

    @property
    def pin_source(self) -> str | None:
        """Where to read the PIN: a file path or a ``file:`` URI."""
        return self.query.get("pin-source")


def is_pkcs11_uri(text: str) -> bool:
    """Whether a ``--key`` value names a key on a token rather than a file."""
    return text.lower().startswith(SCHEME)


def _pairs(part: str, sep: str, what: str) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for item in part.split(sep):
        if not item:
            continue
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise UsageError(f"PKCS#11 URI: {what} attribute '{item}' is not NAME=VALUE")
        out.append((name.lower(), urllib.parse.unquote_to_bytes(value)))
    return out


def parse_pkcs11_uri(text: str) -> Pkcs11Uri:
    """Parse a ``pkcs11:`` URI.

    Raises:
        UsageError: It is not a PKCS#11 URI, repeats or does not know an attribute, names
            an object type other than a private key, or holds text that is not UTF-8.
    """
    if not is_pkcs11_uri(text):
        raise UsageError(f"'{text}' is not a PKCS#11 URI (it must start with 'pkcs11:')")
    body = text[len(SCHEME) :]
    path_part, _, query_part = body.partition("?")
    result = Pkcs11Uri()
    for part, known, what, into in (
        (path_part, PATH_ATTRIBUTES, "path", result.path),
        (query_part, QUERY_ATTRIBUTES, "query", result.query),
    ):
        for name, raw in _pairs(part, ";" if what == "path" else "&", what):
            if name not in known:
                raise UsageError(
                    f"PKCS#11 URI: unknown {what} attribute '{name}' "
                    f"(known: {', '.join(sorted(known))})"
                )
            if name in into or (name == "id" and result.object_id is not None):
                raise UsageError(f"PKCS#11 URI: attribute '{name}' is given twice")
            if name == "id":
                result = Pkcs11Uri(result.path, result.query, raw)
                continue
            try:
                into[name] = raw.decode()
            except UnicodeDecodeError as exc:
                raise UsageError(f"PKCS#11 URI: attribute '{name}' is not UTF-8") from exc
    kind = result.path.get("type")
    if kind is not None and kind != "private":
        raise UsageError(
            f"PKCS#11 URI: type={kind} names no private key; sign with type=private (or leave "
            "type out)"
        )
    if "pin-value" in result.query and "pin-source" in result.query:
        raise UsageError("PKCS#11 URI: give pin-value or pin-source, not both")
    if result.object is None and result.object_id is None:
        raise UsageError("PKCS#11 URI: name the key with object=LABEL or id=%XX...")
    return result
