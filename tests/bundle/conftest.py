"""Fixtures for bundle tests: a signer and keyring of the shared PKI, and bundles built from
random images (the PKI itself, `pki`, is in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bundle_tool import keygen, signing
from bundle_tool.keyring import load_keyring
from bundle_tool.writer import CreateOptions, create_bundle
from tests.bundle.bundles import BUILD_TIME, write_image


@pytest.fixture(scope="session")
def signer(pki: keygen.DevPki) -> signing.Signer:
    return signing.load_signer(pki.signer_key.read_bytes(), pki.signer_cert.read_bytes())


@pytest.fixture(scope="session")
def keyring(pki: keygen.DevPki) -> tuple[object, ...]:
    return load_keyring(pki.ca_cert.read_bytes())


@pytest.fixture
def make_bundle(tmp_path: Path, signer: signing.Signer) -> Callable[..., Path]:
    def make(blocks: int = 40, seed: int = 0, name: str = "b.bundle", **kw: object) -> Path:
        image = write_image(tmp_path / f"{name}.img", blocks, seed)
        opts = dict(
            image=image,
            version="1.0.0",
            compatible="test-board",
            signers=[signer],
            build_time=BUILD_TIME,
            salt=bytes(range(32)),
        )
        opts.update(kw)
        out = tmp_path / name
        create_bundle(CreateOptions(**opts), out)  # type: ignore[arg-type]
        return out

    return make
