"""docs/bundle-format.md states the bounds the reader enforces: its tables against the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bootctl import validators
from bundle_tool import container, manifest, signing
from bundle_tool.errors import BundleError

DOC = Path(__file__).resolve().parents[2] / "docs" / "bundle-format.md"


def doc_text() -> str:
    """The page, with its en dashes (ranges) read as hyphens."""
    return DOC.read_text().replace("\N{EN DASH}", "-")


def doc_bounds() -> dict[str, str]:
    text = doc_text()
    section = text.split("### Bounds", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|$", section, re.MULTILINE)
    return {k: v for k, v in rows if k != "bound" and not set(k) <= {"-"}}


def test_the_bounds_table_is_the_readers_constants() -> None:
    assert doc_bounds() == {
        "manifest size": f"{manifest.MAX_MANIFEST_SIZE} bytes",
        "name length": f"{validators.MAX_NAME_LENGTH} characters",
        "version length": f"{validators.MAX_VERSION_LENGTH} characters",
        "salt size": f"{validators.MIN_SALT_SIZE}-{validators.MAX_SALT_SIZE} bytes",
        "time": f"0-{validators.MAX_TIME}",
        "security version": f"0-{manifest.MAX_SECURITY_VERSION}",
        "size of an image, an artifact or the payload": f"at most {manifest.MAX_SIZE} bytes",
        "images": f"1-{manifest.MAX_IMAGES}",
        "artifacts": f"0-{manifest.MAX_ARTIFACTS}",
    }


def test_the_prose_names_the_same_limits() -> None:
    text = doc_text()
    assert f"1-{validators.MAX_NAME_LENGTH} ASCII characters" in text
    assert f"from 0 to {validators.MAX_TIME}" in text
    assert f"at most {validators.MAX_VERSION_LENGTH} characters" in text
    assert f"{validators.MIN_SALT_SIZE}-{validators.MAX_SALT_SIZE} bytes (the boot" in text


def signature_block_table() -> dict[str, str]:
    """The rows of the table under "## Signature block": field -> limit."""
    section = doc_text().split("## Signature block", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3 and cells[0] not in ("field", "---"):
            rows[cells[0]] = cells[2]
    return rows


def numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text)]


def test_the_signature_block_table_matches_the_code() -> None:
    rows = signature_block_table()
    assert sorted(rows) == ["certificate", "chain", "count", "signature"]
    assert numbers(rows["count"]) == [1, signing.MAX_SIGNATURES]
    assert numbers(rows["certificate"]) == [signing.MAX_CERTIFICATE_SIZE]
    assert numbers(rows["chain"]) == [signing.MAX_CHAIN_LENGTH, signing.MAX_CERTIFICATE_SIZE]
    assert numbers(rows["signature"]) == [signing.MAX_SIGNATURE_SIZE]


def test_the_limits_hold_the_largest_supported_signatures() -> None:
    # RSA-4096 (512 bytes) is the largest; a version 1 signature had at most 128.
    assert signing.MAX_SIGNATURE_SIZE == 4096 // 8
    assert signing.MAX_SIGNATURE_SIZE >= 128


def test_the_container_parser_applies_the_same_limits() -> None:
    entry = signing.SignatureEntry(b"\x30" * 10, (), bytes(signing.MAX_SIGNATURE_SIZE))
    assert container.parse_signature_block(container.build_signature_block([entry])) == (entry,)
    too_long = signing.SignatureEntry(b"\x30" * 10, (), bytes(signing.MAX_SIGNATURE_SIZE + 1))
    with pytest.raises(BundleError, match="signature 1 is 513 bytes; at most 512"):
        container.parse_signature_block(container.build_signature_block([too_long]))
