"""The initramfs: busybox, veritysetup with its libraries, the kernel modules, /init and
the slot resolution it sources (`lib/abupdate/slot.sh`)."""

from __future__ import annotations

import gzip
import os
import re
import stat
from pathlib import Path

from cache import cached, digest
from settings import BUILD, INITRAMFS_INIT, INITRAMFS_SLOT, SOURCE_DATE_EPOCH, Arch
from shell import log, run

from bootctl.board import BoardConfig
from bundle_tool import cpio

_DIRS = (
    *("bin", "sbin", "dev", "proc", "sys", "newroot", "run", "lib", "lib/modules", "tmp"),
    *("usr", "usr/lib"),
)


def resolve_in(root: Path, path: str) -> Path:
    """Resolve `path` (absolute, inside the target tree `root`) following symlinks within root."""
    parts = [p for p in path.split("/") if p]
    cur = root
    for _ in range(40):
        cur = root
        for i, part in enumerate(parts):
            nxt = cur / part
            if nxt.is_symlink():
                target = os.readlink(nxt)
                base = [] if target.startswith("/") else list(cur.relative_to(root).parts)
                parts = [*base, *[p for p in target.split("/") if p], *parts[i + 1 :]]
                break
            cur = nxt
        else:
            return cur
        resolved: list[str] = []
        for p in parts:
            if p == "..":
                if resolved:
                    resolved.pop()
            elif p != ".":
                resolved.append(p)
        parts = resolved
    raise RuntimeError(f"too many symlinks resolving {path} in {root}")


def needed_libs(root: Path, elf: Path, triplet: str) -> tuple[set[str], str]:
    """Shared libraries (paths inside root) an ELF file needs, recursively, and its interpreter."""
    search = [f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib", "/usr/lib"]
    interp = ""
    headers = run("readelf", "-lW", elf, capture_output=True).stdout
    m = re.search(r"Requesting program interpreter: (\S+)\]", headers)
    if m:
        interp = m.group(1)
    found: set[str] = set()
    todo = [elf]
    while todo:
        cur = todo.pop()
        dyn = run("readelf", "-dW", cur, capture_output=True).stdout
        for name in re.findall(r"\(NEEDED\)\s+Shared library: \[(\S+)\]", dyn):
            for d in search:
                cand = f"{d}/{name}"
                if resolve_in(root, cand).exists():
                    if cand not in found:
                        found.add(cand)
                        todo.append(resolve_in(root, cand))
                    break
            else:
                raise RuntimeError(f"{name} (needed by {cur.name}) is not in the target root")
    return found, interp


def slot_table(board: BoardConfig) -> str:
    """`etc/abupdate/slots`: `NAME DEVICE BOOT_DIR` per slot, read by `slot.sh` when the
    initramfs is the signed one of a FIT or UKI."""
    return "".join(f"{s.name} {s.root} {s.boot_dir}\n" for s in board.slots)


def entries(arch: Arch, base: Path, kernel: Path, board: BoardConfig) -> list[cpio.Entry]:
    """The archive's entries, parents before children."""
    E = cpio.Entry
    d = stat.S_IFDIR | 0o755
    out = [E(n, d) for n in (*_DIRS, f"lib/{arch.triplet}", f"usr/lib/{arch.triplet}")]
    out.append(E("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    out.append(E("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3)))
    out.append(E("bin/busybox", stat.S_IFREG | 0o755, (base / "bin/busybox").read_bytes()))
    veritysetup = base / "sbin/veritysetup"
    out.append(E("sbin/veritysetup", stat.S_IFREG | 0o755, veritysetup.read_bytes()))
    libs, interp = needed_libs(base, veritysetup, arch.triplet)
    for lib in sorted(libs | {interp}):
        real = resolve_in(base, lib)
        out.append(E(lib.lstrip("/"), stat.S_IFREG | 0o755, real.read_bytes()))
    for ko in sorted((kernel / "modules").iterdir()):
        out.append(E(f"lib/modules/{ko.name}", stat.S_IFREG | 0o644, ko.read_bytes()))
    init = INITRAMFS_INIT.read_text().replace("@TRIPLET@", arch.triplet)
    out.append(E("init", stat.S_IFREG | 0o755, init.encode()))
    out.append(E("lib/abupdate/slot.sh", stat.S_IFREG | 0o644, INITRAMFS_SLOT.read_bytes()))
    out.append(E("etc/abupdate/slots", stat.S_IFREG | 0o444, slot_table(board).encode()))
    return parents_first(out)


def parents_first(entries: list[cpio.Entry]) -> list[cpio.Entry]:
    """`entries` in their order, each preceded by its folders (made when not listed).

    The kernel unpacks an initramfs in archive order and makes no missing folder: a file
    whose folder comes later (or never) is dropped.
    """
    by_name = {e.name: e for e in entries}
    ordered: list[cpio.Entry] = []
    done: set[str] = set()

    def emit(name: str) -> None:
        if name in done:
            return
        parent = name.rpartition("/")[0]
        if parent:
            emit(parent)
        done.add(name)
        ordered.append(by_name.get(name) or cpio.Entry(name, stat.S_IFDIR | 0o755))

    for entry in entries:
        emit(entry.name)
    return ordered


def make_initramfs(arch: Arch, base: Path, kernel: Path, board: BoardConfig) -> Path:
    """gzip'ed newc cpio archive of `entries`, cached."""
    key = digest(
        "initrd", 5, base.name, kernel.name, INITRAMFS_INIT, INITRAMFS_SLOT, slot_table(board)
    )

    def make(tmp: Path) -> None:
        log(f"{arch.name}: writing the initramfs")
        data = cpio.build(entries(arch, base, kernel, board), SOURCE_DATE_EPOCH)
        with (
            open(tmp, "wb") as f,
            gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0) as z,
        ):
            z.write(data)

    return cached(BUILD / arch.name / f"initrd-{key}.img", make)
