"""The bundle manifest: a strict JSON document, signed as raw bytes.

One model serves the writer (`to_bytes`) and the reader (`parse_manifest`).
The reader refuses unknown keys, missing keys, wrong types, duplicate keys,
out-of-range numbers and unknown format versions, naming the offending field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from . import leafsummary, verity
from .errors import BundleError

FORMAT_VERSION = 1
MAX_MANIFEST_SIZE = 1 << 20
MAX_IMAGES = 16
MAX_ARTIFACTS = 64
MAX_SIZE = (1 << 62) - 1  # every size is a signed 64-bit number; keep headroom for sums
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX = re.compile(r"^(?:[0-9a-f]{2}){0,256}$")


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
    sha256: bytes
    verity: VerityInfo
    architecture: str | None = None
    #: Bytes of the leaf summary (see leafsummary); 0 when the bundle carries none.
    leaf_summary_size: int = 0

    @property
    def payload_size(self) -> int:
        return self.verity.tree_size + self.leaf_summary_size + self.size

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sha256": self.sha256.hex(),
            "size": self.size,
            "slot_class": self.slot_class,
            "verity": self.verity.to_json(),
        }
        if self.architecture is not None:
            out["architecture"] = self.architecture
        if self.leaf_summary_size:
            out["leaf_summary_size"] = self.leaf_summary_size
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

    def _take(self, key: str, required: bool) -> Any:
        if key not in self.obj:
            if required:
                raise BundleError(f"manifest: {self.where} lacks '{key}'")
            return None
        return self.obj.pop(key)

    def take_int(self, key: str, lo: int = 0, hi: int = MAX_SIZE, required: bool = True) -> Any:
        v = self._take(key, required)
        if v is None and not required:
            return None
        if type(v) is not int or not lo <= v <= hi:
            raise BundleError(f"manifest: {self.where}.{key} must be an integer in [{lo}, {hi}]")
        return v

    def take_str(self, key: str, pattern: re.Pattern[str], required: bool = True) -> Any:
        v = self._take(key, required)
        if v is None and not required:
            return None
        if not isinstance(v, str) or not pattern.match(v):
            raise BundleError(f"manifest: {self.where}.{key} is malformed")
        return v

    def take_hex(self, key: str, pattern: re.Pattern[str] = HEX64) -> bytes:
        return bytes.fromhex(self.take_str(key, pattern))

    def take_list(self, key: str, most: int) -> list[Any]:
        v = self._take(key, True)
        if not isinstance(v, list) or len(v) > most:
            raise BundleError(f"manifest: {self.where}.{key} must be a list of at most {most}")
        return v

    def done(self) -> None:
        if self.obj:
            raise BundleError(f"manifest: unknown key '{sorted(self.obj)[0]}' in {self.where}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise BundleError(f"manifest: duplicate key '{k}'")
        out[k] = v
    return out


def _parse_verity(obj: object, where: str) -> VerityInfo:
    f = _Fields(obj, where)
    algorithm = f.take_str("hash_algorithm", re.compile(r"^sha256$"))
    data_bs = f.take_int("data_block_size", verity.BLOCK_SIZE, verity.BLOCK_SIZE)
    hash_bs = f.take_int("hash_block_size", verity.BLOCK_SIZE, verity.BLOCK_SIZE)
    data_blocks = f.take_int("data_blocks", 1, MAX_SIZE // verity.BLOCK_SIZE)
    salt = f.take_hex("salt", HEX)
    root = f.take_hex("root_hash")
    tree_size = f.take_int("tree_size", verity.BLOCK_SIZE)
    f.done()
    want = verity.Geometry.for_blocks(data_blocks).area_size
    if tree_size != want:
        raise BundleError(f"manifest: {where}.tree_size is {tree_size}, expected {want}")
    return VerityInfo(root, salt, data_blocks, tree_size, algorithm, data_bs, hash_bs)


def _parse_image(obj: object, where: str) -> Image:
    f = _Fields(obj, where)
    slot_class = f.take_str("slot_class", NAME)
    size = f.take_int("size", verity.BLOCK_SIZE)
    sha = f.take_hex("sha256")
    vinfo = _parse_verity(f._take("verity", True), where + ".verity")
    arch = f.take_str("architecture", NAME, required=False)
    summary = f.take_int("leaf_summary_size", 1, required=False)
    f.done()
    if size != vinfo.data_blocks * verity.BLOCK_SIZE:
        raise BundleError(f"manifest: {where}.size does not match verity.data_blocks")
    if summary is not None:
        want = leafsummary.summary_size(vinfo.data_blocks)
        if summary != want:
            raise BundleError(
                f"manifest: {where}.leaf_summary_size is {summary}, expected {want or 'none'}"
            )
    return Image(slot_class, size, sha, vinfo, arch, summary or 0)


def _parse_artifact(obj: object, where: str) -> Artifact:
    f = _Fields(obj, where)
    art = Artifact(
        name=f.take_str("name", NAME),
        size=f.take_int("size"),
        sha256=f.take_hex("sha256"),
        elf_machine=f.take_str("elf_machine", NAME, required=False),
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
        compatible=f.take_str("compatible", NAME),
        version=f.take_str("version", SEMVER),
        security_version=f.take_int("security_version", 0, (1 << 63) - 1),
        build_time=f.take_int("build_time", 0, (1 << 63) - 1),
        expires=f.take_int("expires", 0, (1 << 63) - 1, required=False),
        architecture=f.take_str("architecture", NAME, required=False),
        images=images,
        artifacts=artifacts,
        format=fmt,
    )
    f.done()
    if manifest.payload_size > MAX_SIZE:
        raise BundleError("manifest: payload is too large")
    return manifest
