"""The bundle container: fixed header, manifest, signature block, payload.

    offset 0        header (64 bytes, the only bytes parsed before the signature check)
    64              manifest (JSON, manifest_size bytes; the signed bytes)
    64+M            signature block (signatures_size bytes)
    64+M+S          payload: per image its dm-verity hash area then its data,
                    then the artifacts, in manifest order; nothing else

All sizes are signed 64-bit little-endian. docs/bundle-format.md is the
normative description; this module is its single implementation, used by the
writer and every reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from construct import Array as CArray
from construct import (
    Bytes,
    Check,
    ConstructError,
    GreedyBytes,
    Int32ul,
    Int64sl,
    Prefixed,
    PrefixedArray,
    Struct,
    Terminated,
    this,
)
from cryptography import x509

from .errors import BundleError
from .keyring import Keyring
from .manifest import MAX_MANIFEST_SIZE, Artifact, Image, Manifest, parse_manifest
from .signing import (
    MAX_SIGNATURES,
    SignatureEntry,
    VerifiedSigner,
    check_entry_size,
    verify_signatures,
)

MAGIC = b"ABUPDATE"
HEADER_SIZE = 64
CONTAINER_VERSION = 1
MAX_SIGNATURES_SIZE = 1 << 20

HEADER = Struct(
    "magic" / Bytes(8),
    "container_version" / Int32ul,
    "header_size" / Int32ul,
    "manifest_size" / Int64sl,
    "signatures_size" / Int64sl,
    "payload_size" / Int64sl,
    "reserved" / Bytes(24),
)
assert HEADER.sizeof() == HEADER_SIZE

_BLOB = Prefixed(Int64sl, GreedyBytes)
SIGNATURE_BLOCK = Struct(
    "count" / Int64sl,
    Check(lambda ctx: 1 <= ctx.count <= MAX_SIGNATURES),
    "entries"
    / CArray(
        this.count,
        Struct(
            "certificate" / _BLOB,
            "chain" / PrefixedArray(Int64sl, _BLOB),
            "signature" / _BLOB,
        ),
    ),
    Terminated,
)


@dataclass(frozen=True)
class Header:
    """The fixed-size header."""

    manifest_size: int
    signatures_size: int
    payload_size: int

    @property
    def head_size(self) -> int:
        """Bytes before the payload."""
        return HEADER_SIZE + self.manifest_size + self.signatures_size

    @property
    def total_size(self) -> int:
        return self.head_size + self.payload_size

    def to_bytes(self) -> bytes:
        raw: bytes = HEADER.build(
            {
                "magic": MAGIC,
                "container_version": CONTAINER_VERSION,
                "header_size": HEADER_SIZE,
                "manifest_size": self.manifest_size,
                "signatures_size": self.signatures_size,
                "payload_size": self.payload_size,
                "reserved": bytes(24),
            }
        )
        return raw


def parse_header(raw: bytes) -> Header:
    """Parse and bound-check the header (pure; raises BundleError)."""
    if len(raw) < HEADER_SIZE:
        raise BundleError(f"bundle is truncated: {len(raw)} bytes, header needs {HEADER_SIZE}")
    h = HEADER.parse(raw[:HEADER_SIZE])
    if h.magic != MAGIC:
        raise BundleError("not a bundle (bad magic)")
    if h.container_version != CONTAINER_VERSION:
        raise BundleError(f"bundle container version {h.container_version} is not supported")
    if h.header_size != HEADER_SIZE or h.reserved != bytes(24):
        raise BundleError("bundle header is malformed")
    if not 2 <= h.manifest_size <= MAX_MANIFEST_SIZE:
        raise BundleError(f"manifest size {h.manifest_size} is out of range")
    if not 8 <= h.signatures_size <= MAX_SIGNATURES_SIZE:
        raise BundleError(f"signature block size {h.signatures_size} is out of range")
    if h.payload_size < 0:
        raise BundleError("payload size is negative")
    return Header(h.manifest_size, h.signatures_size, h.payload_size)


def build_signature_block(entries: Sequence[SignatureEntry]) -> bytes:
    """Encode signature entries."""
    raw: bytes = SIGNATURE_BLOCK.build(
        {
            "count": len(entries),
            "entries": [
                {"certificate": e.certificate, "chain": list(e.chain), "signature": e.signature}
                for e in entries
            ],
        }
    )
    return raw


def parse_signature_block(raw: bytes) -> tuple[SignatureEntry, ...]:
    """Decode the signature block; it must be consumed exactly (pure)."""
    try:
        block = SIGNATURE_BLOCK.parse(raw)
    except (ConstructError, OverflowError, MemoryError) as e:
        raise BundleError("signature block is malformed") from e
    entries = []
    for n, item in enumerate(block.entries, 1):
        entry = SignatureEntry(
            bytes(item.certificate), tuple(map(bytes, item.chain)), bytes(item.signature)
        )
        check_entry_size(entry, n)
        entries.append(entry)
    return tuple(entries)


@dataclass(frozen=True)
class ImageLayout:
    """Where one image's hash area and data lie in the bundle (absolute offsets)."""

    image: Image
    area_offset: int
    data_offset: int

    @property
    def summary_offset(self) -> int:
        """Where the leaf summary lies (between the hash area and the data)."""
        return self.area_offset + self.image.verity.tree_size


@dataclass(frozen=True)
class ArtifactLayout:
    artifact: Artifact
    offset: int


@dataclass(frozen=True)
class VerifiedHead:
    """A bundle head whose signatures were checked: everything else is derived from it."""

    header: Header
    manifest: Manifest
    manifest_raw: bytes
    signers: tuple[VerifiedSigner, ...]
    images: tuple[ImageLayout, ...]
    artifacts: tuple[ArtifactLayout, ...]

    @property
    def total_size(self) -> int:
        return self.header.total_size


def layout(
    header: Header, manifest: Manifest
) -> tuple[tuple[ImageLayout, ...], tuple[ArtifactLayout, ...]]:
    """Offsets of every payload part, derived from the signed manifest."""
    images, pos = place_images(header.head_size, manifest.images)
    artifacts = []
    for art in manifest.artifacts:
        artifacts.append(ArtifactLayout(art, pos))
        pos += art.size
    return tuple(images), tuple(artifacts)


def place_images(head_size: int, images: Sequence[Image]) -> tuple[tuple[ImageLayout, ...], int]:
    """Where each image lies after a head of `head_size` bytes, and where the images end.

    The one definition of the images' places: the reader's `layout` and the writer's.
    """
    pos = head_size
    places = []
    for image in images:
        places.append(ImageLayout(image, pos, pos + image.data_start))
        pos += image.payload_size
    return tuple(places), pos


def payload_size_problem(header: Header, manifest: Manifest) -> str | None:
    """Why the header's payload size is not the manifest's (None: it is)."""
    if manifest.payload_size == header.payload_size:
        return None
    return (
        f"header announces a {header.payload_size}-byte payload, "
        f"the manifest accounts for {manifest.payload_size}"
    )


def _check_payload_size(header: Header, manifest: Manifest) -> None:
    problem = payload_size_problem(header, manifest)
    if problem is not None:
        raise BundleError(problem)


def verify_head(
    head: bytes,
    keyring: Keyring | Sequence[x509.Certificate],
    *,
    at: datetime,
    threshold: int = 1,
) -> VerifiedHead:
    """Check a bundle head: header, signatures over the raw manifest, then the manifest.

    Pure: `head` holds the first `Header.head_size` bytes of the bundle. Nothing
    in the manifest is looked at before the signatures hold.

    Raises:
        BundleError: the head is malformed or inconsistent.
        TrustError: the signatures do not establish trust.
    """
    header = parse_header(head)
    if len(head) != header.head_size:
        raise BundleError(
            f"bundle is truncated: head has {len(head)} bytes, header announces {header.head_size}"
        )
    manifest_raw = head[HEADER_SIZE : HEADER_SIZE + header.manifest_size]
    entries = parse_signature_block(head[HEADER_SIZE + header.manifest_size :])
    signers = verify_signatures(manifest_raw, entries, keyring, at=at, threshold=threshold)
    manifest = parse_manifest(manifest_raw)
    _check_payload_size(header, manifest)
    images, artifacts = layout(header, manifest)
    return VerifiedHead(header, manifest, manifest_raw, signers, images, artifacts)


@dataclass(frozen=True)
class UncheckedHead:
    """A bundle head parsed WITHOUT checking signatures (display, re-signing, extraction)."""

    header: Header
    manifest_raw: bytes
    manifest: Manifest
    entries: tuple[SignatureEntry, ...]


def parse_head(head: bytes) -> UncheckedHead:
    """Parse a bundle head (the first `Header.head_size` bytes) without checking signatures.

    Raises:
        BundleError: the head is malformed, truncated or inconsistent.
    """
    header = parse_header(head)
    if len(head) < header.head_size:
        raise BundleError(
            f"bundle is truncated: head has {len(head)} bytes, header announces {header.head_size}"
        )
    manifest_raw = head[HEADER_SIZE : HEADER_SIZE + header.manifest_size]
    entries = parse_signature_block(head[HEADER_SIZE + header.manifest_size : header.head_size])
    manifest = parse_manifest(manifest_raw)
    _check_payload_size(header, manifest)
    return UncheckedHead(header, manifest_raw, manifest, entries)


def inspect_head(head: bytes) -> tuple[Manifest, tuple[SignatureEntry, ...]]:
    """Parse a bundle head WITHOUT checking signatures, for display only (`bundle-tool info`)."""
    header = parse_header(head)
    manifest_raw = head[HEADER_SIZE : HEADER_SIZE + header.manifest_size]
    entries = parse_signature_block(head[HEADER_SIZE + header.manifest_size : header.head_size])
    return parse_manifest(manifest_raw), entries
