"""Debian packages of a foreign architecture, fetched without touching the host's dpkg.

Each architecture gets a private apt directory (its own state, cache, sources and an
empty dpkg status), so `apt-get install --download-only` resolves a package closure for
that architecture alone. Packages are then unpacked with `dpkg -x`.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
LISTS_MAX_AGE = 24 * 3600

_INST = re.compile(r"^Inst (\S+) \((\S+) .*\[(\S+)\]\)")


class AptError(RuntimeError):
    """apt could not resolve or fetch a package."""


class AptRoot:
    """A private apt configuration for one Debian architecture."""

    def __init__(self, directory: Path, arch: str, suite: str = "bookworm") -> None:
        self.dir = directory
        self.arch = arch
        self.suite = suite
        self.archives = directory / "cache" / "archives"
        self.config = directory / "apt.conf"

    def env(self) -> dict[str, str]:
        """The environment that points apt-get and apt-cache at this configuration."""
        return {**os.environ, "APT_CONFIG": str(self.config), "DEBIAN_FRONTEND": "noninteractive"}

    def _apt(self, *args: str) -> str:
        proc = subprocess.run(
            ["apt-get", "-q", *args], env=self.env(), capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise AptError(f"apt-get {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
        return proc.stdout

    def setup(self, refresh: bool = False) -> None:
        """Write the private configuration and fetch the package lists when stale."""
        d = self.dir
        for sub in (
            "etc/apt.conf.d",
            "etc/preferences.d",
            "etc/sources.list.d",
            "state/lists/partial",
            "cache/archives/partial",
        ):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "state" / "status").touch()
        opts = f"arch={self.arch} signed-by={KEYRING}"
        sources = (
            f"deb [{opts}] {MIRROR} {self.suite} main\n"
            f"deb [{opts}] {MIRROR} {self.suite}-updates main\n"
            f"deb [{opts}] {SECURITY_MIRROR} {self.suite}-security main\n"
        )
        (d / "etc" / "sources.list").write_text(sources)
        conf = "\n".join(
            [
                f'Dir::State "{d}/state";',
                f'Dir::State::status "{d}/state/status";',
                f'Dir::Cache "{d}/cache";',
                f'Dir::Etc "{d}/etc";',
                f'Dir::Etc::SourceList "{d}/etc/sources.list";',
                f'Dir::Etc::SourceParts "{d}/etc/sources.list.d";',
                f'Dir::Etc::Parts "{d}/etc/apt.conf.d";',
                f'Dir::Etc::Preferences "{d}/etc/preferences";',
                f'Dir::Etc::PreferencesParts "{d}/etc/preferences.d";',
                f'APT::Architecture "{self.arch}";',
                f'APT::Architectures {{ "{self.arch}"; }};',
                'APT::Install-Recommends "false";',
                'APT::Sandbox::User "root";',
                'Acquire::Languages "none";',
                "",
            ]
        )
        self.config.write_text(conf)
        stamp = d / "state" / "updated"
        fresh = stamp.exists() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE
        if refresh or not fresh:
            self._apt("update")
            stamp.touch()

    def closure(self, packages: list[str]) -> list[Path]:
        """Download the dependency closure of `packages`; return the .deb files, sorted."""
        sim = self._apt("install", "-s", *packages)
        wanted = []
        for line in sim.splitlines():
            m = _INST.match(line)
            if m:
                name, version, arch = m.groups()
                wanted.append(self.archives / f"{name}_{version.replace(':', '%3a')}_{arch}.deb")
        if not wanted:
            raise AptError(f"apt resolved nothing for {packages}")
        if not all(p.exists() for p in wanted):
            self._apt("install", "--download-only", "-y", *packages)
        missing = [p.name for p in wanted if not p.exists()]
        if missing:
            raise AptError(f"apt did not download {missing}")
        return sorted(wanted)

    def depends_of(self, package: str) -> str:
        """The first dependency of a metapackage (e.g. linux-image-arm64 -> its ABI package)."""
        proc = subprocess.run(
            ["apt-cache", "depends", package],
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
        )
        for raw in proc.stdout.splitlines():
            line = raw.strip()
            if line.startswith("Depends:"):
                return line.split(":", 1)[1].strip()
        raise AptError(f"cannot resolve the dependency of {package}: {proc.stderr.strip()}")


def unpack(debs: list[Path], root: Path) -> None:
    """Unpack .deb files into `root` with `dpkg -x` (no maintainer scripts)."""
    root.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
