"""Benchmark: everything of one run side by side, ours against each reference tool.

Run from the repository root (after ./.ci/setup):

    .venv/bin/python tests/benchmarks/bench_all.py [--size 1G] [--repeat 1]
        [--workdir DIR] [--keep] [--images random,ext4] [--only create|install]

For each of two images of --size: the AES-CTR image (deterministic, incompressible,
no zero block) and a real ext4 filesystem made with `mkfs.ext4 -d` from a tree of
files (random and text-like, about 70% of the size) with the rest free space, it
prints one table row per command: wall seconds, CPU seconds (user + system of the
command and every child it waited for, from `/usr/bin/time -v`) and CPU seconds per
GiB, and peak RSS, with the minimum over --repeat runs (default 1):

  create    ours `bundle-tool create`; `veritysetup format` (the tree only);
            `rauc bundle` (plain format, uncompressed squashfs);
            `mender-artifact write rootfs-image --compression none`.
  check     `openssl dgst -sha256` of the image (the raw hash floor); the same
            salted SHA-256 of each 4 KiB block in Python as the installer's check
            (`verity.digest_blocks`, the image read with O_DIRECT: the floor of a
            check before writing in this language, process start included);
            the image read the same way with each MiB's XXH3-128 taken twice
            in Python (the read-back's work: one read, two digests); each of
            those two scripts on an empty file (its interpreter and imports);
            `veritysetup verify` of the slot written by our install (one pass).
  install   ours `updater install BUNDLE` from the file; the same of a 1 MiB image
            (what an install costs whatever the image's size: interpreter, imports,
            signatures, boot environment, flushes); `dd` of the bundle's data and
            hash area into a slot + `veritysetup verify` (summed);
            `rauc install` of the plain bundle: a `rauc service` on a private D-Bus
            session bus (`dbus-daemon --session`), file-backed raw slots,
            `bootloader=noop`; its CPU and RSS are the service's (one service per
            install, under `/usr/bin/time -v`), its wall time the client's.
  https     ours over HTTPS from nginx on 127.0.0.1: a fresh install (slot A holds
            an unrelated image; zero blocks are not downloaded), and a delta install
            with 1% of the blocks changed (runs of 8, and scattered) onto a device
            whose slot A holds the image. The updater's CPU, nginx's CPU apart
            (utime + stime of its processes over the install), bytes nginx served
            and their share of the image; for the fresh install beside the share of
            the image's non-zero blocks. `curl` of the bundle to /dev/null gives the
            CPU of receiving it over TLS with nothing else; the local install's CPU
            plus curl's is what an HTTPS install costs at the least.

Ratios against the references follow each section, and after the install section the
least CPU this design can take for the install, summed from rows of the same run (the
check of the non-zero blocks, the fixed cost, the read-back) beside the goal of
1.2x `veritysetup verify`. Ours and `veritysetup format` run alternately, and the
median of the pairs' wall-time ratios is printed too (`--only create` runs that
section alone, for many --repeat on a loaded machine).
Before each timed run the files it reads have their cached pages dropped. Everything
lives in a temporary directory (default under build/; --workdir picks another, e.g.
/dev/shm) removed at the end unless --keep is given. Not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_install
import common
from common import BLOCK, GIB, MIB, Run, drop_cache

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def direct_read_script(imports: str, per_mib: str) -> str:
    """A Python script reading its argument 1 MiB at a time with O_DIRECT, running
    `per_mib` on each piece (`view[:got]`)."""
    return f"""
import mmap, os, sys
{imports}
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 1 << 20)
view = memoryview(buf)
pos = 0
while got := os.preadv(fd, [view], pos):
    {per_mib}
    pos += got
"""


#: The check before writing with nothing else: each 4 KiB block hashed with the salt
#: as the installer does.
PYTHON_FLOOR = direct_read_script(
    "from bundle_tool import verity", "verity.digest_blocks(bytes(32), view[:got])"
)
#: The read-back with nothing else: the image read (as the medium is read back), each
#: MiB's XXH3-128 taken twice (the installer takes one of what it writes and one of
#: what the medium returns).
PYTHON_XXH3 = direct_read_script(
    "import xxhash", "xxhash.xxh3_128_digest(view[:got]), xxhash.xxh3_128_digest(view[:got])"
)

FIXED = "ours: updater install, 1 MiB image (fixed cost)"
READ_BACK = "python: read + 2 x xxh3-128 (the read-back)"
CHECK = "python: sha256(salt||block) of each block"
#: Each script run on an empty file: its interpreter and imports alone.
START = "start"


def parse_size(text: str) -> int:
    """'1G', '256M', '0.5' (GiB) -> bytes, rounded down to 4096."""
    units = {"G": GIB, "M": MIB}
    factor = units.get(text[-1:].upper())
    value = float(text[:-1]) * factor if factor else float(text) * GIB
    size = int(value) // BLOCK * BLOCK
    if size < 16 * MIB:
        raise argparse.ArgumentTypeError(f"size {text!r}: at least 16M")
    return size


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    label: str
    run: Run
    note: str = ""


class Table:
    """Rows of one image, printed as they come."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.rows: dict[str, Run] = {}

    def add(self, label: str, run: Run, note: str = "") -> Run:
        self.rows[label] = run
        per_gib = run.cpu_seconds / (self.size / GIB)
        print(
            f"  {label:44} wall {run.seconds:7.2f} s  CPU {run.cpu_seconds:7.2f} s "
            f"({per_gib:6.2f} s/GiB)  peak RSS {run.max_rss_kib / 1024:7.1f} MiB"
            + (f"  {note}" if note else ""),
            flush=True,
        )
        return run

    def ratio(self, ours: str, ref: str, what: str = "both") -> None:
        a, b = self.rows.get(ours), self.rows.get(ref)
        if a is None or b is None:
            return
        cpu = a.cpu_seconds / b.cpu_seconds if b.cpu_seconds else float("nan")
        print(f"    {ours} / {ref}: wall {a.seconds / b.seconds:.2f}x, CPU {cpu:.2f}x")


def best(n: int, once: Callable[[], Run], before: Callable[[], None] | None = None) -> Run:
    """The run of least wall time of `n`."""
    runs = []
    for _ in range(n):
        if before:
            before()
        runs.append(once())
    return min(runs, key=lambda r: r.seconds)


def interleaved(n: int, a: Callable[[], Run], b: Callable[[], Run]) -> tuple[Run, Run, list[float]]:
    """`a` and `b` run alternately `n` times: the fastest run of each and the wall-time
    ratio a/b of each pair."""
    pairs = [(a(), b()) for _ in range(n)]
    ratios = [x.seconds / y.seconds for x, y in pairs]
    fastest = min((x for x, _ in pairs), key=lambda r: r.seconds)
    return fastest, min((y for _, y in pairs), key=lambda r: r.seconds), ratios


def ratio_summary(ratios: Sequence[float]) -> str:
    """Median and range of ratios."""
    return (
        f"median {statistics.median(ratios):.2f}x (from {min(ratios):.2f}x to "
        f"{max(ratios):.2f}x over {len(ratios)} pairs)"
    )


def summed(runs: Sequence[Run]) -> Run:
    """Steps run one after the other as one: times added, the largest peak RSS."""
    return Run(
        sum(r.seconds for r in runs),
        max(r.max_rss_kib for r in runs),
        "",
        sum(r.cpu_seconds for r in runs),
    )


# --- images ---------------------------------------------------------------------------------


def make_ext4(path: Path, size: int, workdir: Path, seed: int = 7) -> None:
    """A real ext4 filesystem of `size` bytes: files (random and text-like) filling about
    70% of it, the rest free space (zero blocks: mkfs.ext4 leaves them unwritten)."""
    rng = random.Random(seed)
    tree = workdir / "ext4-tree"
    tree.mkdir()
    words = [
        bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(500)
    ]
    budget = int(size * 0.7)
    n = 0
    while budget > 0:
        length = min(budget, rng.choice((4096, 20000, 150000, 1 << 20, 6 << 20)))
        folder = tree / f"d{n % 37}"
        folder.mkdir(exist_ok=True)
        if rng.random() < 0.6:
            data = rng.randbytes(length)
        else:
            text = b" ".join(rng.choices(words, k=length // 5 + 1))
            data = text[:length]
        (folder / f"f{n}").write_bytes(data)
        budget -= length
        n += 1
    path.unlink(missing_ok=True)
    subprocess.run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-b",
            "4096",
            "-d",
            str(tree),
            "-U",
            "3f0b6a4e-1d2c-4b7a-9e8f-0a1b2c3d4e5f",
            "-E",
            "hash_seed=6b3c1c4e-2f6a-4d1e-8b9a-1c2d3e4f5a6b",
            str(path),
            str(size // 1024) + "k",
        ],
        check=True,
        env={**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"},
    )
    shutil.rmtree(tree)
    if path.stat().st_size != size:
        raise RuntimeError(f"{path}: mkfs.ext4 made {path.stat().st_size} bytes, not {size}")


def zero_share(path: Path) -> float:
    """The share of the image's 4096-byte blocks that are all zeros."""
    zero = bytes(BLOCK)
    zeros = total = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            for i in range(0, len(chunk), BLOCK):
                total += 1
                zeros += chunk[i : i + BLOCK] == zero
    return zeros / total


# --- processes outside the updater: nginx, the RAUC service ---------------------------------


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` and its live children so far."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the name: state ppid ... utime (14th field of the line) stime (15th).
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


@contextlib.contextmanager
def session_bus(workdir: Path) -> Iterator[dict[str, str]]:
    """A private D-Bus session bus; the environment that points a client at it."""
    out = workdir / "dbus.out"
    with out.open("w") as f:
        proc = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--print-address=1"], stdout=f
        )
    try:
        for _ in range(100):
            address = out.read_text().strip()
            if address:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("dbus-daemon printed no address")
        yield {
            **os.environ,
            "DBUS_SESSION_BUS_ADDRESS": address,
            "DBUS_STARTER_BUS_TYPE": "session",
        }
    finally:
        proc.terminate()
        proc.wait()


class Rauc:
    """RAUC on file-backed raw slots, its bundles signed with a key made for the run."""

    def __init__(self, workdir: Path, size: int) -> None:
        self.dir = workdir / "rauc"
        self.dir.mkdir()
        self.key, self.cert = self.dir / "key.pem", self.dir / "cert.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                str(self.key),
                "-out",
                str(self.cert),
                "-subj",
                "/CN=benchmark",
                "-days",
                "30",
            ],
            check=True,
            capture_output=True,
        )
        self.slots = [self.dir / "slot-a.img", self.dir / "slot-b.img"]
        for slot in self.slots:
            with slot.open("wb") as f:
                f.truncate(size)
        (self.dir / "mnt").mkdir()
        (self.dir / "data").mkdir()
        self.conf = self.dir / "system.conf"
        self.conf.write_text(
            "[system]\ncompatible=benchmark\nbootloader=noop\nbundle-formats=plain\n"
            f"mountprefix={self.dir / 'mnt'}\ndata-directory={self.dir / 'data'}\n\n"
            f"[keyring]\npath={self.cert}\n\n"
            f"[slot.rootfs.0]\ndevice={self.slots[0]}\ntype=raw\nbootname=A\n\n"
            f"[slot.rootfs.1]\ndevice={self.slots[1]}\ntype=raw\nbootname=B\n"
        )

    def bundle(self, image: Path, out: Path) -> Run:
        """`rauc bundle` of `image`, plain format, squashfs without compression."""
        content = self.dir / "content"
        shutil.rmtree(content, ignore_errors=True)
        content.mkdir()
        if same_fs(image, content):
            os.link(image, content / "rootfs.img")
        else:
            shutil.copy(image, content / "rootfs.img")
        (content / "manifest.raucm").write_text(
            "[update]\ncompatible=benchmark\nversion=1.0.0\n\n[bundle]\nformat=plain\n\n"
            "[image.rootfs]\nfilename=rootfs.img\n"
        )
        out.unlink(missing_ok=True)
        drop_cache(image)
        run = common.timed(
            [
                "rauc",
                "bundle",
                f"--cert={self.cert}",
                f"--key={self.key}",
                f"--keyring={self.cert}",
                "--mksquashfs-args=-noI -noD -noF -noX -no-xattrs",
                str(content),
                str(out),
            ]
        )
        shutil.rmtree(content)
        return run

    def install(self, bundle: Path, bus: dict[str, str]) -> Run:
        """`rauc install` through a fresh service: the service's CPU and RSS, the client's wall."""
        with self.slots[1].open("r+b") as f:
            f.truncate(0)
            f.truncate(self.slots[0].stat().st_size)
        drop_cache(bundle)
        with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
            service = subprocess.Popen(
                [
                    common.TIME,
                    "-v",
                    "-o",
                    report.name,
                    "rauc",
                    "service",
                    f"--conf={self.conf}",
                    "--override-boot-slot=A",
                ],
                env=bus,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                for _ in range(200):
                    ready = subprocess.run(["rauc", "status"], env=bus, capture_output=True)
                    if ready.returncode == 0:
                        break
                    time.sleep(0.05)
                else:
                    raise RuntimeError("the RAUC service did not come up on the session bus")
                start = time.perf_counter()
                proc = subprocess.run(
                    ["rauc", "install", str(bundle)], env=bus, capture_output=True, text=True
                )
                seconds = time.perf_counter() - start
                if proc.returncode != 0:
                    raise RuntimeError(f"rauc install failed:\n{proc.stdout[-2000:]}{proc.stderr}")
            finally:
                for child in (
                    Path(f"/proc/{service.pid}/task/{service.pid}/children").read_text().split()
                ):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(child), signal.SIGTERM)
                service.wait()
            rss, cpu = common.parse_time_report(Path(report.name).read_text())
        return Run(seconds, rss, "", cpu)


def same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def mender_write(image: Path, out: Path, workdir: Path) -> Run:
    """`mender-artifact write rootfs-image` without compression (an EC key in SEC1 form)."""
    key = workdir / "mender-key.pem"
    if not key.exists():
        subprocess.run(
            ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
            check=True,
        )
    out.unlink(missing_ok=True)
    drop_cache(image)
    run = common.timed(
        [
            "mender-artifact",
            "write",
            "rootfs-image",
            "-t",
            "benchmark",
            "-n",
            "release-1",
            "-f",
            str(image),
            "-o",
            str(out),
            "--compression",
            "none",
            "-k",
            str(key),
            "--no-progress",
        ]
    )
    out.unlink()
    return run


# --- one image --------------------------------------------------------------------------------


def bench_image(
    name: str, image: Path, size: int, args: argparse.Namespace, ctx: dict[str, Any]
) -> None:
    from tests.updater.device import make_device

    workdir: Path = ctx["workdir"]
    pki = ctx["pki"]
    n = args.repeat
    table = Table(size)
    zeros = zero_share(image)
    common.section(f"\n== {name} image, {common.gib(size)}, {zeros:.1%} zero blocks ==")
    www: Path = ctx["www"]
    bundle = www / f"{name}.bundle"

    print(" create")
    created: list[str] = []

    def create() -> Run:
        bundle.unlink(missing_ok=True)
        drop_cache(image)
        root, run = bench_install.timed_create(image, bundle, pki, "2.0.0")
        created.append(root)
        return run

    hash_file = workdir / "hash.img"

    def vformat() -> Run:
        drop_cache(image)
        run, vroot = bench_install_format(image, hash_file)
        if vroot != created[-1]:
            raise RuntimeError(f"veritysetup format gives root {vroot}, ours {created[-1]}")
        return run

    # Ours and the reference alternate, so that both see the same load.
    ours, ref, ratios = interleaved(n, create, vformat)
    table.add("ours: bundle-tool create", ours)
    table.add("veritysetup format", ref)
    print(f"    create / veritysetup format, run by run: wall {ratio_summary(ratios)}")
    root = created[-1]
    hash_file.unlink(missing_ok=True)
    if ctx["rauc"] is not None:
        raucb = workdir / f"{name}.raucb"
        table.add(
            "rauc bundle (plain, uncompressed)", best(n, lambda: ctx["rauc"].bundle(image, raucb))
        )
    if ctx["mender"]:
        table.add(
            "mender-artifact write (no compression)",
            best(n, lambda: mender_write(image, workdir / "a.mender", workdir)),
        )
    for ref in (
        "veritysetup format",
        "rauc bundle (plain, uncompressed)",
        "mender-artifact write (no compression)",
    ):
        table.ratio("ours: bundle-tool create", ref)
    if args.only == "create":
        bundle.unlink()
        return

    print(" install from a file, and one pass over the data")
    device = ctx["device"]

    def ours_local() -> Run:
        bench_install.empty(device.slot("B"))
        drop_cache(bundle)
        return bench_install.install(device, str(bundle))[0]

    table.add("ours: updater install (file)", best(n, ours_local))
    slot_b = device.slot("B")

    def verify_slot() -> Run:
        drop_cache(slot_b)
        return common.timed(
            ["veritysetup", "verify", str(slot_b), str(slot_b), root, f"--hash-offset={size}"]
        )

    table.add("veritysetup verify (the slot, one pass)", best(n, verify_slot))

    def dgst() -> Run:
        drop_cache(image)
        return common.timed(["openssl", "dgst", "-sha256", str(image)])

    table.add("openssl dgst -sha256 (the image)", best(n, dgst))

    empty = workdir / "empty.img"
    empty.touch()

    def python_script(script: str, path: Path) -> Callable[[], Run]:
        def once() -> Run:
            drop_cache(path)
            return common.timed([sys.executable, "-c", script, str(path)])

        return once

    for label, script in ((CHECK, PYTHON_FLOOR), (READ_BACK, PYTHON_XXH3)):
        table.add(label, best(n, python_script(script, image)))
        table.add(f"{label}: {START}", best(n, python_script(script, empty)))
    empty.unlink()
    if FIXED not in ctx:
        small = workdir / "small.img"
        common.make_image(small, MIB)
        small_bundle = workdir / "small.bundle"
        bench_install.make_bundle(small, small_bundle, pki, "2.0.0")
        small.unlink()

        def fixed() -> Run:
            bench_install.empty(device.slot("B"))
            drop_cache(small_bundle)
            return bench_install.install(device, str(small_bundle))[0]

        ctx[FIXED] = best(n, fixed)
        small_bundle.unlink()
    table.add(FIXED, ctx[FIXED])
    ref_slot = workdir / "ref-slot.img"

    def dd_verify() -> Run:
        bench_install.empty(ref_slot)
        drop_cache(bundle)
        return summed(bench_install.reference_runs(bundle, ref_slot, size, root))

    table.add("dd + veritysetup verify", best(n, dd_verify))
    ref_slot.unlink(missing_ok=True)
    if ctx["rauc"] is not None:
        raucb = workdir / f"{name}.raucb"
        table.add(
            "rauc install (plain; the service)",
            best(n, lambda: ctx["rauc"].install(raucb, ctx["bus"])),
        )
        raucb.unlink(missing_ok=True)
    for ref in (
        "veritysetup verify (the slot, one pass)",
        "dd + veritysetup verify",
        "openssl dgst -sha256 (the image)",
        CHECK,
        "rauc install (plain; the service)",
    ):
        table.ratio("ours: updater install (file)", ref)
    print_install_bound(table, zeros)

    nginx = ctx["nginx"]
    if nginx is None:
        bundle.unlink()
        return
    print(" over HTTPS from nginx on 127.0.0.1")
    served: list[int] = []
    nginx_cpu: list[float] = []

    def over_https(dev: Any, url: str, *extra: str) -> Callable[[], Run]:
        def once() -> Run:
            bench_install.empty(dev.slot("B"))
            drop_cache(www / url.rsplit("/", 1)[1])
            nginx.reset_log()
            before = tree_cpu(nginx_pid(nginx))
            run = bench_install.install(dev, url, *extra)[0]
            nginx_cpu.append(tree_cpu(nginx_pid(nginx)) - before)
            served.append(nginx.body_bytes_served())
            return run

        return once

    def https_row(label: str, once: Callable[[], Run], expect: str = "") -> None:
        served.clear()
        nginx_cpu.clear()
        run = best(n, once)
        note = (
            f"nginx CPU {min(nginx_cpu):.2f} s; served {max(served)} B = "
            f"{max(served) / size:.2%} of the image{expect}"
        )
        table.add(label, run, note)

    https_row(
        "ours: HTTPS, fresh install",
        over_https(device, nginx.url(bundle.name)),
        f" (non-zero blocks: {1 - zeros:.2%})",
    )
    table.ratio("ours: HTTPS, fresh install", "ours: updater install (file)")

    def curl() -> Run:
        drop_cache(bundle)
        nginx.reset_log()
        before = tree_cpu(nginx_pid(nginx))
        cmd = ["curl", "-sS", "--noproxy", "*", "--cacert", str(ctx["ca_file"]), "-o", "/dev/null"]
        run = common.timed([*cmd, nginx.url(bundle.name)])
        nginx_cpu.append(tree_cpu(nginx_pid(nginx)) - before)
        served.append(nginx.body_bytes_served())
        return run

    receive = "curl, the bundle to /dev/null (TLS receive)"
    https_row(receive, curl)
    local = table.rows["ours: updater install (file)"]
    fresh = table.rows["ours: HTTPS, fresh install"]
    floor = local.cpu_seconds + table.rows[receive].cpu_seconds
    print(
        f"    local install + curl (receiving the bundle with nothing else): CPU {floor:.2f} s = "
        f"{floor / local.cpu_seconds:.2f}x the local install; ours over HTTPS "
        f"{fresh.cpu_seconds / local.cpu_seconds:.2f}x"
    )
    delta_dev = make_device(workdir / f"dev-delta-{name}", pki, image.read_bytes())
    with delta_dev.config_path.open("a") as f:
        f.write(f'[http]\nca_file = "{ctx["ca_file"]}"\n')
    for label, run_len in (("runs of 8", 8), ("scattered", 1)):
        new = workdir / "new.img"
        changed = bench_install.changed_copy(image, new, 0.01, run_len, seed=2)
        delta = www / f"{name}-delta-{run_len}.bundle"
        bench_install.make_bundle(new, delta, pki, "3.0.0")
        new.unlink()
        https_row(
            f"ours: HTTPS, delta 1% changed ({label})",
            over_https(delta_dev, nginx.url(delta.name)),
            f" ({changed} blocks changed)",
        )
        delta.unlink()
    shutil.rmtree(delta_dev.root)
    bundle.unlink()


def print_install_bound(table: Table, zeros: float) -> None:
    """What this design costs at the least, from rows of the same run, beside the goal.

    An install checks each non-zero block (the Python floor row, scaled to the
    blocks it hashes), starts and finishes (the fixed-cost row: interpreter,
    imports, signatures, boot environment, a flush) and reads every block written
    back, with two XXH3 digests of it (the read-back row). The two script rows
    lose their start (the same script run on an empty file): the fixed cost
    holds the install's one. Writing the bytes comes on top.
    """
    rows = table.rows
    verify = rows["veritysetup verify (the slot, one pass)"].cpu_seconds

    def work(label: str) -> float:
        return rows[label].cpu_seconds - rows[f"{label}: {START}"].cpu_seconds

    check = work(CHECK) * (1 - zeros)
    fixed = rows[FIXED].cpu_seconds
    back = work(READ_BACK)
    bound = check + fixed + back
    ours = rows["ours: updater install (file)"].cpu_seconds
    print(
        f"    install CPU at the least in this design: check {check:.2f} + fixed {fixed:.2f} + "
        f"read-back {back:.2f} = {bound:.2f} s = {bound / verify:.2f}x veritysetup "
        f"verify (goal 1.20x: {1.2 * verify:.2f} s); ours {ours:.2f} s = {ours / verify:.2f}x, "
        f"{ours - bound:.2f} s above that bound"
    )


def bench_install_format(image: Path, hash_file: Path) -> tuple[Run, str]:
    """`veritysetup format` with the benchmarks' salt: the run and the root hash."""
    import bench_tree

    return bench_tree.veritysetup_format(image, hash_file)


def nginx_pid(nginx: Any) -> int:
    return int((nginx.workdir / "nginx.pid").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.set_defaults(repeat=1)
    parser.add_argument("--size", type=parse_size, default=GIB, help="image size (default 1G)")
    parser.add_argument(
        "--images",
        default="random,ext4",
        help="which images: random (AES-CTR), ext4 (default both)",
    )
    parser.add_argument("--no-https", action="store_true", help="skip nginx and the HTTPS rows")
    parser.add_argument(
        "--only",
        choices=("create", "install"),
        help="run one part only: create (ours, veritysetup format, rauc, mender), or "
        "install (ours from the file and the one-pass references; no rauc, mender, HTTPS: "
        "e.g. the peak RSS at --size 4G)",
    )
    args = parser.parse_args()
    workdir = common.make_workdir(args.workdir)
    started = time.perf_counter()

    from bundle_tool import keygen
    from tests.helpers.nginx import NginxServer
    from tests.helpers.tlsca import make_tls_files
    from tests.updater.device import image_bytes, make_device

    try:
        print(common.machine_summary(workdir))
        print(f"repeat: {args.repeat} (the run of least wall time is shown)")
        size = args.size
        pki = keygen.make_dev_pki(workdir / "pki")
        www = workdir / "www"
        www.mkdir()
        device = make_device(workdir / "dev", pki, image_bytes(256, seed=1))
        ctx: dict[str, Any] = {"workdir": workdir, "pki": pki, "www": www, "device": device}
        ctx["mender"] = args.only != "install" and shutil.which("mender-artifact") is not None
        if not ctx["mender"] and args.only != "install":
            print("mender-artifact not installed: its row is left out")
        with contextlib.ExitStack() as stack:
            ctx["rauc"] = None
            if args.only == "install":
                pass
            elif shutil.which("rauc") and shutil.which("dbus-daemon"):
                ctx["bus"] = stack.enter_context(session_bus(workdir))
                ctx["rauc"] = Rauc(workdir, size)
            else:
                print("rauc or dbus-daemon not installed: the RAUC rows are left out")
            ctx["nginx"] = None
            if not args.no_https and args.only is None:
                (workdir / "tls").mkdir()
                tls = make_tls_files(workdir / "tls")
                (workdir / "nginx").mkdir()
                ctx["nginx"] = stack.enter_context(NginxServer(workdir / "nginx", www, tls))
                ctx["ca_file"] = tls.ca_file
                with device.config_path.open("a") as f:
                    f.write(f'[http]\nca_file = "{tls.ca_file}"\n')
            for name in args.images.split(","):
                image = workdir / f"{name}.img"
                if name == "random":
                    common.make_image(image, size)
                elif name == "ext4":
                    make_ext4(image, size, workdir)
                else:
                    parser.error(f"unknown image {name!r}")
                bench_image(name, image, size, args, ctx)
                image.unlink()
        print(
            f"\nload average at end: {common.load_now()}; the run took "
            f"{time.perf_counter() - started:.0f} s"
        )
    finally:
        common.cleanup(workdir, args.keep)


if __name__ == "__main__":
    main()
