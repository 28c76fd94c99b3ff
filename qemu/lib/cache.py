"""Build outputs cached under content keys: one helper for files and folders.

Every step names its output after a digest of its inputs (`digest`), and `cached` makes it
once: the step writes a temporary sibling, which is renamed into place when complete, so an
interrupted or concurrent build never leaves a half-made entry under the final name.
`prune` keeps the most recently used entries of a kind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from settings import MiB


def digest(*parts: object) -> str:
    """Short stable hash of the given parts (files and folders by content, others by repr)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Path):
            if p.is_dir():
                for f in sorted(p.rglob("*")):
                    if f.is_file() and "__pycache__" not in f.parts:
                        h.update(f.relative_to(p).as_posix().encode())
                        h.update(f.read_bytes())
            else:
                h.update(p.name.encode())
                h.update(p.read_bytes() if p.stat().st_size < 4 * MiB else str(p.stat()).encode())
        else:
            h.update(repr(p).encode())
    return h.hexdigest()[:16]


def touch(path: Path) -> Path:
    """Mark a cached output as just used (pruning keeps the most recently used)."""
    os.utime(path)
    return path


def remove(path: Path) -> None:
    """Remove a file or a folder, if there is one."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def cached(path: Path, make: Callable[[Path], None], *, folder: bool = False) -> Path:
    """Return `path`, made first by `make(tmp)` unless it exists.

    Args:
        path: The cache entry (a file, or a folder with `folder=True`).
        make: Writes the entry to the path it is given: a file it creates, or a folder
            that exists (empty) when `folder` is set.
        folder: Whether the entry is a folder.

    Returns:
        `path`, complete: renamed from the temporary sibling only once `make` returned.
        When another process made it meanwhile, its entry is kept and ours dropped.
    """
    if path.exists():
        return touch(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    remove(tmp)
    if folder:
        tmp.mkdir(parents=True)
    else:
        tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        make(tmp)
        # A folder cannot replace a complete one another process renamed first.
        with contextlib.suppress(OSError):
            tmp.rename(path)
    finally:
        remove(tmp)
    return path


def prune(directory: Path, prefix: str, keep: int) -> None:
    """Remove all but the `keep` most recently used cache entries named `prefix`*."""
    entries = sorted(
        (p for p in directory.glob(f"{prefix}*") if ".tmp" not in p.name),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in entries[keep:]:
        remove(old)


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (made if missing) for the `with` block.

    Builds that share a folder (two architectures at once, parallel test sessions) take
    one of these around what they must not do twice at the same time.
    """
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
