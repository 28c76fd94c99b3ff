"""Build the QEMU device images (arm64 + U-Boot, amd64 + OVMF/GRUB) from Debian packages.

Everything works on plain files: packages are unpacked with `dpkg -x`, the initramfs is
written as a cpio archive, the root filesystem with `mksquashfs`, its verity tree with
`veritysetup format`, the boot partition with `mkfs.vfat -C` + `mcopy`, and the GPT disk
with `sfdisk` on a file and `dd conv=notrunc`. Every step's output is cached under
`qemu/build/` keyed on a hash of its inputs.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path

import aptroot
import bootfiles

from bundle_tool import cpio

REPO = Path(__file__).resolve().parents[2]
QEMU_DIR = REPO / "qemu"
# Downloads and build outputs; the environment can move them (e.g. to time a cold build).
CACHE = Path(os.environ.get("ABUPDATE_QEMU_CACHE", QEMU_DIR / "cache"))
BUILD = Path(os.environ.get("ABUPDATE_QEMU_BUILD", QEMU_DIR / "build"))
SOURCE_DATE_EPOCH = 1700000000
#: The update server as the guest knows it (qemu/run --forward maps it to the host).
GUEST_SERVER_IP = "10.0.2.100"
UPDATE_SERVER = "updates.abupdate.test"
#: Development keys (bundle-tool keygen) whose CA the images trust unless told otherwise.
DEV_KEYS = BUILD / "keys"
MiB = 1024 * 1024

BOOT_SIZE = 96 * MiB
SLOT_SIZE = 160 * MiB
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

ROOTFS_PACKAGES = ["busybox-static", "python3", "cryptsetup-bin", "python3-crcmod"]
# Python dependencies taken from Debian rather than PyPI (PyPI has no wheel for them).
DEBIAN_PYTHON_DEPS = {"crcmod"}
GRUB_MODULES = [
    *("part_gpt", "fat", "normal", "linux", "loadenv", "test", "echo", "configfile", "cat"),
    *("ls", "reboot", "halt", "sleep", "efi_gop", "all_video", "search", "search_fs_file"),
    *("search_label", "regexp", "true", "gzio"),
]


@dataclass(frozen=True)
class Arch:
    """What differs between the two device images."""

    name: str
    triplet: str
    board: str
    extra_packages: tuple[str, ...]
    modules: tuple[str, ...]
    wheel_platforms: tuple[str, ...]


# Loaded by the initramfs (with their dependencies); they stay loaded in the slot's system.
MODULES = (
    *("virtio_pci", "virtio_blk", "virtio_net", "dm-verity", "squashfs", "vfat"),
    *("nls_cp437", "nls_ascii"),
)

ARCHES = {
    "arm64": Arch(
        "arm64",
        "aarch64-linux-gnu",
        "qemu-arm64-uboot.toml",
        ("libubootenv-tool",),
        MODULES,
        ("manylinux_2_28_aarch64", "manylinux2014_aarch64", "manylinux_2_17_aarch64"),
    ),
    "amd64": Arch(
        "amd64",
        "x86_64-linux-gnu",
        "qemu-x86_64-grub.toml",
        (),
        MODULES,
        ("manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64"),
    ),
}


def log(msg: str) -> None:
    """Progress line on stderr."""
    print(f"build-image: {msg}", file=sys.stderr, flush=True)


def run(*args: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a command, failing loudly."""
    return subprocess.run([str(a) for a in args], check=True, text=True, **kw)  # type: ignore[call-overload]


def digest(*parts: object) -> str:
    """Short stable hash of the given parts."""
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


def cached_dir(path: Path, make: object) -> Path:
    """Create `path` with `make(tmpdir)` unless it already exists (atomic rename)."""
    if path.exists():
        return touch(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    make(tmp)  # type: ignore[operator]
    try:
        tmp.rename(path)
    except OSError:
        shutil.rmtree(tmp)  # built concurrently by another process
    return path


def touch(path: Path) -> Path:
    """Mark a cached output as just used (pruning keeps the most recently used)."""
    os.utime(path)
    return path


def prune(directory: Path, prefix: str, keep: int) -> None:
    """Remove all but the `keep` most recently used cache entries named `prefix`*."""
    entries = sorted(
        (p for p in directory.glob(f"{prefix}*") if ".tmp" not in p.name),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in entries[keep:]:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def safe_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write a file inside a target tree, replacing (never following) a symlink there."""
    if path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    path.chmod(mode)


# ---------------------------------------------------------------------------------------
# Packages, kernel, base tree


def kernel_deb(arch: Arch) -> Path:
    """Download the kernel package the linux-image-<arch> metapackage points at."""
    apt = aptroot.AptRoot(CACHE / arch.name / "apt", arch.name)
    pkg = apt.depends_of(f"linux-image-{arch.name}")
    found = sorted(apt.archives.glob(f"{pkg}_*_{arch.name}.deb"))
    if not found:
        subprocess.run(
            ["apt-get", "-q", "download", pkg],
            check=True,
            cwd=apt.archives,
            env={**os.environ, "APT_CONFIG": str(apt.config)},
            capture_output=True,
        )
        found = sorted(apt.archives.glob(f"{pkg}_*_{arch.name}.deb"))
    return found[-1]


def make_base(arch: Arch, debs: list[Path]) -> Path:
    """Unpacked, precompiled Debian root (busybox + python3 + cryptsetup), cached."""

    def make(root: Path) -> None:
        log(f"{arch.name}: unpacking {len(debs)} packages")
        aptroot.unpack(debs, root)
        for junk in (
            "usr/share/doc",
            "usr/share/man",
            "usr/share/locale",
            "usr/share/info",
            "usr/share/lintian",
            "var/lib/dpkg",
            "etc/init.d",
        ):
            shutil.rmtree(root / junk, ignore_errors=True)
        applets = run("busybox", "--list-full", capture_output=True).stdout.split()
        for applet in applets:
            link = root / applet
            if not link.exists() and not link.is_symlink():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to("/bin/busybox")
        log(f"{arch.name}: precompiling the Python standard library")
        subprocess.run(
            [
                "/usr/bin/python3.11",
                "-m",
                "compileall",
                "-q",
                "-j0",
                "--invalidation-mode",
                "unchecked-hash",
                "-s",
                str(root),
                "-p",
                "/",
                str(root / "usr/lib/python3.11"),
                str(root / "usr/lib/python3/dist-packages"),
            ],
            check=False,
            stdout=subprocess.DEVNULL,
        )

    return cached_dir(BUILD / arch.name / f"base-{digest('base', 3, debs)}", make)


def make_kernel(arch: Arch, deb: Path) -> Path:
    """Kernel image and the initramfs modules (in load order) from the kernel package."""

    def make(out: Path) -> None:
        log(f"{arch.name}: unpacking {deb.name}")
        tree = out / "tree"
        tree.mkdir()
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        run(
            "tar",
            "-x",
            "-C",
            tree,
            "--wildcards",
            "./boot/vmlinuz-*",
            "./lib/modules/*",
            stdin=tar.stdout,
        )
        tar.wait()
        (vmlinuz,) = (tree / "boot").glob("vmlinuz-*")
        kver = vmlinuz.name.removeprefix("vmlinuz-")
        run("depmod", "-b", tree, kver)
        show = run(
            "modprobe",
            "-a",
            "-d",
            tree,
            "-S",
            kver,
            "--show-depends",
            *arch.modules,
            capture_output=True,
        ).stdout
        mods = out / "modules"
        mods.mkdir()
        order = []
        for line in show.splitlines():
            parts = line.split()
            if parts and parts[0] == "insmod":
                ko = Path(parts[1])
                if ko.name not in order:
                    order.append(ko.name)
                    shutil.copy2(ko, mods / ko.name)
        (mods / "load-order").write_text("".join(f"{m}\n" for m in order))
        shutil.move(vmlinuz, out / "vmlinuz")
        (out / "kver").write_text(kver)
        shutil.rmtree(tree)

    return cached_dir(
        BUILD / arch.name / f"kernel-{digest('kernel', 2, deb.name, arch.modules)}", make
    )


# ---------------------------------------------------------------------------------------
# Initramfs


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


def _needed_libs(root: Path, elf: Path, triplet: str) -> tuple[set[str], str]:
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


def make_initramfs(arch: Arch, base: Path, kernel: Path) -> Path:
    """gzip'ed newc cpio: busybox, veritysetup + libraries, modules, /init."""
    init_src = QEMU_DIR / "initramfs" / "init"
    slot_src = QEMU_DIR / "initramfs" / "slot.sh"
    key = digest("initrd", 4, base.name, kernel.name, init_src, slot_src)
    out = BUILD / arch.name / f"initrd-{key}.img"
    if out.exists():
        return touch(out)
    log(f"{arch.name}: writing the initramfs")
    E = cpio.Entry
    d = stat.S_IFDIR | 0o755
    entries = [
        E(n, d)
        for n in (
            "bin",
            "sbin",
            "dev",
            "proc",
            "sys",
            "newroot",
            "run",
            "lib",
            "lib/modules",
            "tmp",
            "usr",
            "usr/lib",
            f"lib/{arch.triplet}",
            f"usr/lib/{arch.triplet}",
        )
    ]
    entries.append(E("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(E("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3)))
    entries.append(E("bin/busybox", stat.S_IFREG | 0o755, (base / "bin/busybox").read_bytes()))
    veritysetup = base / "sbin/veritysetup"
    entries.append(E("sbin/veritysetup", stat.S_IFREG | 0o755, veritysetup.read_bytes()))
    libs, interp = _needed_libs(base, veritysetup, arch.triplet)
    for lib in sorted(libs | {interp}):
        real = resolve_in(base, lib)
        entries.append(E(lib.lstrip("/"), stat.S_IFREG | 0o755, real.read_bytes()))
    for ko in sorted((kernel / "modules").iterdir()):
        entries.append(E(f"lib/modules/{ko.name}", stat.S_IFREG | 0o644, ko.read_bytes()))
    init = init_src.read_text().replace("@TRIPLET@", arch.triplet)
    entries.append(E("init", stat.S_IFREG | 0o755, init.encode()))
    entries.append(E("lib/abupdate/slot.sh", stat.S_IFREG | 0o644, slot_src.read_bytes()))
    names = {e.name for e in entries}
    for e in list(entries):
        parts = e.name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in names:
                names.add(parent)
                entries.insert(0, E(parent, d))
    data = cpio.build(entries, SOURCE_DATE_EPOCH)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0) as z:
        z.write(data)
    tmp.rename(out)
    return out


# ---------------------------------------------------------------------------------------
# Python packages (ours + dependencies for the target)


def project_dependencies() -> list[str]:
    """Runtime dependencies from pyproject.toml, minus those Debian provides."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    keep = []
    for dep in deps:
        name = re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0].lower()
        if name not in DEBIAN_PYTHON_DEPS:
            keep.append(dep)
    return keep


def fetch_wheels(arch: Arch) -> Path:
    """Target-platform wheels of our dependencies (pip download), cached."""
    deps = project_dependencies()

    def make(out: Path) -> None:
        log(f"{arch.name}: downloading wheels for {', '.join(deps)}")
        plat = [a for p in arch.wheel_platforms for a in ("--platform", p)]
        run(
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--only-binary=:all:",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            *plat,
            "-d",
            out,
            *deps,
            capture_output=True,
        )

    return cached_dir(CACHE / arch.name / f"wheels-{digest('wheels', 1, deps, arch)}", make)


def our_sources_key() -> str:
    """Hash of the sources of our Python packages."""
    return digest(
        "ours", REPO / "pyproject.toml", REPO / "bundle-tool", REPO / "updater", REPO / "bootctl"
    )


def build_our_wheel() -> Path:
    """Wheel of this repository's packages (`pip wheel --no-deps .`), cached.

    pip builds in the source tree (setuptools' build/ and *.egg-info), so two
    builds at once (the arm64 and amd64 images made in parallel) would collide:
    a lock shared by all architectures lets one build and the other reuse it.
    """

    def make(out: Path) -> None:
        log("building the abupdate wheel")
        run(
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            out,
            REPO,
            capture_output=True,
        )

    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / ".lock-wheel", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return cached_dir(BUILD / f"wheel-{our_sources_key()}", make)


# ---------------------------------------------------------------------------------------
# Root filesystem and slot image


@dataclass(frozen=True)
class RootfsOptions:
    """Variants of the slot root filesystem, used by the flow tests."""

    version: str = "1.0.0"
    mark_good: bool = True
    health_fails: bool = False
    keyring: str = ""
    server_ca: str = ""


SCRIPTS = {
    "abctl": "bootctl.cli",
    "updater": "updater.cli",
    "bundle-tool": "bundle_tool.cli",
}


def make_rootfs(
    arch: Arch,
    *,
    board_path: Path,
    board: object,
    base: Path,
    wheels: Path,
    ours: Path,
    opts: RootfsOptions,
) -> Path:
    """The slot's root filesystem: squashfs (zstd) padded to 4096 bytes, cached."""
    overlay = QEMU_DIR / "rootfs"
    key = digest(
        "rootfs",
        4,
        Path(opts.keyring),
        *([Path(opts.server_ca)] if opts.server_ca else []),
        base.name,
        wheels.name,
        ours.name,
        overlay,
        board_path,
        opts,
    )
    out = BUILD / arch.name / f"rootfs-{key}.img"
    if out.exists():
        return touch(out)
    tree = BUILD / arch.name / f"rootfs-tree.{os.getpid()}"
    if tree.exists():
        shutil.rmtree(tree)
    log(f"{arch.name}: assembling the root filesystem, version {opts.version}")
    run("cp", "-a", "--reflink=auto", base, tree)
    site = tree / "usr/lib/python3/dist-packages"
    plat = [a for p in arch.wheel_platforms for a in ("--platform", p)]
    run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-compile",
        "--no-index",
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        *plat,
        "--target",
        site,
        *sorted(wheels.glob("*.whl")),
        *sorted(ours.glob("*.whl")),
        capture_output=True,
    )
    shutil.rmtree(site / "bin", ignore_errors=True)
    subprocess.run(
        [
            "/usr/bin/python3.11",
            "-m",
            "compileall",
            "-q",
            "-f",
            "-j1",  # one process, fixed order: marshal output depends on refcounts
            "--invalidation-mode",
            "unchecked-hash",
            "-s",
            str(tree),
            "-p",
            "/",
            str(site),
        ],
        check=False,
        stdout=subprocess.DEVNULL,
    )
    for name, module in SCRIPTS.items():
        safe_write(
            tree / "usr/bin" / name,
            f"#!/usr/bin/python3\nimport sys\nfrom {module} import main\nsys.exit(main())\n",
            0o755,
        )
    for src in sorted(overlay.rglob("*")):
        if src.is_file():
            safe_write(
                tree / src.relative_to(overlay), src.read_bytes(), src.stat().st_mode & 0o777
            )
    for d in (
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "var",
        "root",
        "mnt",
        "media",
        board.boot.mount.lstrip("/"),
    ):  # type: ignore[attr-defined]
        (tree / d).mkdir(parents=True, exist_ok=True)
    etc = tree / "etc/abupdate"
    safe_write(etc / "board.toml", board_path.read_bytes())
    safe_write(
        etc / "image.conf", f"BOOT_DEVICE={board.boot.device}\nBOOT_MOUNT={board.boot.mount}\n"
    )  # type: ignore[attr-defined]
    safe_write(etc / "keyring.pem", Path(opts.keyring).read_bytes())
    device = (
        'board = "board.toml"\nkeyring = "keyring.pem"\n'
        f'state_dir = "{board.boot.mount}/abupdate/state"\n'  # type: ignore[attr-defined]
    )
    if opts.server_ca:
        safe_write(etc / "server-ca.pem", Path(opts.server_ca).read_bytes())
        device += '\n[http]\nca_file = "server-ca.pem"\n'
    safe_write(etc / "device.toml", device)
    safe_write(tree / "etc/hosts", f"127.0.0.1 localhost\n{GUEST_SERVER_IP} {UPDATE_SERVER}\n")
    if opts.mark_good:
        safe_write(etc / "mark-good-on-boot", "")
    if opts.health_fails:
        safe_write(
            etc / "health",
            "#!/bin/sh\necho 'health: this image is broken on purpose'\nexit 1\n",
            0o755,
        )
    fw_env = getattr(board.env, "fw_env_config", ())  # type: ignore[attr-defined]
    if fw_env:
        safe_write(tree / "etc/fw_env.config", "".join(f"{line}\n" for line in fw_env))
    release = (
        'NAME="abupdate QEMU device"\nID=abupdate-qemu\n'
        f'VERSION_ID={opts.version}\nVERSION="{opts.version}"\n'
        f'PRETTY_NAME="abupdate QEMU device {opts.version} ({arch.name})"\n'
    )
    safe_write(tree / "etc/os-release", release)
    safe_write(tree / "usr/lib/os-release", release)
    log(f"{arch.name}: mksquashfs")
    tmp = out.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    run(
        "mksquashfs",
        tree,
        tmp,
        "-comp",
        "zstd",
        "-noappend",
        "-quiet",
        "-no-progress",
        "-all-root",
        "-mkfs-time",
        str(SOURCE_DATE_EPOCH),
        "-all-time",
        str(SOURCE_DATE_EPOCH),
        stdout=subprocess.DEVNULL,
    )
    size = tmp.stat().st_size
    with open(tmp, "r+b") as f:
        f.truncate(size + (-size % 4096))
    tmp.rename(out)
    shutil.rmtree(tree)
    return out


def verity_format(rootfs: Path, out: Path) -> str:
    """Write rootfs + its dm-verity hash area to `out`; return `<root>:<salt>:<blocks>`."""
    blocks = rootfs.stat().st_size // 4096
    salt = hashlib.sha256(b"abupdate-qemu-salt" + rootfs.name.encode()).hexdigest()
    shutil.copyfile(rootfs, out)
    res = run(
        "veritysetup",
        "format",
        f"--hash-offset={blocks * 4096}",
        f"--data-blocks={blocks}",
        f"--salt={salt}",
        f"--uuid={uuid.UUID(salt[:32])}",
        out,
        out,
        capture_output=True,
    )
    m = re.search(r"Root hash:\s+([0-9a-f]+)", res.stdout)
    if not m:
        raise RuntimeError(f"veritysetup printed no root hash: {res.stdout}")
    return f"{m.group(1)}:{salt}:{blocks}"


def make_slot(rootfs: Path) -> tuple[Path, str]:
    """Slot image (rootfs followed by its verity tree) and its verity string, cached."""
    out = rootfs.with_name(rootfs.stem.replace("rootfs-", "slot-") + ".img")
    meta = out.with_suffix(".verity")
    if out.exists() and meta.exists():
        touch(meta)
        return touch(out), meta.read_text().strip()
    verity = verity_format(rootfs, out.with_suffix(".tmp"))
    out.with_suffix(".tmp").rename(out)
    meta.write_text(verity + "\n")
    return out, verity


# ---------------------------------------------------------------------------------------
# Boot partition and disk


def make_boot_partition(
    arch: Arch,
    *,
    board: object,
    board_path: Path,
    kernel: Path,
    initrd: Path,
    verity_a: str,
    workdir: Path,
) -> Path:
    """FAT boot partition (ESP on amd64) with kernel, initrd, boot script and env."""
    b = board  # type: ignore[assignment]
    files: dict[str, Path] = {
        b.boot.kernel: kernel / "vmlinuz",  # type: ignore[attr-defined]
        b.boot.initrd: initrd,  # type: ignore[attr-defined]
    }
    files.update(bootfiles.boot_script(b, board_path, workdir / "script"))
    env_name = b.env.uboot_file if b.bootloader == "u-boot" else b.env.grub_file  # type: ignore[attr-defined]
    env_file = workdir / "env.bin"
    bootfiles.write_env(b, bootfiles.initial_env(b, verity_a), env_file)
    files[env_name] = env_file
    if arch.name == "amd64":
        efi = workdir / "BOOTX64.EFI"
        run("grub-mkimage", "-O", "x86_64-efi", "-p", "/EFI/BOOT", "-o", efi, *GRUB_MODULES)
        files["EFI/BOOT/BOOTX64.EFI"] = efi
    # Staged with fixed timestamps and copied with `mcopy -s -m`, without a volume label
    # (mkfs.vfat would date it): the same inputs give the same partition, byte for byte.
    stage = workdir / "stage"
    for dest, src in sorted(files.items()):
        target = stage / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    for path in [*stage.rglob("*"), stage]:
        os.utime(path, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))
    image = workdir / "boot.vfat"
    image.unlink(missing_ok=True)
    run(
        "mkfs.vfat",
        "-C",
        "-F",
        "32",
        "-i",
        "abcd1234",
        image,
        str(BOOT_SIZE // 1024),
        stdout=subprocess.DEVNULL,
    )
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    run("mcopy", "-s", "-m", "-i", image, *sorted(stage.iterdir()), "::/", env=env)
    return image


def partition_table(boot_size: int, slot_size: int) -> tuple[str, int, list[tuple[int, int]]]:
    """sfdisk script, disk size and (offset, size) of each partition in bytes."""
    start = MiB
    layout = []
    for size in (boot_size, slot_size, slot_size):
        layout.append((start, size))
        start += size
    total = start + MiB
    lines = ["label: gpt", "label-id: 5A8D1D0E-0B4E-4C1B-9B8D-6D2C6E5F1A01", "unit: sectors"]
    names = ["boot", "rootfs-A", "rootfs-B"]
    types = [ESP_TYPE, LINUX_TYPE, LINUX_TYPE]
    for i, ((off, size), name, typ) in enumerate(zip(layout, names, types, strict=True)):
        uuid = f"5A8D1D0E-0B4E-4C1B-9B8D-6D2C6E5F1A1{i}"
        attrs = ', attrs="LegacyBIOSBootable"' if i == 0 else ""
        lines.append(
            f'start={off // 512}, size={size // 512}, type={typ}, uuid={uuid}, name="{name}"{attrs}'
        )
    return "\n".join(lines) + "\n", total, layout


def make_disk(out: Path, boot: Path, slot_a: Path) -> list[tuple[int, int]]:
    """GPT disk: boot partition, slot A (written), slot B (empty)."""
    script, total, layout = partition_table(BOOT_SIZE, SLOT_SIZE)
    if slot_a.stat().st_size > SLOT_SIZE:
        raise RuntimeError(f"slot image {slot_a} is larger than the slot ({SLOT_SIZE} bytes)")
    tmp = out.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    with open(tmp, "wb") as f:
        f.truncate(total)
    run(
        "sfdisk",
        "--no-reread",
        "--no-tell-kernel",
        "-q",
        tmp,
        input=script,
        stdout=subprocess.DEVNULL,
    )
    for (off, _), src in zip(layout[:2], (boot, slot_a), strict=True):
        run(
            "dd",
            f"if={src}",
            f"of={tmp}",
            "bs=1M",
            f"seek={off}",
            "oflag=seek_bytes",
            "conv=notrunc,sparse",
            "status=none",
        )
    tmp.rename(out)
    return layout


# ---------------------------------------------------------------------------------------


def dev_keys() -> Path:
    """The development signing keys (qemu/build/keys), made once with bundle-tool keygen."""
    if not (DEV_KEYS / "ca.pem").exists():
        log(f"making development keys in {DEV_KEYS}")
        tmp = DEV_KEYS.with_name(f"keys.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        run(
            Path(sys.executable).parent / "bundle-tool",
            "keygen",
            "-o",
            tmp,
            stdout=subprocess.DEVNULL,
        )
        try:
            tmp.rename(DEV_KEYS)
        except OSError:
            shutil.rmtree(tmp)
    return DEV_KEYS


def load_board(path: Path) -> object:
    """The board config through bootctl's strict loader."""
    sys.path.insert(0, str(REPO))
    from bootctl.board import load_board as _load  # noqa: PLC0415 (needs sys.path first)

    return _load(path)


def build(
    arch_name: str,
    out_dir: Path,
    opts: RootfsOptions,
    refresh: bool = False,
    rootfs_only: bool = False,
) -> dict[str, object]:
    """Build one architecture's image; return the description written to `info.json`."""
    t0 = time.monotonic()
    arch = ARCHES[arch_name]
    board_path = REPO / "board-configs" / arch.board
    board = load_board(board_path)
    apt = aptroot.AptRoot(CACHE / arch.name / "apt", arch.name)
    apt.setup(refresh)
    debs = apt.closure([*ROOTFS_PACKAGES, *arch.extra_packages])
    base = make_base(arch, debs)
    wheels = fetch_wheels(arch)
    ours = build_our_wheel()
    rootfs = make_rootfs(
        arch, board_path=board_path, board=board, base=base, wheels=wheels, ours=ours, opts=opts
    )
    slot, verity = make_slot(rootfs)
    out_dir.mkdir(parents=True, exist_ok=True)
    info: dict[str, object] = {
        "arch": arch.name,
        "board": str(board_path.relative_to(REPO)),
        "version": opts.version,
        "rootfs": str(out_dir / "rootfs.img"),
        "slot": str(out_dir / "slot.img"),
        "verity": verity,
    }
    for name, src in (("rootfs.img", rootfs), ("slot.img", slot)):
        dst = out_dir / name
        dst.unlink(missing_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    if not rootfs_only:
        kernel = make_kernel(arch, kernel_deb(arch))
        initrd = make_initramfs(arch, base, kernel)
        work = out_dir / "work"
        shutil.rmtree(work, ignore_errors=True)
        boot = make_boot_partition(
            arch,
            board=board,
            board_path=board_path,
            kernel=kernel,
            initrd=initrd,
            verity_a=verity,
            workdir=work,
        )
        disk = out_dir / "disk.img"
        layout = make_disk(disk, boot, slot)
        info.update(
            disk=str(disk),
            kernel=(kernel / "kver").read_text(),
            partitions={
                n: {"offset": o, "size": s}
                for n, (o, s) in zip(("boot", "A", "B"), layout, strict=True)
            },
            boot_script="bootctl",
        )
        shutil.rmtree(work, ignore_errors=True)
    arch_dir = BUILD / arch.name
    for prefix, keep in (("rootfs-", 12), ("slot-", 24), ("base-", 2), ("kernel-", 2)):
        prune(arch_dir, prefix, keep)
    prune(arch_dir, "initrd-", 2)
    prune(BUILD, "wheel-", 3)
    info["seconds"] = round(time.monotonic() - t0, 1)
    (out_dir / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(prog="build-image", description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=sorted(ARCHES), required=True)
    p.add_argument("--out", type=Path, help="output directory (default qemu/build/ARCH/image)")
    p.add_argument("--version", default="1.0.0", help="image version (os-release VERSION_ID)")
    p.add_argument(
        "--no-mark-good",
        action="store_true",
        help="do not run the health check and `abctl mark-good` at boot",
    )
    p.add_argument(
        "--health-fails",
        action="store_true",
        help="image whose health check fails (it reboots before mark-good)",
    )
    p.add_argument(
        "--rootfs-only",
        action="store_true",
        help="build only rootfs.img and slot.img (e.g. for a bundle)",
    )
    p.add_argument("--refresh", action="store_true", help="refresh the Debian package lists")
    p.add_argument(
        "--keyring",
        type=Path,
        help="CA certificate(s) the device trusts (default qemu/build/keys/ca.pem, "
        "made with bundle-tool keygen when missing)",
    )
    p.add_argument("--server-ca", type=Path, help="CA the device trusts for HTTPS update servers")
    a = p.parse_args(argv)
    out = a.out or BUILD / a.arch / "image"
    keyring = a.keyring or dev_keys() / "ca.pem"
    opts = RootfsOptions(
        a.version,
        not a.no_mark_good,
        a.health_fails,
        str(keyring.resolve()),
        str(a.server_ca.resolve()) if a.server_ca else "",
    )
    try:
        info = build(a.arch, out, opts, a.refresh, a.rootfs_only)
    except subprocess.CalledProcessError as e:
        log(f"error: {e}")
        for output in (e.stdout, e.stderr):
            if output:
                sys.stderr.write(output if isinstance(output, str) else output.decode())
        return 1
    except (aptroot.AptError, RuntimeError) as e:
        log(f"error: {e}")
        return 1
    log(f"{a.arch}: done in {info['seconds']} s -> {out}")
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
