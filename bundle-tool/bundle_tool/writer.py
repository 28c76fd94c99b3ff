"""Building a bundle from an image (host side)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from bootctl import validators

from . import leafsummary, verity
from .container import (
    HEADER_SIZE,
    Header,
    UncheckedHead,
    build_signature_block,
    parse_head,
    parse_header,
)
from .elfcheck import check_machine, elf_machine
from .errors import BundleError, BundleIOError, UsageError
from .manifest import (
    MAX_IMAGES,
    MAX_SECURITY_VERSION,
    NAME_RULE,
    VERSION_RULE,
    Artifact,
    Image,
    Manifest,
    VerityInfo,
)
from .progress import Progress, ProgressCallback
from .signing import MAX_SIGNATURES, SignatureEntry, Signer, sign

#: The slot class whose images go into block slots whole: their size must be whole blocks.
#: An image of any other class may end in a partial block (a boot image is a file): it
#: is padded with zeros and the manifest records its length (`Image.file_size`).
BLOCK_IMAGE_CLASS = "rootfs"


@dataclass(frozen=True)
class CreateOptions:
    """What goes into a bundle.

    Attributes:
        image: the first image (by default the root filesystem image; a rootfs
            image's size must be a multiple of 4096).
        version: product version (semantic versioning).
        compatible: board family the bundle is for.
        signers: one or more signing keys with their certificates.
        build_time: seconds since the epoch (SOURCE_DATE_EPOCH for reproducible builds).
        security_version: monotonic anti-rollback counter.
        salt: dm-verity salt (random when None; give it for reproducible builds).
        slot_class: slot class the first image installs into.
        extra_images: further images, each (slot class, file), after the first; no
            two images may have the same class.
        architecture: Debian architecture of the image and of ELF artifacts.
        artifacts: extra files (kernel, bootloader) carried after the images.
        expires: seconds since the epoch after which devices refuse the bundle.
        leaf_summary: carry the leaf summary, which makes delta installs fetch less of
            the hash tree (an updater older than the summary refuses a bundle with one).
    """

    image: Path
    version: str
    compatible: str
    signers: Sequence[Signer]
    build_time: int
    security_version: int = 0
    salt: bytes | None = None
    slot_class: str = "rootfs"
    architecture: str | None = None
    artifacts: Sequence[Path] = field(default_factory=tuple)
    expires: int | None = None
    leaf_summary: bool = True
    extra_images: Sequence[tuple[str, Path]] = field(default_factory=tuple)
    #: Also record each image's whole-file SHA-256 (one more pass over the data), for
    #: updaters older than 0.2 that require it; the tree binds every byte without it.
    image_sha256: bool = False

    @property
    def images(self) -> tuple[tuple[str, Path], ...]:
        """Every image, (slot class, file), in bundle order."""
        return ((self.slot_class, self.image), *self.extra_images)


def _check_options(opts: CreateOptions) -> None:
    if not validators.is_semver(opts.version):
        raise UsageError(f"version {opts.version!r} must be {VERSION_RULE} (e.g. 1.2.0)")
    classes = [c for c, _ in opts.images]
    for what, value in (("compatible", opts.compatible), *(("slot class", c) for c in classes)):
        if not validators.is_name(value):
            raise UsageError(f"{what} {value!r} must be {NAME_RULE}")
    if len(set(classes)) != len(classes):
        twice = next(c for c in classes if classes.count(c) > 1)
        raise UsageError(f"two images for slot class {twice}: give each class one image")
    if len(classes) > MAX_IMAGES:
        raise UsageError(f"a bundle holds at most {MAX_IMAGES} images")
    if not opts.signers:
        raise UsageError("at least one signing key and certificate are needed")
    if not 0 <= opts.security_version <= MAX_SECURITY_VERSION:
        raise UsageError(f"security version must be in [0, {MAX_SECURITY_VERSION}]")
    for what, when in (("build time", opts.build_time), ("expiry time", opts.expires)):
        if when is not None and not 0 <= when <= validators.MAX_TIME:
            raise UsageError(
                f"{what} {when} is outside [0, {validators.MAX_TIME}] (years 1970 to 9999)"
            )
    if opts.salt is not None:
        verity.check_salt(opts.salt)
    if opts.expires is not None and opts.expires <= opts.build_time:
        raise UsageError(
            "the bundle would expire before it was built: --expires must be later than "
            "the build time (SOURCE_DATE_EPOCH, or now)"
        )
    names = [a.name for a in opts.artifacts]
    if len(set(names)) != len(names):
        raise UsageError("two artifacts have the same file name")


def copy_range(src: int, dst: int, offset: int, length: int) -> None:
    """Copy `length` bytes of `src` from `offset` to the current position of `dst`.

    `sendfile` copies in the kernel between any two files (unlike `copy_file_range`,
    which refuses to cross filesystems on many kernels); plain reads and writes are
    the fallback.
    """
    done = 0
    try:
        while done < length:
            n = os.sendfile(dst, src, offset + done, min(length - done, 1 << 30))
            if n == 0:
                raise BundleIOError("input file shrank while the bundle was written")
            done += n
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        while done < length:
            chunk = os.pread(src, min(length - done, 1 << 20), offset + done)
            if not chunk:
                raise BundleIOError("input file shrank while the bundle was written") from e
            os.write(dst, chunk)
            done += len(chunk)


def _artifact(path: Path, architecture: str | None) -> Artifact:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        machine = elf_machine(f)
        check_machine(path.name, machine, architecture)
        f.seek(0)
        size = 0
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    if not validators.is_name(path.name):
        raise UsageError(f"artifact file name {path.name!r} must be {NAME_RULE}")
    return Artifact(path.name, size, sha.digest(), machine)


def create_bundle(
    opts: CreateOptions, output: Path, progress: ProgressCallback | None = None
) -> Manifest:
    """Build, sign and write a bundle; the output appears atomically.

    Raises:
        UsageError: an input is unusable (e.g. image size not a multiple of 4096).
        BundleIOError: reading an input or writing the output failed.
    """
    _check_options(opts)
    try:
        return _create(opts, output, progress)
    except OSError as e:
        raise BundleIOError(f"{e.filename or output}: {e.strerror}") from e


@dataclass(frozen=True)
class _Input:
    """One image to carry: its slot class, the file hashed and copied, and that file's state."""

    slot_class: str
    path: Path
    stat: os.stat_result
    #: The length of a file image padded to whole blocks (None: a block image).
    file_size: int | None


def _input(slot_class: str, path: Path, spool: contextlib.ExitStack, spool_dir: Path) -> _Input:
    """Check one image's size; a file image of a partial last block is hashed from a padded copy."""
    st = path.stat()
    size = st.st_size
    if size and size % verity.BLOCK_SIZE == 0:
        return _Input(slot_class, path, st, None)
    if slot_class == BLOCK_IMAGE_CLASS or size == 0:
        raise UsageError(
            f"image {path} is {size} bytes, not a positive multiple of 4096: pad it "
            "(e.g. truncate -s %4096); veritysetup would leave a partial last block unprotected"
        )
    fd, name = tempfile.mkstemp(prefix=".pad-", dir=spool_dir)
    padded = Path(name)
    spool.callback(padded.unlink, missing_ok=True)
    with path.open("rb") as src, os.fdopen(fd, "r+b") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        copied = dst.tell()
        dst.write(bytes(-copied % verity.BLOCK_SIZE))
    if copied != size:
        raise BundleIOError(f"{path} changed while the bundle was built")
    return _Input(slot_class, padded, padded.stat(), size)


def _create(opts: CreateOptions, output: Path, progress: ProgressCallback | None) -> Manifest:
    salt = opts.salt
    artifacts = tuple(_artifact(p, opts.architecture) for p in opts.artifacts)
    with contextlib.ExitStack() as spool:
        inputs = [_input(c, p, spool, output.parent) for c, p in opts.images]
        # The output file first: an unwritable output fails before the image is hashed.
        fd, tmp = _temporary_output(output)
        try:
            with os.fdopen(fd, "wb") as out:
                trees = [
                    spool.enter_context(_hash(opts, i, salt, output.parent, progress))
                    for i in inputs
                ]
                manifest = Manifest(
                    compatible=opts.compatible,
                    version=opts.version,
                    security_version=opts.security_version,
                    build_time=opts.build_time,
                    images=tuple(image for image, _ in trees),
                    artifacts=artifacts,
                    expires=opts.expires,
                    architecture=opts.architecture,
                )
                manifest_raw = manifest.to_bytes()
                sigs = build_signature_block([sign(manifest_raw, s) for s in opts.signers])
                header = Header(len(manifest_raw), len(sigs), manifest.payload_size)
                out.write(header.to_bytes() + manifest_raw + sigs)
                for inp, (image, tree) in zip(inputs, trees, strict=True):
                    for chunk in tree.area_chunks():
                        out.write(chunk)
                    if image.leaf_summary_size:
                        for chunk in leafsummary.summarize(tree.level_chunks(0)):
                            out.write(chunk)
                    out.flush()
                    with inp.path.open("rb") as img:
                        if os.fstat(img.fileno()).st_mtime_ns != inp.stat.st_mtime_ns:
                            raise BundleIOError(f"{inp.path} changed while the bundle was built")
                        copy_range(img.fileno(), out.fileno(), 0, image.size)
                    if progress:
                        progress(Progress("writing", image.size, image.size))
                for path, art in zip(opts.artifacts, artifacts, strict=True):
                    with path.open("rb") as f:
                        copy_range(f.fileno(), out.fileno(), 0, art.size)
                # No fsync: a build tool leaves durability to the build system; the
                # rename below still means no reader ever sees a partial bundle.
            if os.path.getsize(tmp) != header.total_size:
                raise BundleIOError("an input file changed size while the bundle was written")
            os.chmod(tmp, 0o644)
            try:
                os.replace(tmp, output)
            except OSError as e:
                raise _cannot_write(output, e) from e
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return manifest


@contextlib.contextmanager
def _hash(
    opts: CreateOptions,
    inp: _Input,
    salt: bytes | None,
    spool_dir: Path,
    progress: ProgressCallback | None,
) -> Iterator[tuple[Image, verity.Tree]]:
    """One image's hash tree and manifest entry (the tree is spooled until it is written)."""
    size = inp.stat.st_size
    sha = hashlib.sha256() if opts.image_sha256 else None

    def hashed(first: int, count: int) -> None:
        if progress:
            progress(Progress("hashing", (first + count) * verity.BLOCK_SIZE, size))

    salt = salt if salt is not None else secrets.token_bytes(32)
    with verity.build_tree(
        str(inp.path),
        size // verity.BLOCK_SIZE,
        salt,
        observe=None if sha is None else sha.update,
        hashed=hashed,
        spool_dir=str(spool_dir),
    ) as tree:
        yield (
            Image(
                slot_class=inp.slot_class,
                size=size,
                sha256=None if sha is None else sha.digest(),
                verity=VerityInfo(tree.root_hash, salt, tree.data_blocks, tree.area_size),
                architecture=opts.architecture,
                leaf_summary_size=leafsummary.summary_size(tree.data_blocks)
                if opts.leaf_summary
                else 0,
                file_size=inp.file_size,
            ),
            tree,
        )


def read_head_file(path: Path) -> tuple[UncheckedHead, int]:
    """Parse a bundle file's head without checking signatures; also return the file size.

    Raises:
        BundleError: The head is malformed, or the file is not exactly the announced size.
        BundleIOError: The file cannot be read.
    """
    try:
        with path.open("rb") as f:
            first = f.read(HEADER_SIZE)
            header = parse_header(first)
            head = parse_head(first + f.read(header.head_size - HEADER_SIZE))
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise BundleIOError(f"cannot read bundle {path}: {e.strerror}") from e
    if size != head.header.total_size:
        raise BundleError(
            f"bundle {path} is {size} bytes; its header and manifest account for "
            f"{head.header.total_size}"
        )
    return head, size


def resign_bundle(
    bundle: Path, signers: Sequence[Signer], output: Path, *, append: bool = False
) -> tuple[SignatureEntry, ...]:
    """Write a copy of a bundle with new signatures; manifest and payload stay byte for byte.

    Without ``append`` the signatures are replaced by those of ``signers``; with it they
    are added after the existing ones (m-of-n signing in several places). The signatures
    already there are not checked. With Ed25519 or RSA keys the output is reproducible.

    Returns:
        The signature entries of the output.

    Raises:
        UsageError: No signer, too many signatures, or a key that already signed it.
        BundleError: The input is not a well-formed bundle.
        BundleIOError: Reading or writing failed.
    """
    if not signers:
        raise UsageError("at least one signing key and certificate are needed")
    head, _ = read_head_file(bundle)
    new = [sign(head.manifest_raw, s) for s in signers]
    entries = (*head.entries, *new) if append else tuple(new)
    seen: dict[bytes, int] = {}
    for number, entry in enumerate(entries, start=1):
        key = _entry_key(entry)
        if key in seen:
            raise UsageError(
                f"signature {number} would be by the same key as signature {seen[key]}; "
                "a key counts once toward the threshold"
            )
        seen[key] = number
    if len(entries) > MAX_SIGNATURES:
        raise UsageError(f"{len(entries)} signatures; at most {MAX_SIGNATURES} fit in a bundle")
    sigs = build_signature_block(entries)
    header = Header(head.header.manifest_size, len(sigs), head.header.payload_size)
    fd, tmp = _temporary_output(output)
    try:
        with os.fdopen(fd, "wb") as out, bundle.open("rb") as src:
            out.write(header.to_bytes() + head.manifest_raw + sigs)
            out.flush()
            copy_range(src.fileno(), out.fileno(), head.header.head_size, header.payload_size)
        if os.path.getsize(tmp) != header.total_size:
            raise BundleIOError(f"{bundle} changed size while it was re-signed")
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _cannot_write(output, e) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return entries


def _entry_key(entry: SignatureEntry) -> bytes:
    """The SubjectPublicKeyInfo of an entry's certificate (its certificate if unparseable)."""
    try:
        key = x509.load_der_x509_certificate(entry.certificate).public_key()
        return key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return entry.certificate


def _cannot_write(output: Path, error: OSError) -> BundleIOError:
    return BundleIOError(f"cannot write bundle {output}: {error.strerror or error}")


def _temporary_output(output: Path) -> tuple[int, str]:
    """A new file next to `output` (renamed over it once complete)."""
    if output.is_dir():
        raise _cannot_write(output, IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR)))
    try:
        return tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    except OSError as e:
        raise _cannot_write(output, e) from e
