"""Building a bundle from an image (host side)."""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import tempfile
from collections.abc import Callable, Sequence
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
    MAX_SECURITY_VERSION,
    NAME_RULE,
    VERSION_RULE,
    Artifact,
    Image,
    Manifest,
    VerityInfo,
)
from .signing import MAX_SIGNATURES, SignatureEntry, Signer, sign

#: progress(phase, done_bytes, total_bytes)
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class CreateOptions:
    """What goes into a bundle.

    Attributes:
        image: root filesystem image; its size must be a multiple of 4096.
        version: product version (semantic versioning).
        compatible: board family the bundle is for.
        signers: one or more signing keys with their certificates.
        build_time: seconds since the epoch (SOURCE_DATE_EPOCH for reproducible builds).
        security_version: monotonic anti-rollback counter.
        salt: dm-verity salt (random when None; give it for reproducible builds).
        slot_class: slot class the image installs into.
        architecture: Debian architecture of the image and of ELF artifacts.
        artifacts: extra files (kernel, bootloader) carried after the images.
        expires: seconds since the epoch after which devices refuse the bundle.
        leaf_summary: carry the leaf summary, which makes delta installs fetch less of
            the hash tree (an updater older than the summary refuses a bundle with one).
        image_sha256: record the image's whole SHA-256 in the manifest (one more pass
            over the image; an updater older than format rule 2 of docs/bundle-format.md
            refuses a bundle without it).
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
    image_sha256: bool = False


def _check_options(opts: CreateOptions) -> None:
    if not validators.is_semver(opts.version):
        raise UsageError(f"version {opts.version!r} must be {VERSION_RULE} (e.g. 1.2.0)")
    for what, value in (("compatible", opts.compatible), ("slot class", opts.slot_class)):
        if not validators.is_name(value):
            raise UsageError(f"{what} {value!r} must be {NAME_RULE}")
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


def _copy_at(src: int, dst: int, src_offset: int, dst_offset: int, length: int) -> None:
    """Copy `length` bytes of `src` from `src_offset` to `dst` at `dst_offset`.

    `copy_file_range` copies in the kernel (or shares the extents, on filesystems
    that can); where it refuses (across filesystems on many kernels), `sendfile`
    does; plain reads and writes are the last fallback.
    """
    done = 0
    while done < length:
        n = min(length - done, 1 << 30)
        try:
            got = os.copy_file_range(src, dst, n, src_offset + done, dst_offset + done)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            got = _copy_slowly(src, dst, src_offset + done, dst_offset + done, n)
        if got == 0:
            raise BundleIOError("input file shrank while the bundle was written")
        done += got


def copy_range(src: int, dst: int, offset: int, length: int) -> None:
    """Copy `length` bytes of `src` from `offset` to the current position of `dst`."""
    at = os.lseek(dst, 0, os.SEEK_CUR)
    _copy_at(src, dst, offset, at, length)
    os.lseek(dst, at + length, os.SEEK_SET)


def _copy_slowly(src: int, dst: int, src_offset: int, dst_offset: int, length: int) -> int:
    """One step of `_copy_at` where `copy_file_range` is refused: bytes copied (0 at the end)."""
    os.lseek(dst, dst_offset, os.SEEK_SET)
    try:
        return os.sendfile(dst, src, src_offset, length)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    chunk = os.pread(src, min(length, 1 << 20), src_offset)
    return os.pwrite(dst, chunk, dst_offset) if chunk else 0


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


def create_bundle(opts: CreateOptions, output: Path, progress: Progress | None = None) -> Manifest:
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


#: Signings tried for a head of the predicted size (ECDSA signatures vary in length).
SIGN_TRIES = 16


def _head(manifest: Manifest, signers: Sequence[Signer], size: int | None = None) -> bytes:
    """Header, manifest and signature block; signed again (up to `SIGN_TRIES` times) until
    they take `size` bytes, if given and if the signatures allow."""
    manifest_raw = manifest.to_bytes()
    for _ in range(SIGN_TRIES):
        sigs = build_signature_block([sign(manifest_raw, s) for s in signers])
        header = Header(len(manifest_raw), len(sigs), manifest.payload_size)
        head = header.to_bytes() + manifest_raw + sigs
        if size is None or len(head) == size:
            break
    return head


def _create(opts: CreateOptions, output: Path, progress: Progress | None) -> Manifest:
    st = opts.image.stat()
    size = st.st_size
    if size == 0 or size % verity.BLOCK_SIZE:
        raise UsageError(
            f"image {opts.image} is {size} bytes, not a positive multiple of 4096: pad it "
            "(e.g. truncate -s %4096); veritysetup would leave a partial last block unprotected"
        )
    salt = opts.salt if opts.salt is not None else secrets.token_bytes(32)
    verity.check_salt(salt)
    artifacts = tuple(_artifact(p, opts.architecture) for p in opts.artifacts)
    data_blocks = size // verity.BLOCK_SIZE
    area_size = verity.Geometry.for_blocks(data_blocks).area_size
    summary_size = leafsummary.summary_size(data_blocks) if opts.leaf_summary else 0
    sha = hashlib.sha256() if opts.image_sha256 else None

    def manifest_for(root_hash: bytes, sha256: bytes | None) -> Manifest:
        image = Image(
            slot_class=opts.slot_class,
            size=size,
            sha256=sha256,
            verity=VerityInfo(root_hash, salt, data_blocks, area_size),
            architecture=opts.architecture,
            leaf_summary_size=summary_size,
        )
        return Manifest(
            compatible=opts.compatible,
            version=opts.version,
            security_version=opts.security_version,
            build_time=opts.build_time,
            images=(image,),
            artifacts=artifacts,
            expires=opts.expires,
            architecture=opts.architecture,
        )

    # The head takes as many bytes with any root hash: the image data's place in the
    # bundle is known before it is hashed, so each chunk is copied there once hashed.
    blank = bytes(verity.DIGEST_SIZE)
    guess = len(_head(manifest_for(blank, None if sha is None else blank), opts.signers))
    at = guess + area_size + summary_size

    def observe(data: bytes) -> None:
        if sha is not None:
            sha.update(data)

    # The output file first: an unwritable output fails before the image is hashed.
    fd, tmp = _temporary_output(output)
    try:
        with os.fdopen(fd, "wb", buffering=0) as out, opts.image.open("rb") as img:

            def hashed(first: int, count: int) -> None:
                block = verity.BLOCK_SIZE
                _copy_at(
                    img.fileno(), out.fileno(), first * block, at + first * block, count * block
                )
                if progress:
                    progress("hashing", (first + count) * block, size)

            with verity.build_tree(
                str(opts.image),
                data_blocks,
                salt,
                observe=observe if sha is not None else None,
                hashed=hashed,
                spool_dir=str(output.parent),
            ) as tree:
                manifest = manifest_for(tree.root_hash, None if sha is None else sha.digest())
                head = _head(manifest, opts.signers, guess)
                if len(head) != guess:  # the signatures came out longer or shorter
                    at = len(head) + area_size + summary_size
                    _copy_at(img.fileno(), out.fileno(), 0, at, size)
                os.pwrite(out.fileno(), head, 0)
                out.seek(len(head))
                for chunk in tree.area_chunks():
                    out.write(chunk)
                if summary_size:
                    for chunk in leafsummary.summarize(tree.level_chunks(0)):
                        out.write(chunk)
            if os.fstat(img.fileno()).st_mtime_ns != st.st_mtime_ns:
                raise BundleIOError(f"{opts.image} changed while the bundle was built")
            end = at + size
            for path, art in zip(opts.artifacts, artifacts, strict=True):
                with path.open("rb") as f:
                    _copy_at(f.fileno(), out.fileno(), 0, end, art.size)
                end += art.size
            os.ftruncate(out.fileno(), end)  # the data was first copied further on
            if progress:
                progress("writing", size, size)
            # No fsync: a build tool leaves durability to the build system; the
            # rename below still means no reader ever sees a partial bundle.
        if os.path.getsize(tmp) != len(head) + manifest.payload_size:
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
