"""`resign` and `extract` copy the payload of the file whose head they read, even if the path
names another file by then: they opened the path a second time to copy the payload, so a
bundle replaced in between (a build writing the next one, `mv new.bundle b.bundle`) gave a
re-signed bundle of one manifest and another's payload, or an extract of mixed parts."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from bundle_tool import extract, reader, signing, writer
from bundle_tool.filereader import FileReader
from tests.bundle.bundles import now


def _replace_on_first_call(
    monkeypatch: pytest.MonkeyPatch, module: object, name: str, path: Path, other: Path
) -> None:
    """Make `module.name` replace `path` by `other` (renamed, as a build does) when first called."""
    real = getattr(module, name)
    done = []

    def wrapper(*args: object, **kw: object) -> object:
        if not done:
            done.append(True)
            os.replace(other, path)
        return real(*args, **kw)

    monkeypatch.setattr(module, name, wrapper)


def test_resign_copies_the_payload_of_the_bundle_it_read(
    make_bundle: Callable[..., Path],
    signer: signing.Signer,
    keyring: tuple[object, ...],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bundle = make_bundle(seed=1, name="b.bundle")
    original = bundle.read_bytes()
    other = make_bundle(seed=2, name="next.bundle")  # the same size, other blocks
    assert other.stat().st_size == len(original)
    # `sign` runs between reading the head and copying the payload.
    _replace_on_first_call(monkeypatch, writer, "sign", bundle, other)
    out = tmp_path / "resigned.bundle"
    writer.resign_bundle(bundle, [signer], out)
    assert out.read_bytes() == original  # Ed25519: the same signature again
    with FileReader(out) as src:
        head = reader.read_head(src, keyring, at=now())  # type: ignore[arg-type]
        reader.check_payload(src, head)


def test_extract_copies_the_parts_of_the_bundle_it_read(
    make_bundle: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = make_bundle(seed=1, name="b.bundle")
    image = (tmp_path / "b.bundle.img").read_bytes()
    other = make_bundle(seed=2, name="next.bundle")
    _replace_on_first_call(monkeypatch, extract, "layout", bundle, other)
    extract.extract_bundle(bundle, tmp_path / "out")
    assert (tmp_path / "out" / "images" / "0.img").read_bytes() == image
