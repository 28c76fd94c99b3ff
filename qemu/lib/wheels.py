"""Python wheels for the target: our packages (built from this tree) and their dependencies."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from cache import cached, digest, locked
from settings import BUILD, CACHE, REPO, Arch
from shell import log, run

# Python dependencies taken from Debian rather than PyPI (PyPI has no wheel for them).
DEBIAN_PYTHON_DEPS = {"crcmod"}
#: Our packages' sources: a change to any of them makes a new wheel.
SOURCES = (REPO / "pyproject.toml", REPO / "bundle-tool", REPO / "updater", REPO / "bootctl")


def platform_args(arch: Arch) -> list[str]:
    """pip's options selecting the target's wheels (CPython 3.11 on `arch`)."""
    plat = [a for p in arch.wheel_platforms for a in ("--platform", p)]
    return ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", *plat]


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
        run(
            *(sys.executable, "-m", "pip", "download", "-q", *platform_args(arch), "-d", out),
            *deps,
            capture_output=True,
        )

    key = digest("wheels", 1, deps, arch)
    return cached(CACHE / arch.name / f"wheels-{key}", make, folder=True)


def build_our_wheel() -> Path:
    """Wheel of this repository's packages (`pip wheel --no-deps .`), cached.

    pip builds in the source tree (setuptools' build/ and *.egg-info), so two
    builds at once (the arm64 and amd64 images made in parallel) would collide:
    a lock shared by all architectures lets one build and the other reuse it.
    """

    def make(out: Path) -> None:
        log("building the abupdate wheel")
        run(
            *(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, REPO),
            capture_output=True,
        )

    with locked(BUILD / ".lock-wheel"):
        return cached(BUILD / f"wheel-{digest('ours', *SOURCES)}", make, folder=True)


def install(arch: Arch, site: Path, *wheel_dirs: Path) -> None:
    """Install the wheels in `wheel_dirs` into the target folder `site` (no compiling)."""
    wheels = [w for d in wheel_dirs for w in sorted(d.glob("*.whl"))]
    run(
        *(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile"),
        *("--no-index", *platform_args(arch), "--target", site, *wheels),
        capture_output=True,
    )
