"""Benchmark: dm-verity hash tree and `bundle-tool create` against `veritysetup format`.

Run from the repository root (after ./.ci/setup):

    .venv/bin/python tests/benchmarks/bench_tree.py [--sizes 1,4] [--repeat 3] [--workdir DIR]

On one deterministic 1 GiB image (AES-128-CTR of zeros with a fixed key, so every
run hashes the same bytes) it prints, each timing repeated --repeat times (min and
median):
  * our tree: `bundle_tool.verity.build_tree` (worker processes), and the same in
    one process;
  * `veritysetup format` on the same data with the same salt (sha256, 4096/4096,
    format 1), checking that both root hashes are equal, and the ratio;
  * `bundle-tool create` of that image (hash tree, sign, write the bundle; it is not fsynced).
Then `bundle-tool create` time and peak RSS (Maximum resident set size from
`/usr/bin/time -v`) for each image size of --sizes (GiB): memory should stay flat.
The image is read once before timing, so every tool starts with it in the page cache.
Everything is made in a temporary directory (default: under build/, on the
repository's filesystem; --workdir picks another, e.g. a tmpfs) that is removed at
the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
from pathlib import Path

import common
from common import GIB, MIB, SALT_HEX, gib, summary


def veritysetup_format(image: Path, hash_file: Path) -> tuple[common.Run, str]:
    hash_file.unlink(missing_ok=True)
    run = common.timed(
        [
            "veritysetup",
            "format",
            "--hash=sha256",
            "--data-block-size=4096",
            "--hash-block-size=4096",
            "--format=1",
            f"--salt={SALT_HEX}",
            str(image),
            str(hash_file),
        ]
    )
    m = re.search(r"Root hash:\s+([0-9a-f]{64})", run.stdout)
    if m is None:
        raise RuntimeError(f"no root hash in veritysetup's output:\n{run.stdout}")
    return run, m.group(1)


def our_tree(image: Path, workers: int | None) -> str:
    from bundle_tool import verity

    blocks = image.stat().st_size // common.BLOCK
    with verity.build_tree(str(image), blocks, bytes.fromhex(SALT_HEX), workers=workers) as tree:
        return tree.root_hash.hex()


def create(image: Path, keys: Path, out: Path) -> tuple[common.Run, str]:
    out.unlink(missing_ok=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    run = common.timed(
        [
            common.tool("bundle-tool"),
            "create",
            "--json",
            "--image",
            str(image),
            "--version",
            "1.0.0",
            "--compatible",
            "bench",
            "--key",
            str(keys / "signer.key"),
            "--cert",
            str(keys / "signer.pem"),
            "--salt",
            SALT_HEX,
            "-o",
            str(out),
        ],
        env=env,
    )
    return run, _root_of(run.stdout)


def _root_of(create_json: str) -> str:
    """The root hash in `bundle-tool create --json` output, wherever it is nested."""

    def find(node: object) -> str | None:
        if isinstance(node, dict):
            if isinstance(node.get("root_hash"), str):
                return str(node["root_hash"])
            for value in node.values():
                if (hit := find(value)) is not None:
                    return hit
        if isinstance(node, list):
            for value in node:
                if (hit := find(value)) is not None:
                    return hit
        return None

    hit = find(json.loads(create_json))
    if hit is None:
        raise RuntimeError(f"no root_hash in bundle-tool create --json output:\n{create_json}")
    return hit


def warm(path: Path) -> None:
    with path.open("rb") as f:
        while f.read(8 * MIB):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument(
        "--sizes",
        type=common.parse_sizes,
        default=common.parse_sizes("1,4"),
        help="image sizes in GiB for the create time and peak-memory check (default 1,4)",
    )
    parser.add_argument(
        "--size",
        type=lambda s: common.parse_sizes(s)[0],
        default=GIB,
        help="image size in GiB of the tree comparison (default 1)",
    )
    args = parser.parse_args()
    n = args.repeat
    workdir = common.make_workdir(args.workdir)
    try:
        print(common.machine_summary(workdir))
        print(f"repeat: {n} (min and median of the runs)")
        subprocess.run(
            [common.tool("bundle-tool"), "keygen", "-o", str(workdir / "keys")],
            check=True,
            capture_output=True,
        )
        size = args.size
        image = workdir / "image.img"
        common.make_image(image, size)
        warm(image)
        common.section(f"\n== hash tree of one {gib(size)} image (sha256, 4096/4096, same salt) ==")

        roots: set[str] = set()

        def ours_parallel() -> float:
            return common.stopwatch(lambda: roots.add(our_tree(image, None)))

        def ours_single() -> float:
            return common.stopwatch(lambda: roots.add(our_tree(image, 1)))

        vs_rss: list[int] = []

        def vs_once() -> float:
            run, root = veritysetup_format(image, workdir / "hash.img")
            roots.add(root)
            vs_rss.append(run.max_rss_kib)
            return run.seconds

        t_ours = common.repeat(n, ours_parallel)
        t_vs = common.repeat(n, vs_once)
        t_single = common.repeat(n, ours_single)
        if len(roots) != 1:
            raise SystemExit(f"root hashes differ: {sorted(roots)}")
        (root,) = roots
        print(f"root hash (ours = veritysetup): {root}")
        print(f"{f'build_tree ({os.cpu_count()} worker processes)':34}{summary(t_ours, size)}")
        print(f"{'build_tree (one process)':34}{summary(t_single, size)}")
        print(f"{'veritysetup format':34}{summary(t_vs, size)}")
        print(
            f"ratio veritysetup / ours: {min(t_vs) / min(t_ours):.2f}x (min), "
            f"{statistics.median(t_vs) / statistics.median(t_ours):.2f}x (median)"
        )

        common.section("\n== bundle-tool create (tree, sign, write the bundle) ==")
        for each in args.sizes:
            if each != size:
                image.unlink()
                image = workdir / "image.img"
                common.make_image(image, each)
                size = each
                warm(image)
            runs = []
            for _ in range(n):
                run, got = create(image, workdir / "keys", workdir / "out.bundle")
                if size == args.size and got != root:
                    raise SystemExit(f"bundle root hash {got} differs from {root}")
                runs.append(run)
            times = [r.seconds for r in runs]
            rss = max(r.max_rss_kib for r in runs)
            print(
                f"create {gib(size)}: {summary(times, size)}; "
                f"peak RSS {rss / 1024:.1f} MiB (max of runs)"
            )
            (workdir / "out.bundle").unlink(missing_ok=True)
        print(f"\nload average at end: {common.load_now()}")
    finally:
        common.cleanup(workdir, args.keep)


if __name__ == "__main__":
    main()
