"""Unpack a bundle into files, for debugging and for tools that want the raw parts.

    DIR/manifest.json                 the signed manifest, byte for byte
    DIR/signatures/N/certificate.der  signature N's certificate
    DIR/signatures/N/chain-M.der      its intermediates, in order
    DIR/signatures/N/signature.bin    the signature
    DIR/images/N.img                  image N's data
    DIR/images/N.verity               its hash area: `veritysetup verify N.img N.verity ROOT`
    DIR/images/N.leafsummary          its leaf summary, when the bundle carries one
    DIR/artifacts/NAME                each artifact

Nothing is verified: `bundle-tool verify` does that. The numbers count from 1 for
signatures and from 0 for images, as `info` shows them.
"""

from __future__ import annotations

from pathlib import Path

from .container import UncheckedHead, layout
from .errors import BundleIOError, UsageError
from .writer import copy_range, open_head_file


def extract_bundle(bundle: Path, out_dir: Path) -> list[Path]:
    """Write the parts of ``bundle`` as files under ``out_dir`` (new or empty).

    Returns:
        The files written, in bundle order.

    Raises:
        UsageError: ``out_dir`` exists and is not an empty folder.
        BundleError: The bundle is malformed.
        BundleIOError: Reading or writing failed.
    """
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(f"{out_dir} exists and is not an empty folder")
    with open_head_file(bundle) as (head, src):
        return _extract(head, src.fileno(), out_dir)


def _extract(head: UncheckedHead, src: int, out_dir: Path) -> list[Path]:
    images, artifacts = layout(head.header, head.manifest)
    small: list[tuple[Path, bytes]] = [(out_dir / "manifest.json", head.manifest_raw)]
    for number, entry in enumerate(head.entries, start=1):
        where = out_dir / "signatures" / str(number)
        small.append((where / "certificate.der", entry.certificate))
        small += [(where / f"chain-{m}.der", der) for m, der in enumerate(entry.chain, 1)]
        small.append((where / "signature.bin", entry.signature))
    ranges: list[tuple[Path, int, int]] = []
    for number, part in enumerate(images):
        image = part.image
        ranges.append(
            (out_dir / "images" / f"{number}.verity", part.area_offset, image.verity.tree_size)
        )
        if image.leaf_summary_size:
            ranges.append(
                (
                    out_dir / "images" / f"{number}.leafsummary",
                    part.summary_offset,
                    image.leaf_summary_size,
                )
            )
        ranges.append((out_dir / "images" / f"{number}.img", part.data_offset, image.size))
    ranges += [
        (out_dir / "artifacts" / a.artifact.name, a.offset, a.artifact.size) for a in artifacts
    ]
    written: list[Path] = []
    try:
        for path, data in small:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written.append(path)
        for path, offset, length in ranges:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as out:
                copy_range(src, out.fileno(), offset, length)
            written.append(path)
    except OSError as e:
        raise BundleIOError(f"cannot extract to {e.filename or out_dir}: {e.strerror}") from e
    return written
