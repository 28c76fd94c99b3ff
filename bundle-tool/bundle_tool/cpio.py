"""A minimal writer of `newc` cpio archives (the initramfs format).

Written here rather than with cpio(1) so that entries get uid 0, a fixed mtime and device
nodes (`/dev/console`) without running as root.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    """One archive member."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _header(ino: int, entry: Entry, mtime: int) -> bytes:
    name = entry.name.encode() + b"\0"
    fields = [
        ino,
        entry.mode,
        0,
        0,
        2 if stat.S_ISDIR(entry.mode) else 1,
        mtime,
        len(entry.data),
        0,
        0,
        entry.rdev[0],
        entry.rdev[1],
        len(name),
        0,
    ]
    head = b"070701" + b"".join(f"{f:08x}".encode() for f in fields) + name
    return head + b"\0" * (-len(head) % 4)


def build(entries: list[Entry], mtime: int = 0) -> bytes:
    """Return the archive bytes for `entries` (in the given order) plus the trailer."""
    out = bytearray()
    for ino, entry in enumerate([*entries, Entry("TRAILER!!!", 0)], start=1):
        out += _header(ino if entry.name != "TRAILER!!!" else 0, entry, mtime)
        out += entry.data + b"\0" * (-len(entry.data) % 4)
    return bytes(out)


def entries_from_tree(root: Path) -> list[Entry]:
    """Entries for every file, directory and symlink under `root`, parents first, sorted."""
    result = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            result.append(Entry(rel, stat.S_IFLNK | 0o777, str(path.readlink()).encode()))
        elif stat.S_ISDIR(st.st_mode):
            result.append(Entry(rel, stat.S_IFDIR | 0o755))
        else:
            mode = 0o755 if st.st_mode & 0o111 else 0o644
            result.append(Entry(rel, stat.S_IFREG | mode, path.read_bytes()))
    return result
