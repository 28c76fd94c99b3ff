"""The bundle manifest: a strict JSON document, signed as raw bytes.

One model serves the writer (`to_bytes`) and the reader (`parse_manifest`).
The reader refuses unknown keys, missing keys, wrong types, duplicate keys,
out-of-range numbers and unknown format versions, naming the offending field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bootctl import validators

from . import leafsummary, verity
from .errors import BundleError

FORMAT_VERSION = 1
MAX_MANIFEST_SIZE = 1 << 20
MAX_IMAGES = 16
MAX_ARTIFACTS = 64
MAX_SIZE = (1 << 62) - 1  # every size is a signed 64-bit number; keep headroom for sums
MAX_SECURITY_VERSION = (1 << 63) - 1
#: Characters of an unknown or duplicate key a message shows.
MAX_KEY_SHOWN = 64
NAME_RULE = f"1-{validators.MAX_NAME_LENGTH} of A-Za-z0-9._+- (not starting with . _ + -)"
VERSION_RULE = f"a semantic version of at most {validators.MAX_VERSION_LENGTH} characters"
#: A string check: takes the text (already known to be a `str`), says whether it is valid.
Check = Callable[[str], bool]


@dataclass(frozen=True)
class VerityInfo:
    """dm-verity parameters of one image (sha256, 4096/4096, format 1)."""

    root_hash: bytes
    salt: bytes
    data_blocks: int
    tree_size: int
    hash_algorithm: str = verity.HASH_ALGORITHM
    data_block_size: int = verity.BLOCK_SIZE
    hash_block_size: int = verity.BLOCK_SIZE

    def to_json(self) -> dict[str, Any]:
        return {
            "data_block_size": self.data_block_size,
            "data_blocks": self.data_blocks,
            "hash_algorithm": self.hash_algorithm,
            "hash_block_size": self.hash_block_size,
            "root_hash": self.root_hash.hex(),
            "salt": self.salt.hex(),
            "tree_size": self.tree_size,
        }


@dataclass(frozen=True)
class Image:
    """One slot image: its hash area, its leaf summary (if any), then its data."""

    slot_class: str
    size: int
    #: SHA-256 of the whole image; None when the bundle leaves it out (the tree binds
    #: every byte already, see docs/bundle-format.md).
    sha256: bytes | None
    verity: VerityInfo
    architecture: str | None = None
    #: Bytes of the leaf summary (see leafsummary); 0 when the bundle carries none.
    leaf_summary_size: int = 0
    #: A file image (installed as a file, e.g. a boot image): its length in bytes; the
    #: bundle carries it padded with zeros to whole blocks. None: the image is `size` bytes.
    file_size: int | None = None
    #: Zero bytes between the leaf summary (or the hash area) and the data, so that the
    #: data starts on a 4096-byte boundary of the bundle file (0: none, as in older bundles).
    data_padding: int = 0

    @property
    def length(self) -> int:
        """Bytes of the image as it is installed (`file_size`, else `size`)."""
        return self.size if self.file_size is None else self.file_size

    @property
    def data_start(self) -> int:
        """Where the data starts in this image's part of the payload."""
        return self.verity.tree_size + self.leaf_summary_size + self.data_padding

    @property
    def payload_size(self) -> int:
        return self.data_start + self.size

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "size": self.size,
            "slot_class": self.slot_class,
            "verity": self.verity.to_json(),
        }
        if self.sha256 is not None:
            out["sha256"] = self.sha256.hex()
        if self.architecture is not None:
            out["architecture"] = self.architecture
        if self.leaf_summary_size:
            out["leaf_summary_size"] = self.leaf_summary_size
        if self.file_size is not None:
            out["file_size"] = self.file_size
        if self.data_padding:
            out["data_padding"] = self.data_padding
        return out


@dataclass(frozen=True)
class Artifact:
    """An extra file (kernel, bootloader...) carried after the images."""

    name: str
    size: int
    sha256: bytes
    elf_machine: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "sha256": self.sha256.hex(), "size": self.size}
        if self.elf_machine is not None:
            out["elf_machine"] = self.elf_machine
        return out


@dataclass(frozen=True)
class Manifest:
    """What a bundle holds and for which devices."""

    compatible: str
    version: str
    security_version: int
    build_time: int
    images: tuple[Image, ...]
    artifacts: tuple[Artifact, ...] = ()
    expires: int | None = None
    architecture: str | None = None
    format: int = field(default=FORMAT_VERSION)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "artifacts": [a.to_json() for a in self.artifacts],
            "build_time": self.build_time,
            "compatible": self.compatible,
            "format": self.format,
            "images": [i.to_json() for i in self.images],
            "security_version": self.security_version,
            "version": self.version,
        }
        if self.expires is not None:
            out["expires"] = self.expires
        if self.architecture is not None:
            out["architecture"] = self.architecture
        return out

    def to_bytes(self) -> bytes:
        """Canonical encoding: sorted keys, no whitespace, UTF-8."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def payload_size(self) -> int:
        """Bytes after the signature block that this manifest accounts for."""
        return sum(i.payload_size for i in self.images) + sum(a.size for a in self.artifacts)


class _Fields:
    """Takes typed fields out of one JSON object and refuses whatever is left."""

    def __init__(self, obj: object, where: str) -> None:
        if not isinstance(obj, dict):
            raise BundleError(f"manifest: {where} must be an object")
        self.obj: dict[str, Any] = dict(obj)
        self.where = where

    def has(self, key: str) -> bool:
        """Whether an optional key is present (then it must be of its type: null is not)."""
        return key in self.obj

    def take(self, key: str) -> Any:
        if key not in self.obj:
            raise BundleError(f"manifest: {self.where} lacks '{key}'")
        return self.obj.pop(key)

    def take_int(self, key: str, lo: int = 0, hi: int = MAX_SIZE) -> int:
        v = self.take(key)
        if type(v) is not int or not lo <= v <= hi:
            raise BundleError(f"manifest: {self.where}.{key} must be an integer in [{lo}, {hi}]")
        return v

    def take_str(self, key: str, check: Check, rule: str) -> str:
        v = self.take(key)
        if not isinstance(v, str) or not check(v):
            raise BundleError(f"manifest: {self.where}.{key} is malformed (must be {rule})")
        return v

    def take_name(self, key: str) -> str:
        return self.take_str(key, validators.is_name, NAME_RULE)

    def take_hex(self, key: str, lo: int = 32, hi: int = 32) -> bytes:
        v = self.take(key)
        value = validators.parse_hex(v, lo, hi) if isinstance(v, str) else None
        if value is None:
            size = f"{lo}" if lo == hi else f"{lo}-{hi}"
            raise BundleError(
                f"manifest: {self.where}.{key} is malformed (must be {size} bytes of lowercase hex)"
            )
        return value

    def take_list(self, key: str, most: int) -> list[Any]:
        v = self.take(key)
        if not isinstance(v, list) or len(v) > most:
            raise BundleError(f"manifest: {self.where}.{key} must be a list of at most {most}")
        return v

    def done(self) -> None:
        if self.obj:
            key = _key_shown(sorted(self.obj)[0])
            raise BundleError(f"manifest: unknown key '{key}' in {self.where}")


def _key_shown(key: str) -> str:
    """A key as a message names it: an unknown one may be up to 1 MiB long."""
    return key if len(key) <= MAX_KEY_SHOWN else f"{key[:MAX_KEY_SHOWN]}... ({len(key)} characters)"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise BundleError(f"manifest: duplicate key '{_key_shown(k)}'")
        out[k] = v
    return out


def _parse_verity(obj: object, where: str) -> VerityInfo:
    f = _Fields(obj, where)
    algorithm = f.take_str(
        "hash_algorithm", lambda v: v == verity.HASH_ALGORITHM, verity.HASH_ALGORITHM
    )
    data_bs = f.take_int("data_block_size", verity.BLOCK_SIZE, verity.BLOCK_SIZE)
    hash_bs = f.take_int("hash_block_size", verity.BLOCK_SIZE, verity.BLOCK_SIZE)
    data_blocks = f.take_int("data_blocks", 1, MAX_SIZE // verity.BLOCK_SIZE)
    salt = f.take_hex("salt", validators.MIN_SALT_SIZE, validators.MAX_SALT_SIZE)
    root = f.take_hex("root_hash")
    tree_size = f.take_int("tree_size", verity.BLOCK_SIZE)
    f.done()
    want = verity.Geometry.for_blocks(data_blocks).area_size
    if tree_size != want:
        raise BundleError(f"manifest: {where}.tree_size is {tree_size}, expected {want}")
    return VerityInfo(root, salt, data_blocks, tree_size, algorithm, data_bs, hash_bs)


def _parse_image(obj: object, where: str) -> Image:
    f = _Fields(obj, where)
    slot_class = f.take_name("slot_class")
    size = f.take_int("size", verity.BLOCK_SIZE)
    sha = f.take_hex("sha256") if f.has("sha256") else None
    vinfo = _parse_verity(f.take("verity"), where + ".verity")
    arch = f.take_name("architecture") if f.has("architecture") else None
    summary = f.take_int("leaf_summary_size", 1) if f.has("leaf_summary_size") else None
    file_size = f.take_int("file_size", 1) if f.has("file_size") else None
    padding = f.take_int("data_padding", 1, verity.BLOCK_SIZE - 1) if f.has("data_padding") else 0
    f.done()
    if size != vinfo.data_blocks * verity.BLOCK_SIZE:
        raise BundleError(f"manifest: {where}.size does not match verity.data_blocks")
    if file_size is not None and not size - verity.BLOCK_SIZE < file_size <= size:
        raise BundleError(f"manifest: {where}.file_size must lie in the last block of size")
    if summary is not None:
        want = leafsummary.summary_size(vinfo.data_blocks)
        if summary != want:
            raise BundleError(
                f"manifest: {where}.leaf_summary_size is {summary}, expected {want or 'none'}"
            )
    return Image(slot_class, size, sha, vinfo, arch, summary or 0, file_size, padding)


def _parse_artifact(obj: object, where: str) -> Artifact:
    f = _Fields(obj, where)
    art = Artifact(
        name=f.take_name("name"),
        size=f.take_int("size"),
        sha256=f.take_hex("sha256"),
        elf_machine=f.take_name("elf_machine") if f.has("elf_machine") else None,
    )
    f.done()
    return art


def parse_manifest(raw: bytes) -> Manifest:
    """Parse and check signed manifest bytes (pure; raises BundleError)."""
    if len(raw) > MAX_MANIFEST_SIZE:
        raise BundleError("manifest is larger than 1 MiB")
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, BundleError):
            raise
        raise BundleError(f"manifest is not valid JSON: {e}") from e
    f = _Fields(obj, "manifest")
    fmt = f.take_int("format", 0, 1 << 31)
    if fmt != FORMAT_VERSION:
        raise BundleError(
            f"manifest format {fmt} is not supported (this version reads {FORMAT_VERSION})"
        )
    images = tuple(
        _parse_image(o, f"images[{n}]") for n, o in enumerate(f.take_list("images", MAX_IMAGES))
    )
    if not images:
        raise BundleError("manifest lists no image")
    artifacts = tuple(
        _parse_artifact(o, f"artifacts[{n}]")
        for n, o in enumerate(f.take_list("artifacts", MAX_ARTIFACTS))
    )
    manifest = Manifest(
        compatible=f.take_name("compatible"),
        version=f.take_str("version", validators.is_semver, VERSION_RULE),
        security_version=f.take_int("security_version", 0, MAX_SECURITY_VERSION),
        build_time=f.take_int("build_time", 0, validators.MAX_TIME),
        expires=f.take_int("expires", 0, validators.MAX_TIME) if f.has("expires") else None,
        architecture=f.take_name("architecture") if f.has("architecture") else None,
        images=images,
        artifacts=artifacts,
        format=fmt,
    )
    f.done()
    classes = [i.slot_class for i in images]
    if len(set(classes)) != len(classes):
        raise BundleError("manifest: two images have the same slot_class")
    names = [a.name for a in artifacts]
    for n, name in enumerate(names):
        if name in names[:n]:
            # Each is installed under its name: the second would replace the first.
            raise BundleError(f"manifest: two artifacts have the same name: {name}")
    if manifest.payload_size > MAX_SIZE:
        raise BundleError("manifest: payload is too large")
    return manifest
