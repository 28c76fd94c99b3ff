"""An unknown or duplicate manifest key is named shortened: the message named it whole, and a
key can fill the 1 MiB manifest, so a hostile bundle (`info` parses it unsigned) made a
one-line reason of a megabyte, written to the terminal, the JSON error and the device's
last-install.json."""

from __future__ import annotations

import json

import pytest

from bundle_tool import manifest
from bundle_tool.errors import BundleError
from tests.bundle.bundles import minimal_manifest

MANIFEST = minimal_manifest()
LONG = "k" * 500_000


def test_a_long_unknown_key_is_named_shortened() -> None:
    manifest.parse_manifest(json.dumps(MANIFEST).encode())
    raw = json.dumps({**MANIFEST, LONG: 1}).encode()
    with pytest.raises(BundleError) as e:
        manifest.parse_manifest(raw)
    assert str(e.value) == (
        f"manifest: unknown key '{'k' * 64}... (500000 characters)' in manifest"
    )


def test_a_long_duplicate_key_is_named_shortened() -> None:
    body = json.dumps(MANIFEST)[1:-1]
    raw = ("{" + body + f',"{LONG}":1,"{LONG}":2' + "}").encode()
    with pytest.raises(BundleError) as e:
        manifest.parse_manifest(raw)
    assert str(e.value) == f"manifest: duplicate key '{'k' * 64}... (500000 characters)'"


def test_a_short_unknown_key_is_named_whole() -> None:
    with pytest.raises(BundleError, match=r"^manifest: unknown key 'extra' in manifest$"):
        manifest.parse_manifest(json.dumps({**MANIFEST, "extra": 1}).encode())
