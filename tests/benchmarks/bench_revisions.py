"""Benchmark: the same hot paths at two revisions of this repository, in one run.

Run from the repository root (after ./.ci/setup):

    .venv/bin/python tests/benchmarks/bench_revisions.py --before REV [--after REV]
        [--size 1] [--repeat 5] [--workdir DIR] [--keep]

For a change that must not make anything slower (a refactoring, say), this checks out
--before (and --after, default: the work tree as it is) into temporary git worktrees and
runs each revision's own code, alternating between the two, on the same data in the same
run: `bundle-tool create` of one deterministic image (AES-128-CTR of zeros), and
`updater install` of one bundle of it from a file and from standard input into a device
on plain files (tests/updater/device.py). Each line prints wall time (min and median),
CPU seconds (user + system, children included; min and median) and peak RSS (max), from
`/usr/bin/time -v`. The bundle installed is the one the --before revision creates, which
both revisions must read. Before every timed run the target slot is
emptied and the input's cached pages are dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import common
from common import GIB, SALT_HEX, Run, drop_cache, gib

BUILD_TIME = "1700000000"


def worktree(rev: str, parent: Path) -> Path:
    """A detached git worktree of `rev` under `parent` (removed by `drop_worktree`)."""
    path = Path(tempfile.mkdtemp(prefix="rev-", dir=parent))
    subprocess.run(
        ["git", "-C", str(common.REPO), "worktree", "add", "--detach", "-q", str(path), rev],
        check=True,
    )
    return path


def drop_worktree(path: Path) -> None:
    subprocess.run(
        ["git", "-C", str(common.REPO), "worktree", "remove", "--force", str(path)],
        check=False,
    )


def python_m(module: str, *args: str) -> list[str]:
    """`python -m MODULE ARGS`; `env_for` decides which tree's code it runs."""
    # -P: not the current directory first on sys.path, which would beat PYTHONPATH.
    return [sys.executable, "-P", "-m", module, *args]


def env_for(tree: Path) -> dict[str, str]:
    """Imports resolve to `tree`'s packages, ahead of the virtualenv's editable install."""
    return {
        **os.environ,
        "PYTHONPATH": f"{tree}:{tree / 'bundle-tool'}",
        "SOURCE_DATE_EPOCH": BUILD_TIME,
    }


def create_cmd(image: Path, out: Path, pki: object) -> list[str]:
    from tests.updater.device import COMPATIBLE

    return python_m(
        "bundle_tool.cli",
        *("create", "--json", "--image", str(image), "--version", "2.0.0"),
        *("--compatible", COMPATIBLE, "--architecture", "arm64", "--security-version", "1"),
        *("--key", str(pki.signer_key), "--cert", str(pki.signer_cert)),  # type: ignore[attr-defined]
        *("--salt", SALT_HEX, "-o", str(out)),
    )


def line(label: str, runs: Sequence[Run], size: int) -> str:
    wall = [r.seconds for r in runs]
    cpu = [r.cpu_seconds for r in runs]
    rss = max(r.max_rss_kib for r in runs) / 1024
    return (
        f"{label:28}wall min {min(wall):6.2f} s, median {statistics.median(wall):6.2f} s "
        f"({size / common.MIB / min(wall):5.0f} MiB/s); CPU min {min(cpu):6.2f} s, "
        f"median {statistics.median(cpu):6.2f} s; peak RSS {rss:6.1f} MiB"
    )


def interleaved(
    n: int, trees: dict[str, Path], once: Callable[[Path], Run]
) -> dict[str, list[Run]]:
    """`n` rounds; each round runs every revision once, the order alternating."""
    runs: dict[str, list[Run]] = {name: [] for name in trees}
    names = list(trees)
    for i in range(n):
        for name in names if i % 2 == 0 else reversed(names):
            runs[name].append(once(trees[name]))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--before", required=True, metavar="REV", help="the older revision")
    parser.add_argument(
        "--after", metavar="REV", help="the newer revision (default: the work tree as it is)"
    )
    parser.add_argument(
        "--size",
        type=lambda s: common.parse_sizes(s)[0],
        default=GIB,
        help="image size in GiB (default 1)",
    )
    args = parser.parse_args()
    workdir = common.make_workdir(args.workdir)

    from bundle_tool import keygen
    from tests.updater.device import image_bytes, make_device

    made: list[Path] = []
    try:
        print(common.machine_summary(workdir))
        trees = {f"before ({args.before})": worktree(args.before, workdir)}
        made.append(trees[f"before ({args.before})"])
        if args.after:
            trees[f"after ({args.after})"] = worktree(args.after, workdir)
            made.append(trees[f"after ({args.after})"])
        else:
            trees["after (work tree)"] = common.REPO
        for name, tree in trees.items():
            head = subprocess.run(
                ["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            print(f"{name}: {tree} at {head}")
        print(f"repeat: {args.repeat} rounds, alternating the order of the revisions")
        size = args.size
        pki = keygen.make_dev_pki(workdir / "pki")
        image = workdir / "image.img"
        common.make_image(image, size)
        out = workdir / "out.bundle"

        common.section(f"\n== bundle-tool create of one {gib(size)} image ==")

        def create(tree: Path) -> Run:
            out.unlink(missing_ok=True)
            drop_cache(image)
            return common.timed(create_cmd(image, out, pki), env=env_for(tree))

        for name, runs in interleaved(args.repeat, trees, create).items():
            print(line(name, runs, size))

        # The bundle installed is the --before revision's: newer readers read older bundles
        # (docs/bundle-format.md), not always the other way round.
        bundle = workdir / "v2.bundle"
        before_tree = next(iter(trees.values()))
        subprocess.run(
            create_cmd(image, bundle, pki),
            env=env_for(before_tree),
            check=True,
            capture_output=True,
        )
        device = make_device(workdir / "dev", pki, image_bytes(256, seed=1))
        # Only the keys both revisions know (a script-chain board writes no boot files).
        config = device.config_path.read_text().splitlines(keepends=True)
        device.config_path.write_text("".join(x for x in config if not x.startswith("boot_mount")))
        for label, source in (("a local file", str(bundle)), ("standard input", "-")):
            common.section(f"\n== updater install of one {gib(size)} image from {label} ==")

            def install(tree: Path, source: str = source) -> Run:
                with device.slot("B").open("wb"):
                    pass
                drop_cache(bundle)
                cmd = python_m(
                    "updater.cli",
                    *("install", source, "--config", str(device.config_path), "--json"),
                )
                if source == "-":
                    cmd = ["sh", "-c", f'exec "$@" < "{bundle}"', "sh", *cmd]
                run = common.timed(cmd, env=env_for(tree))
                last = json.loads(run.stdout.strip().splitlines()[-1])
                if last.get("status") != "installed":
                    raise RuntimeError(f"install did not finish: {last}")
                return run

            for name, runs in interleaved(args.repeat, trees, install).items():
                print(line(name, runs, size))
    finally:
        for tree in made:
            drop_worktree(tree)
        common.cleanup(workdir, args.keep)


if __name__ == "__main__":
    main()
