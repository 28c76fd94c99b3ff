"""Building a bundle from an image (host side)."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from bootctl import validators

from . import algorithms, leafsummary, verity
from .container import (
    HEADER_SIZE,
    Header,
    UncheckedHead,
    build_signature_block,
    parse_head,
    parse_header,
    place_images,
)
from .elfcheck import check_machine, elf_machine
from .errors import BundleError, BundleIOError, UsageError
from .filereader import FileReader
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
        data_padding: pad so that each image's data starts on a 4096-byte boundary of
            the file, which an updater reads with no copy (one older than the padding
            refuses a bundle with it).
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
    data_padding: bool = True
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


#: Signings tried for a signature of its usual length (an ECDSA signature's length varies).
SIGN_TRIES = 16


def _sign_usual(manifest_raw: bytes, signer: Signer) -> SignatureEntry:
    """A signature of the manifest, made again (up to `SIGN_TRIES` times, while it comes
    out different) until it has its usual length (`algorithms.usual_signature_size`):
    the data was placed after a head with signatures of that length.
    """
    want = _usual_size(signer)
    entry = sign(manifest_raw, signer)
    for _ in range(SIGN_TRIES - 1):
        if len(entry.signature) == want:
            break
        again = sign(manifest_raw, signer)
        if again == entry:  # a deterministic signer: each try would give the same
            break
        entry = again
    return entry


def _usual_size(signer: Signer) -> int:
    key = algorithms.certificate_key(signer.certificate)
    if key is None:  # refused by `sign`, with the reason
        return 0
    return algorithms.usual_signature_size(key)


def _head(manifest: Manifest, signers: Sequence[Signer]) -> bytes:
    """Header, manifest and signature block (each signature of its usual length if it can)."""
    manifest_raw = manifest.to_bytes()
    sigs = build_signature_block([_sign_usual(manifest_raw, s) for s in signers])
    header = Header(len(manifest_raw), len(sigs), manifest.payload_size)
    return header.to_bytes() + manifest_raw + sigs


def _planned_head_size(manifest: Manifest, signers: Sequence[Signer]) -> int:
    """The head's size with each signature of its usual length (none is made)."""
    entries = [
        SignatureEntry(
            s.certificate.public_bytes(serialization.Encoding.DER),
            tuple(c.public_bytes(serialization.Encoding.DER) for c in s.chain),
            bytes(_usual_size(s)),
        )
        for s in signers
    ]
    return HEADER_SIZE + len(manifest.to_bytes()) + len(build_signature_block(entries))


def _padded(head_size: int, images: Sequence[Image]) -> list[Image]:
    """`images` with the padding that starts each one's data on a block boundary of the file.

    Data read from a block boundary can go by direct I/O from the bundle straight
    into the memory it is hashed and written from, with no copy.
    """
    out = []
    at = head_size
    for image in images:
        unpadded = at + image.data_start - image.data_padding
        out.append(replace(image, data_padding=-unpadded % verity.BLOCK_SIZE))
        at += out[-1].payload_size
    return out


def _plan(
    opts: CreateOptions, images: Sequence[Image], artifacts: Sequence[Artifact]
) -> tuple[list[Image], int]:
    """The planned images, padded for a head of the size returned.

    The padding is in the manifest, so the head's size depends on it: on the
    first image's padding alone (the others follow from the images' sizes once
    its data is on a block) and there only on the number of its digits, absent
    for none. Each length is tried. Where none fits (with a 1-digit padding the
    head would want 10 bytes of it, with a 2-digit one 9; and so at 99 and 999:
    3 head sizes in 4096), the data lies where the last try puts it, valid and
    not on a block boundary.
    """

    def head_size(planned: Sequence[Image]) -> int:
        return _planned_head_size(_manifest(opts, planned, artifacts), opts.signers)

    if not opts.data_padding or not images:
        return list(images), head_size(images)
    first, *rest = _padded(0, images)
    for guess in (0, 1, 10, 100, 1000):  # the first image's padding, of each length
        size = head_size([replace(first, data_padding=guess), *rest])
        padded = _padded(size, images)
        if head_size(padded) == size:
            return padded, size
    return padded, head_size(padded)


def _planned_image(opts: CreateOptions, inp: _Input, salt: bytes) -> Image:
    """An image's manifest entry before it is hashed: every field but the digests."""
    blocks = inp.stat.st_size // verity.BLOCK_SIZE
    blank = bytes(verity.DIGEST_SIZE)  # the digests are of fixed size
    return Image(
        slot_class=inp.slot_class,
        size=inp.stat.st_size,
        sha256=blank if opts.image_sha256 else None,
        verity=VerityInfo(blank, salt, blocks, verity.Geometry.for_blocks(blocks).area_size),
        architecture=opts.architecture,
        leaf_summary_size=leafsummary.summary_size(blocks) if opts.leaf_summary else 0,
        file_size=inp.file_size,
    )


def _manifest(
    opts: CreateOptions, images: Sequence[Image], artifacts: Sequence[Artifact]
) -> Manifest:
    return Manifest(
        compatible=opts.compatible,
        version=opts.version,
        security_version=opts.security_version,
        build_time=opts.build_time,
        images=tuple(images),
        artifacts=tuple(artifacts),
        expires=opts.expires,
        architecture=opts.architecture,
    )


def _create(opts: CreateOptions, output: Path, progress: ProgressCallback | None) -> Manifest:
    artifacts = tuple(_artifact(p, opts.architecture) for p in opts.artifacts)
    with contextlib.ExitStack() as spool:
        inputs = [_input(c, p, spool, output.parent) for c, p in opts.images]
        salts = [opts.salt if opts.salt is not None else secrets.token_bytes(32) for _ in inputs]
        planned = [_planned_image(opts, i, salt) for i, salt in zip(inputs, salts, strict=True)]
        # The manifest takes as many bytes whatever the digests: each image's data has
        # its place in the bundle before it is hashed, and goes there as it is hashed.
        planned, head_size = _plan(opts, planned, artifacts)
        places, _ = place_images(head_size, planned)
        # The output file first: an unwritable output fails before the image is hashed.
        with _temporary_output(output) as (fd, tmp):
            with os.fdopen(fd, "wb", buffering=0) as out:
                store = functools.partial(_store, output, out.fileno())
                images: list[Image] = []
                trees: list[verity.Tree] = []
                for inp, plan, place in zip(inputs, planned, places, strict=True):
                    image, tree = _hash(
                        opts,
                        inp,
                        plan,
                        store=functools.partial(store, place.data_offset),
                        spool_dir=output.parent,
                        progress=progress,
                    )
                    images.append(image)
                    trees.append(spool.enter_context(tree))
                manifest = _manifest(opts, images, artifacts)
                head = _head(manifest, opts.signers)
                places, end = place_images(len(head), images)
                if len(head) != head_size:
                    # The signatures came out of another length: every image is copied
                    # whole to its real place (each byte of the bundle is written again).
                    for inp, image, place in zip(inputs, images, places, strict=True):
                        with inp.path.open("rb") as img:
                            _copy_at(img.fileno(), out.fileno(), 0, place.data_offset, image.size)
                _write_at(out.fileno(), [head], 0)
                for image, tree, place in zip(images, trees, places, strict=True):
                    _write_at(out.fileno(), tree.area_chunks(), place.area_offset)
                    if image.leaf_summary_size:
                        summary = leafsummary.summarize(tree.level_chunks(0))
                        _write_at(out.fileno(), summary, place.summary_offset)
                    # Zeros even where the images were first placed otherwise.
                    padding = bytes(image.data_padding)
                    _write_at(out.fileno(), [padding], place.data_offset - len(padding))
                for path, art in zip(opts.artifacts, artifacts, strict=True):
                    with path.open("rb") as f:
                        _copy_at(f.fileno(), out.fileno(), 0, end, art.size)
                    end += art.size
                # Zero blocks were not written: they read as zeros up to the end.
                os.ftruncate(out.fileno(), end)
                # No fsync: a build tool leaves durability to the build system; the
                # rename below still means no reader ever sees a partial bundle.
            os.chmod(tmp, 0o644)
            try:
                os.replace(tmp, output)
            except OSError as e:
                raise _cannot_write(output, e) from e
    return manifest


def _store(output: Path, out: int, at: int, first: int, data: memoryview) -> None:
    """Write hashed blocks of an image whose data starts at `at` of the bundle."""
    try:
        _write_at(out, [data], at + first * verity.BLOCK_SIZE)
    except OSError as e:
        raise _cannot_write(output, e) from None


def _write_at(fd: int, chunks: Iterable[bytes | memoryview], offset: int) -> None:
    """Write `chunks` one after the other from `offset` of `fd` (its position unused)."""
    for chunk in chunks:
        done = 0
        while done < len(chunk):
            done += os.pwrite(fd, chunk[done:], offset + done)
        offset += done


def _copy_at(src: int, dst: int, src_offset: int, dst_offset: int, length: int) -> None:
    """Copy `length` bytes of `src` from `src_offset` to `dst` at `dst_offset`."""
    os.lseek(dst, dst_offset, os.SEEK_SET)
    copy_range(src, dst, src_offset, length)


def _hash(
    opts: CreateOptions,
    inp: _Input,
    planned: Image,
    *,
    store: verity.Store,
    spool_dir: Path,
    progress: ProgressCallback | None,
) -> tuple[Image, verity.Tree]:
    """One image's manifest entry and hash tree; its blocks go to `store` as they are hashed.

    Close the tree (which is spooled until it is written).
    """
    size = inp.stat.st_size
    sha = hashlib.sha256() if opts.image_sha256 else None

    def hashed(first: int, count: int) -> None:
        if progress:
            progress(Progress("hashing", (first + count) * verity.BLOCK_SIZE, size))

    tree = verity.build_tree(
        str(inp.path),
        size // verity.BLOCK_SIZE,
        planned.verity.salt,
        observe=None if sha is None else sha.update,
        hashed=hashed,
        store=store,
        spool_dir=str(spool_dir),
    )
    try:
        if os.stat(inp.path).st_mtime_ns != inp.stat.st_mtime_ns:
            raise BundleIOError(f"{inp.path} changed while the bundle was built")
        vinfo = replace(planned.verity, root_hash=tree.root_hash)
        if vinfo.tree_size != tree.area_size:
            raise AssertionError("the tree is not of the planned size")
        return replace(planned, verity=vinfo, sha256=None if sha is None else sha.digest()), tree
    except BaseException:
        tree.close()
        raise


@contextlib.contextmanager
def open_head_file(path: Path) -> Iterator[tuple[UncheckedHead, FileReader]]:
    """A bundle file, open, and its head parsed without checking signatures.

    Read its payload through the reader given (its `fileno()`), never by opening
    the path again: that may name another file by then (a bundle replaced while it
    is re-signed or extracted), whose payload would go out under this manifest.

    A regular file must be exactly the size its header announces. A block device
    only has to hold that many bytes (its size is then the device's capacity):
    the bytes after the bundle's end are ignored (docs/bundle-format.md).

    Raises:
        UsageError: The path does not exist, cannot be opened, or is neither a
            regular file nor a block device.
        BundleError: The head is malformed, or the file is not the announced size.
        BundleIOError: The file cannot be read.
    """
    with FileReader(path) as src:
        first = src.read_exact(0, HEADER_SIZE)
        header = parse_header(first)
        head = parse_head(first + src.read_exact(HEADER_SIZE, header.head_size - HEADER_SIZE))
        size = src.size()
        holds = src.block_device and size >= head.header.total_size
        if size != head.header.total_size and not holds:
            raise BundleError(
                f"bundle {path} is {size} bytes; its header and manifest account for "
                f"{head.header.total_size}"
            )
        yield head, src


def resign_bundle(
    bundle: Path, signers: Sequence[Signer], output: Path, *, append: bool = False
) -> tuple[SignatureEntry, ...]:
    """Write a copy of a bundle with new signatures; manifest and payload stay byte for byte.

    Without ``append`` the signatures are replaced by those of ``signers``; with it they
    are added after the existing ones (m-of-n signing in several places). The signatures
    already there are not checked. With Ed25519 or RSA keys the output is reproducible.
    Each new signature has its usual length where it can (`_sign_usual`), so replacing
    signatures by ones of the same kind of key keeps the head's size, and the images'
    data on the block boundaries `create` put it on.

    Returns:
        The signature entries of the output.

    Raises:
        UsageError: No signer, too many signatures, or a key that already signed it.
        BundleError: The input is not a well-formed bundle.
        BundleIOError: Reading or writing failed.
    """
    if not signers:
        raise UsageError("at least one signing key and certificate are needed")
    with open_head_file(bundle) as (head, src):
        return _resign(bundle, head, src, signers, output, append=append)


def _resign(
    bundle: Path,
    head: UncheckedHead,
    src: FileReader,
    signers: Sequence[Signer],
    output: Path,
    *,
    append: bool,
) -> tuple[SignatureEntry, ...]:
    new = [_sign_usual(head.manifest_raw, s) for s in signers]
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
    try:
        with _temporary_output(output) as (fd, tmp):
            with os.fdopen(fd, "wb") as out:
                out.write(header.to_bytes() + head.manifest_raw + sigs)
                out.flush()
                copy_range(src.fileno(), out.fileno(), head.header.head_size, header.payload_size)
            if os.path.getsize(tmp) != header.total_size:
                raise BundleIOError(f"{bundle} changed size while it was re-signed")
            os.chmod(tmp, 0o644)
            os.replace(tmp, output)
    except OSError as e:
        raise _cannot_write(output, e) from e
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


@contextlib.contextmanager
def _temporary_output(output: Path) -> Iterator[tuple[int, str]]:
    """A new file next to `output`, for the body to rename over it once complete.

    Removed if the body raises, or a signal (SIGINT, SIGTERM) comes at any point:
    its name is chosen before it is created, inside the cleanup's reach (with
    `mkstemp`, a signal between its creating the file and the caller's cleanup
    left the partial bundle behind).
    """
    if output.is_dir():
        raise _cannot_write(output, IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR)))
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISREG(output.lstat().st_mode):
            raise UsageError(
                f"{output} exists and is not a regular file: the bundle is written beside it "
                "and renamed over it, which would replace it (write the bundle to a file, "
                "then copy it onto a device with dd)"
            )
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    tmp = ""
    try:
        for _ in range(_NAME_TRIES):
            tmp = str(output.parent / f".{output.name}.{secrets.token_hex(6)}")
            try:
                fd = os.open(tmp, flags, 0o600)
                break
            except FileExistsError:
                tmp = ""  # another writer's: never removed here
            except OSError as e:
                tmp = ""  # not created
                raise _cannot_write(output, e) from e
        else:
            raise _cannot_write(output, FileExistsError(errno.EEXIST, "no free temporary name"))
        yield fd, tmp
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise


#: Random temporary names tried before giving up (a clash is one in 2**48 per try).
_NAME_TRIES = 16
