"""Writing a slot group's boot files: its signed boot image, and artifacts the board places.

Each file goes in the same crash-safe order (install step 5 of `install`):

1. Written to a temporary name (`.NAME.new`) in its folder: an image file block by
   block, each span checked against the image's signed hash tree before it is
   written; an artifact as it comes.
2. Flushed: fsync of the file, then of its folder.
3. Checked from the medium: the page cache is dropped and the file read back. An
   image file must give, padded with zeros to whole blocks, every leaf of its tree
   again; an artifact its signed sha256 (only now is an artifact known good).
4. Renamed to its name, and the folder fsynced.

All this happens while the slot has no tries (the installer invalidated it), and
before the one environment write that makes the slot primary: a power cut or a
refusal at any step leaves the old slot booting. A refused file is removed; the
file of the same name from before stays as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from bundle_tool import bootversion, verity
from bundle_tool.container import ArtifactLayout, ImageLayout
from bundle_tool.errors import BundleError
from bundle_tool.reader import CheckedImage

from .errors import DeviceError
from .source import BundleSource

BLOCK = verity.BLOCK_SIZE
READ_BACK = 1 << 20
#: A file `create` opens: made here (a name still there is an error), never a link followed.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class BootDir:
    """One folder of the boot partition (or ESP), as the file writer uses it.

    Every method raises DeviceError on failure. Like a slot, a folder keeps only
    what was flushed: file data after `sync`, names (new files and renames) after
    `sync_dir`. Tests subclass it to cut the power (tests/updater/faults.py).

    Args:
        path: the folder; it is made (with its parents) by `prepare`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._open: dict[str, int] = {}

    def _fail(self, what: str, e: OSError) -> DeviceError:
        return DeviceError(f"boot folder {self.path}: {what} failed: {e.strerror}")

    def prepare(self) -> None:
        """Make the folder if it is missing, durably (each new level's parent is fsynced).

        Raises:
            DeviceError: also when the folder is a symbolic link: the updater does not
                write through one to wherever it points.
        """
        if self.path.is_symlink():
            raise DeviceError(f"boot folder {self.path} is a symbolic link; not writing through it")
        missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
        try:
            for folder in reversed(missing):
                folder.mkdir()
                _fsync_dir(folder.parent)
        except OSError as e:
            raise self._fail("mkdir", e) from e

    def create(self, name: str) -> None:
        """Open file `name` for writing, a new file: what had that name (a file, or a
        symbolic link planted there) is removed first, never written through."""
        path = self.path / name
        try:
            path.unlink(missing_ok=True)
            self._open[name] = os.open(path, _NEW_FILE, 0o644)
        except OSError as e:
            raise self._fail(f"create {name}", e) from e

    def append(self, name: str, data: bytes | memoryview) -> None:
        """Write `data` at the end of the file `create` opened."""
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._open[name], view) :]
        except OSError as e:
            raise self._fail(f"write {name}", e) from e

    def sync(self, name: str) -> None:
        """Make the file's data durable (fsync) and close it."""
        fd = self._open.pop(name)
        try:
            os.fsync(fd)
        except OSError as e:
            raise self._fail(f"fsync {name}", e) from e
        finally:
            os.close(fd)

    def sync_dir(self) -> None:
        """Make the folder's names durable (fsync of the folder)."""
        try:
            _fsync_dir(self.path)
        except OSError as e:
            raise self._fail("fsync", e) from e

    def read(self, name: str, offset: int, length: int) -> bytes:
        """Up to `length` bytes of file `name` at `offset`, from the medium (cache dropped)."""
        try:
            fd = os.open(self.path / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                return os.pread(fd, length, offset)
            finally:
                os.close(fd)
        except OSError as e:
            raise self._fail(f"read {name}", e) from e

    def rename(self, old: str, new: str) -> None:
        """Give file `old` the name `new`, replacing the file of that name at once."""
        try:
            os.rename(self.path / old, self.path / new)
        except OSError as e:
            raise self._fail(f"rename {old} to {new}", e) from e

    def remove(self, name: str) -> None:
        """Remove file `name` if it is there (a refused file)."""
        fd = self._open.pop(name, None)
        if fd is not None:
            os.close(fd)
        try:
            (self.path / name).unlink(missing_ok=True)
        except OSError as e:
            raise self._fail(f"remove {name}", e) from e

    def close(self) -> None:
        """Close what is still open (after a failure)."""
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def boot_image_info(path: Path) -> bootversion.BootImageInfo:
    """The release and kernel versions a slot's boot image records (`bundle_tool.bootversion`).

    Both None when the file is missing, unreadable, or records none.
    """
    try:
        with path.open("rb") as f:

            def read(offset: int, length: int) -> bytes:
                f.seek(offset)
                return f.read(length)

            return bootversion.boot_image_info(read)
    except OSError:
        return bootversion.BootImageInfo()


def temporary_name(name: str) -> str:
    """The name a file has while it is written and checked."""
    return f".{name}.new"


def write_image_file(source: BundleSource, part: ImageLayout, folder: BootDir, name: str) -> None:
    """Install a file image (e.g. the boot image) as `name` in `folder`, in the order above.

    Its whole hash area is read and checked, so its leaf summary (an unsigned hint
    for fetching less of a tree) is neither read nor needed: a wrong one changes
    nothing.

    Raises:
        BundleError: a tree or data block does not match the signed manifest, or the
            image's padding after its file size is not zeros (`CheckedImage.data`: no
            block after it is written, the temporary file is removed, `name` is untouched).
        DeviceError: writing, flushing or reading back failed.
    """
    checked = CheckedImage(source, part)
    length = part.image.length

    def fill() -> None:
        left = length
        for span in checked.data():
            folder.append(tmp, memoryview(span)[:left])
            left -= min(left, len(span))

    def read_back() -> None:
        for offset in range(0, part.image.size, READ_BACK):
            want = min(READ_BACK, part.image.size - offset)
            real = max(0, min(want, length - offset))  # the rest is the padding
            got = folder.read(tmp, offset, real)
            padded = got + bytes(want - real)
            if len(got) != real or checked.bad_block(offset // BLOCK, padded) is not None:
                raise DeviceError(
                    f"{folder.path / name}: the file read back does not match its signed "
                    "hash tree (the medium is failing); it was not put in place"
                )

    tmp = temporary_name(name)
    _install(folder, name, tmp, fill, read_back)


def write_artifact(source: BundleSource, part: ArtifactLayout, folder: BootDir, name: str) -> None:
    """Install an artifact as `name` in `folder`: written, flushed, its sha256 checked, renamed.

    An artifact has no hash tree: its bytes are checked as a whole, as they are
    written and again when read back, and it is put in place only then.

    Raises:
        BundleError: its bytes do not give the signed sha256 (the file is removed).
        DeviceError: writing, flushing or reading back failed.
    """
    art = part.artifact
    tmp = temporary_name(name)

    def fill() -> None:
        sha = hashlib.sha256()
        for chunk in source.read(part.offset, art.size):
            sha.update(chunk)
            folder.append(tmp, chunk)
        if sha.digest() != art.sha256:
            raise BundleError(
                f"artifact {art.name} does not match its signed sha256; it was not put in place"
            )

    def read_back() -> None:
        sha = hashlib.sha256()
        for offset in range(0, art.size, READ_BACK):
            sha.update(folder.read(tmp, offset, min(READ_BACK, art.size - offset)))
        if sha.digest() != art.sha256:
            raise DeviceError(
                f"{folder.path / name}: the file read back does not match its signed sha256 "
                "(the medium is failing); it was not put in place"
            )

    _install(folder, name, tmp, fill, read_back)


def _install(
    folder: BootDir, name: str, tmp: str, fill: Callable[[], None], read_back: Callable[[], None]
) -> None:
    """Steps 1 to 4 of the module docstring; `fill` writes the file, `read_back` checks it."""
    folder.prepare()
    folder.create(tmp)
    try:
        fill()
        folder.sync(tmp)
        folder.sync_dir()
        read_back()
    except BaseException:  # refused, the source failed, a signal: no half-written file is left
        folder.close()
        with contextlib.suppress(DeviceError):  # the reason of the refusal matters more
            folder.remove(tmp)
        raise
    folder.rename(tmp, name)
    folder.sync_dir()
