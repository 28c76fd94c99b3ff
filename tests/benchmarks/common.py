"""Shared pieces of the benchmark scripts: images, timing, peak memory, machine facts.

Not a test module (pytest collects test_*.py only). The scripts import it as
`common`; it puts the repository on sys.path so `tests.helpers` and
`tests.updater` are importable when a script is run by its path.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GIB = 1 << 30
MIB = 1 << 20
BLOCK = 4096
#: dm-verity salt used for every image of the benchmarks (any fixed value will do).
SALT_HEX = "e48da609055204e89ae53b655ca2216dd983cf3cb829f34f63a297d106d53e2d"
#: Fixed AES key and IV: the image is AES-128-CTR of zeros, the same bytes on every run.
IMAGE_KEY = "000102030405060708090a0b0c0d0e0f"
IMAGE_IV = "00" * 16
VENV_BIN = REPO / ".venv" / "bin"
TIME = "/usr/bin/time"


def tool(name: str) -> str:
    """Path of a console script of this project (from the virtualenv next to the repo)."""
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        sys.exit(f"{name} not found: run ./.ci/setup first")
    return found


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Options every benchmark script takes."""
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where images, bundles and slots go (default: a temporary directory "
        "under build/ in the repository, i.e. on the repository's filesystem)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each timing (default 3)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (default: remove it)"
    )


#: This repository's packages, run from their sources (an editable install).
PACKAGES = (REPO / "updater", REPO / "bootctl", REPO / "bundle-tool" / "bundle_tool")


def byte_compile() -> None:
    """Write the bytecode of this repository's packages, as installing a wheel does.

    A device runs the updater from an installed wheel, whose modules pip compiled
    at install time. Run from the sources with PYTHONDONTWRITEBYTECODE set, each
    command would compile its 60-odd modules again, about 0.1 s of CPU a command
    on the machine of docs/benchmarks.md: a cost no device pays.
    """
    for package in PACKAGES:
        if not compileall.compile_dir(package, quiet=1):
            raise RuntimeError(f"could not byte-compile {package}")


def make_workdir(given: Path | None) -> Path:
    """The work directory: `given` (created if needed) or a fresh one under build/.

    Every benchmark starts here, so the packages are byte-compiled here first.
    """
    byte_compile()
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="abupdate-bench-", dir=given))
    base = REPO / "build"
    base.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="abupdate-bench-", dir=base))


def machine_summary(workdir: Path) -> str:
    """Date, CPU model, core count, load and filesystem of the work directory."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    fs = (
        subprocess.run(
            ["df", "--output=source,fstype", str(workdir)], capture_output=True, text=True
        )
        .stdout.splitlines()[-1]
        .split()
    )
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"date: {now}\nmachine: {model}, nproc {os.cpu_count()}\n"
        f"load average (1/5/15 min) at start: {load}\n"
        f"work directory: {workdir} on {' '.join(fs)}"
    )


def load_now() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def make_image(path: Path, size: int) -> None:
    """Write `size` deterministic pseudo-random bytes: AES-128-CTR of zeros with a fixed key."""
    with path.open("wb") as out:
        zeros = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
        subprocess.run(
            [
                "openssl",
                "enc",
                "-aes-128-ctr",
                "-nosalt",
                "-K",
                IMAGE_KEY,
                "-iv",
                IMAGE_IV,
            ],
            stdin=zeros.stdout,
            stdout=out,
            check=True,
        )
        assert zeros.stdout is not None
        zeros.stdout.close()
        if zeros.wait() != 0:
            raise RuntimeError("head failed")
    if path.stat().st_size != size:
        raise RuntimeError(f"{path}: expected {size} bytes")


def drop_cache(path: Path) -> None:
    """Ask the kernel to forget the cached pages of one file (GNU dd's nocache flag)."""
    subprocess.run(["dd", f"if={path}", "iflag=nocache", "count=0", "status=none"], check=True)


@dataclass(frozen=True)
class Run:
    """One timed command: wall seconds, peak resident memory, its output, and its CPU
    seconds (user + system, of the command and of every child it waited for)."""

    seconds: float
    max_rss_kib: int
    stdout: str
    cpu_seconds: float = 0.0


def parse_time_report(text: str) -> tuple[int, float]:
    """Peak RSS (KiB) and user + system seconds from a `/usr/bin/time -v` report."""
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    user = re.search(r"User time \(seconds\): ([\d.]+)", text)
    system = re.search(r"System time \(seconds\): ([\d.]+)", text)
    if m is None or user is None or system is None:
        raise RuntimeError(f"no peak RSS or CPU time in the report of {TIME}:\n{text}")
    return int(m.group(1)), float(user.group(1)) + float(system.group(1))


def timed(cmd: Sequence[str], *, env: dict[str, str] | None = None) -> Run:
    """Run `cmd` under `/usr/bin/time -v`; wall time is measured here, RSS from time's report."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        start = time.perf_counter()
        proc = subprocess.run(
            [TIME, "-v", "-o", report.name, *cmd],
            capture_output=True,
            text=True,
            env=env,
        )
        seconds = time.perf_counter() - start
        text = Path(report.name).read_text()
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed with status {proc.returncode}:\n{proc.stderr[-2000:]}"
        )
    rss, cpu = parse_time_report(text)
    return Run(seconds, rss, proc.stdout, cpu)


def repeat(
    n: int, once: Callable[[], float], before: Callable[[], None] | None = None
) -> list[float]:
    """Call `before` (untimed) then `once` (returns seconds) `n` times."""
    out = []
    for _ in range(n):
        if before:
            before()
        out.append(once())
    return out


def stopwatch(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(seconds: Sequence[float], size: int | None = None) -> str:
    """'min X s, median Y s' (and MiB/s of the min and the median when `size` is given)."""
    lo, med = min(seconds), statistics.median(seconds)
    text = f"min {lo:6.2f} s, median {med:6.2f} s"
    if size is not None:
        text += f"  ({size / MIB / lo:6.0f} MiB/s best, {size / MIB / med:6.0f} MiB/s median)"
    return text


def gib(size: int) -> str:
    return f"{size / GIB:g} GiB"


def parse_sizes(text: str) -> list[int]:
    """'1,4' -> sizes in bytes (GiB; fractions allowed, rounded down to 4096)."""
    sizes = []
    for part in text.split(","):
        value = int(float(part) * GIB) // BLOCK * BLOCK
        if value <= 0:
            raise argparse.ArgumentTypeError(f"bad size {part!r}")
        sizes.append(value)
    return sizes


def cleanup(workdir: Path, keep: bool) -> None:
    if keep:
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def section(title: str) -> None:
    """Print a section title with the load average at that moment."""
    print(f"{title}  [load average {load_now()}]", flush=True)
