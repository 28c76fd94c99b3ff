"""docs/bundle-format.md states the bounds the reader enforces: its table against the code."""

from __future__ import annotations

import re
from pathlib import Path

from bootctl import validators
from bundle_tool import manifest

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
