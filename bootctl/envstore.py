"""Boot environment stores: the I/O around the pure codecs in `ubootenv` and `grubenv`.

Each store loads and saves a flat `name -> value` mapping. Variables the caller does not touch
are preserved, because callers save what they loaded with their changes applied.

When no valid environment exists, `load()` returns the board's defaults and sets `defaulted`;
`save()` then refuses unless called with `init=True`, so a corrupt environment is never
overwritten by accident.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from bootctl import grubenv, ubootenv
from bootctl.atomicfile import (
    FaultHook,
    NotFlushedError,
    atomic_write,
    linked_file,
    sync_file,
)
from bootctl.errors import (
    ConfigError,
    EnvCorruptError,
    EnvNotFlushedError,
    EnvSizeError,
    StorageError,
)
from bootctl.ubootenv import EnvCopy, EnvLocation

__all__ = ["EnvStore", "GrubEnvStore", "UBootEnvStore"]


class EnvStore(ABC):
    """A boot environment on some storage.

    Attributes:
        defaulted: True if the last `load()` found no valid environment and returned defaults.
    """

    def __init__(self, defaults: Mapping[str, str]) -> None:
        """Create a store.

        Args:
            defaults: Variables `load()` returns when no valid environment exists.
        """
        self._defaults = dict(defaults)
        self.defaulted = False

    @abstractmethod
    def describe(self) -> str:
        """Where the environment lives, for messages."""

    @abstractmethod
    def _load(self) -> dict[str, str] | None:
        """Read the environment; None if no valid one exists. May raise OSError."""

    @abstractmethod
    def _save(self, env: dict[str, str], init: bool) -> None:
        """Write the environment durably. May raise OSError."""

    @abstractmethod
    def paths(self) -> tuple[Path, ...]:
        """The files or devices the environment is stored in."""

    def check_creatable(self) -> None:
        """Refuse to create a missing path where a device is meant (under `/dev`).

        A file-backed environment (a file on the boot partition, or any file outside `/dev`)
        is created by `abctl init`; a missing device is a misspelt or absent device, and a
        regular file created in its place would hide that.

        Raises:
            ConfigError: A path under `/dev` does not exist.
        """
        for path in self.paths():
            if not os.path.lexists(path) and Path(os.path.abspath(path)).is_relative_to("/dev"):
                raise ConfigError(
                    f"environment device {path} does not exist (check the device name); "
                    "an environment file is created only outside /dev"
                )

    @abstractmethod
    def lock_path(self) -> Path:
        """A file or directory that exists while the environment does, to lock on."""

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive advisory lock for a load-modify-save sequence.

        The lock is taken on `lock_path()` (the environment's directory when the file is
        replaced by rename, else the file or device itself), so every `abctl` and updater
        process serialises its changes.

        Raises:
            StorageError: The lock cannot be taken.
        """
        try:
            path = self.lock_path()
        except OSError as e:  # a link that loops, say
            raise StorageError(f"cannot lock {self.describe()}: {e.strerror or e}") from e
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise StorageError(f"cannot lock {path}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def load(self) -> dict[str, str]:
        """Read the environment.

        Returns:
            The variables, or the defaults if no valid environment exists (see `defaulted`).

        Raises:
            EnvSizeError: The storage does not match the configured size.
            StorageError: Reading failed.
        """
        try:
            env = self._load()
        except OSError as e:
            raise StorageError(f"cannot read {self.describe()}: {e.strerror or e}") from e
        self.defaulted = env is None
        return dict(self._defaults) if env is None else env

    def save(self, env: Mapping[str, str], *, init: bool = False) -> None:
        """Write the environment in one crash-safe step.

        Args:
            env: All variables (the stored set is replaced by this one).
            init: Write even if no valid environment exists yet (creating it).

        Raises:
            ConfigError: `init` would create a file where a device is meant.
            EnvCorruptError: No valid environment exists and `init` is False.
            EnvError: The variables cannot be encoded (e.g. they do not fit).
            EnvSizeError: The storage does not match the configured size.
            EnvNotFlushedError: The new environment is in place (a file replaced by
                rename), but flushing its directory failed.
            StorageError: Writing or flushing failed.
        """
        if init:
            self.check_creatable()
        try:
            self._save(dict(env), init)
        except NotFlushedError as e:
            raise EnvNotFlushedError(
                f"{self.describe()} is written, but flushing it failed: {e.strerror or e}"
                " (a power cut before the next sync may bring the old environment back)"
            ) from e
        except OSError as e:
            raise StorageError(f"cannot write {self.describe()}: {e.strerror or e}") from e

    def flush(self) -> None:
        """Make the stored environment durable as it reads now, without writing it.

        A write killed between its rename and its directory's fsync (or between an
        in-place write and its fsync) leaves an environment that reads as new but
        that a power cut may undo. A caller that finds nothing to change relies on
        what it read, so it flushes it: every file or device of the environment,
        and the directory of each file (which holds its name).

        Raises:
            EnvNotFlushedError: A flush failed.
        """
        for path in self.paths():
            try:
                sync_file(path)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise EnvNotFlushedError(
                    f"cannot flush {self.describe()}: {e.strerror or e}"
                    " (a power cut before the next sync may bring an older environment back)"
                ) from e

    def _refuse(self) -> EnvCorruptError:
        return EnvCorruptError(
            f"no valid environment in {self.describe()}; run 'abctl init' to create one"
        )


def _read_at(path: str, offset: int, size: int, exclusive: bool) -> bytes | None:
    """Read one copy; None if the file does not exist or is empty.

    `exclusive` means the file holds nothing but this copy, so its size must equal `size`.
    An empty file holds no environment (an `abctl init` killed between creating the file
    and writing it leaves one): it is missing, not of the wrong size.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if stat.S_ISREG(st.st_mode):
            if st.st_size == 0:
                return None
            if exclusive and st.st_size != size:
                raise EnvSizeError(
                    f"{path} is {st.st_size} bytes but the environment size is {size} "
                    f"({size:#x}); fix the size in fw_env.config"
                )
            if st.st_size < offset + size:
                raise EnvSizeError(
                    f"{path} is {st.st_size} bytes, too small for an environment of {size:#x} "
                    f"bytes at offset {offset:#x}"
                )
        f.seek(offset)
        blob = f.read(size)
    if len(blob) != size:
        raise EnvSizeError(f"{path}: read {len(blob)} of {size} bytes at offset {offset:#x}")
    return blob


def _write_at(path: str, offset: int, blob: bytes, create: bool) -> None:
    """Write `blob` at `offset` in place and flush it.

    With `create`, a missing file is created, and the directory of a file flushed too:
    its name would not survive a power cut otherwise (one found may have been created
    by an earlier run killed before that flush).
    """
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    try:
        view = memoryview(blob)
        pos = offset
        while view:
            n = os.pwrite(fd, view, pos)
            view = view[n:]
            pos += n
        os.fsync(fd)
    finally:
        os.close(fd)
    if create:
        sync_file(Path(path))


class UBootEnvStore(EnvStore):
    """A U-Boot environment configured by `fw_env.config` lines (one: single, two: redundant).

    Single copy: a plain file that holds only the environment (offset 0) is replaced
    crash-safely (temporary file, fsync, rename, fsync directory); otherwise the copy is
    rewritten in place and flushed. Redundant: the older copy is rewritten in place with
    flags + 1 and flushed, so a torn write leaves the previous copy current.
    """

    def __init__(
        self,
        locations: Sequence[EnvLocation],
        defaults: Mapping[str, str],
        *,
        pad: int = 0x00,
        fault: FaultHook | None = None,
    ) -> None:
        """Create a store.

        Args:
            locations: One or two copies (see `ubootenv.parse_fw_env_config`).
            defaults: Variables returned when no copy is valid.
            pad: Byte that fills the unused data area (U-Boot uses 0x00).
            fault: Test seam passed to `atomic_write` for single-copy files.
        """
        super().__init__(defaults)
        if not 1 <= len(locations) <= 2:
            raise ValueError("a U-Boot environment has one or two copies")
        self.locations = tuple(locations)
        self._pad = pad
        self._fault = fault

    @classmethod
    def from_config(cls, lines: Sequence[str], defaults: Mapping[str, str]) -> UBootEnvStore:
        """Create a store from `fw_env.config` lines.

        Raises:
            ConfigError: The lines are invalid.
        """
        return cls(ubootenv.parse_fw_env_config(lines), defaults)

    @property
    def redundant(self) -> bool:
        """True for a redundant (two-copy) environment."""
        return len(self.locations) == 2

    def describe(self) -> str:
        """The locations in `fw_env.config` syntax."""
        return " + ".join(f"{loc.device}@{loc.offset:#x}" for loc in self.locations)

    def paths(self) -> tuple[Path, ...]:
        """The devices or files of the copies."""
        return tuple(dict.fromkeys(Path(loc.device) for loc in self.locations))

    def lock_path(self) -> Path:
        """The first copy's device, or its directory if it is a plain file (replaced by rename).

        For a symbolic link to a plain file, the directory of that file (where it is replaced).
        """
        path = Path(self.locations[0].device)
        try:
            if not stat.S_ISREG(path.stat().st_mode):
                return path
        except FileNotFoundError:
            pass
        return linked_file(path).parent

    def _exclusive(self, loc: EnvLocation) -> bool:
        same_file = [x for x in self.locations if x.device == loc.device]
        return loc.offset == 0 and len(same_file) == 1

    def _read(self, loc: EnvLocation) -> bytes | None:
        return _read_at(loc.device, loc.offset, loc.size, self._exclusive(loc))

    def _copies(self) -> list[EnvCopy | None]:
        copies: list[EnvCopy | None] = []
        for loc in self.locations:
            blob = self._read(loc)
            copies.append(None if blob is None else ubootenv.decode_redundant(blob))
        return copies

    def _load_single(self) -> dict[str, str] | None:
        blob = self._read(self.locations[0])
        if blob is None:
            return None
        try:
            return ubootenv.decode_single(blob)
        except EnvCorruptError:
            return None

    def _load(self) -> dict[str, str] | None:
        if not self.redundant:
            return self._load_single()
        copies = self._copies()
        current = ubootenv.select_copy(copies[0], copies[1])
        if current is None:
            return None
        chosen = copies[current]
        assert chosen is not None
        return chosen.env

    def current_flags(self) -> int | None:
        """Flags of the current copy of a redundant environment (None: single or no valid copy)."""
        if not self.redundant:
            return None
        copies = self._copies()
        current = ubootenv.select_copy(copies[0], copies[1])
        chosen = None if current is None else copies[current]
        return None if chosen is None else chosen.flags

    def _save(self, env: dict[str, str], init: bool) -> None:
        if self.redundant:
            self._save_redundant(env, init)
        else:
            self._save_single(env, init)

    def _save_single(self, env: dict[str, str], init: bool) -> None:
        loc = self.locations[0]
        blob = ubootenv.encode_single(env, loc.size, self._pad)
        if not init and self._load_single() is None:
            raise self._refuse()
        path = Path(loc.device)
        try:
            regular = stat.S_ISREG(path.stat().st_mode)
        except FileNotFoundError:
            regular = True
        if regular and loc.offset == 0:
            atomic_write(path, blob, fault=self._fault)
        else:
            _write_at(loc.device, loc.offset, blob, create=init)

    def _save_redundant(self, env: dict[str, str], init: bool) -> None:
        size = self.locations[0].size
        copies = self._copies()
        current = ubootenv.select_copy(copies[0], copies[1])
        if current is None:
            if not init:
                raise self._refuse()
            # Create both copies: the second one as the older (flags 0), then the first.
            for target, flags in ((1, 0), (0, 1)):
                loc = self.locations[target]
                blob = ubootenv.encode_redundant(env, size, flags, self._pad)
                _write_at(loc.device, loc.offset, blob, create=True)
            return
        chosen = copies[current]
        assert chosen is not None
        target, flags = 1 - current, ubootenv.next_flags(chosen.flags)
        blob = ubootenv.encode_redundant(env, size, flags, self._pad)
        loc = self.locations[target]
        # With `init`, the older copy's file may be missing: an init killed between the
        # two copies wrote the second only.
        _write_at(loc.device, loc.offset, blob, create=init)


class GrubEnvStore(EnvStore):
    """A GRUB environment block file, replaced crash-safely on every save."""

    def __init__(
        self, path: str | Path, defaults: Mapping[str, str], *, fault: FaultHook | None = None
    ) -> None:
        """Create a store.

        Args:
            path: The `grubenv` file.
            defaults: Variables returned when the file is missing or not an environment block.
            fault: Test seam passed to `atomic_write`.
        """
        super().__init__(defaults)
        self.path = Path(path)
        self._fault = fault

    def describe(self) -> str:
        """The file's path."""
        return str(self.path)

    def paths(self) -> tuple[Path, ...]:
        """The block's file."""
        return (self.path,)

    def lock_path(self) -> Path:
        """The directory of the block, where it is replaced by rename (a link's file's)."""
        return linked_file(self.path).parent

    def _load(self) -> dict[str, str] | None:
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return grubenv.decode_grubenv(blob)
        except EnvCorruptError:
            return None

    def _save(self, env: dict[str, str], init: bool) -> None:
        blob = grubenv.encode_grubenv(env)
        if not init and self._load() is None:
            raise self._refuse()
        atomic_write(self.path, blob, fault=self._fault)
