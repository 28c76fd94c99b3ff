"""Benchmark: `updater install` from a file and over HTTPS, against dd + veritysetup verify.

Run from the repository root (after ./.ci/setup):

    .venv/bin/python tests/benchmarks/bench_install.py [--rss-sizes 1,4] [--repeat 3]
        [--workdir DIR] [--keep] [--no-https]

On one deterministic 1 GiB image (AES-128-CTR of zeros with a fixed key) made into a
bundle with `bundle-tool create`, and a device on plain files (tests/updater/device.py:
slot A booted, slot B the target), it prints, each timing repeated --repeat times
(min and median):
  * ours, local file: `updater install BUNDLE --config DEVICE.toml` (the CLI, from
    process start to exit: head check, per-block check and write, fsync, page cache
    dropped, whole slot read back and checked, env switch), MiB/s of image, and peak
    RSS from `/usr/bin/time -v`;
  * reference on the same bundle: `dd` of the image data into a slot file
    (bs=1M conv=fsync), `dd` of the hash area after it, the slot's page cache dropped,
    then `veritysetup verify SLOT SLOT ROOT --hash-offset=SIZE`;
  * ours over HTTPS from nginx on 127.0.0.1 (TLS with a CA made for this run), with
    the default adaptive path and with --no-delta, MiB/s and bytes nginx served;
  * delta: a new image with 1% of its blocks changed, in runs of 8 blocks and
    scattered one by one, installed over HTTPS onto a device whose slot A holds the
    old image: bytes nginx served (body bytes, from its access log), their share
    of the image size, and the number of requests; then a new image with 4 blocks
    inserted after its first 10% (the rest moved by 4 blocks), without and with
    `find_moved_blocks = true` in the device config.
Then the local install's time and peak RSS for each size of --rss-sizes (GiB).
Before every timed run the target slot is emptied and the bundle's cached pages are
dropped, for ours and the reference alike. Everything lives in a temporary directory
(default: under build/, on the repository's filesystem; --workdir picks another)
that is removed at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import common
from common import GIB, SALT_HEX, Run, drop_cache, gib, summary

BUILD_TIME = "1700000000"


def make_bundle(image: Path, out: Path, pki: Any, version: str) -> str:
    """`bundle-tool create` for the test board; returns the root hash."""
    return timed_create(image, out, pki, version)[0]


def timed_create(image: Path, out: Path, pki: Any, version: str) -> tuple[str, common.Run]:
    """`bundle-tool create` for the test board, timed; the root hash and the run."""
    from tests.updater.device import COMPATIBLE

    env = {**os.environ, "SOURCE_DATE_EPOCH": BUILD_TIME}
    run = common.timed(
        [
            common.tool("bundle-tool"),
            "create",
            "--json",
            "--image",
            str(image),
            "--version",
            version,
            "--compatible",
            COMPATIBLE,
            "--architecture",
            "arm64",
            "--security-version",
            "1",
            "--key",
            str(pki.signer_key),
            "--cert",
            str(pki.signer_cert),
            "--salt",
            SALT_HEX,
            "-o",
            str(out),
        ],
        env=env,
    )
    return str(json.loads(run.stdout)["images"][0]["verity"]["root_hash"]), run


def area_size(size: int) -> int:
    from bundle_tool import verity

    return verity.Geometry.for_blocks(size // common.BLOCK).area_size


def image_offsets(bundle: Path) -> tuple[int, int]:
    """Where the hash area and the data of the bundle's only image start in it."""
    from bundle_tool import container

    with bundle.open("rb") as f:
        header = container.parse_header(f.read(container.HEADER_SIZE))
        head = os.pread(f.fileno(), header.head_size, 0)
    manifest, _ = container.inspect_head(head)
    (part,), _ = container.layout(header, manifest)
    return part.area_offset, part.data_offset


def empty(path: Path) -> None:
    with path.open("wb"):
        pass


def install(
    device: Any, source: str, *extra: str, config: Path | None = None
) -> tuple[Run, dict[str, Any]]:
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    run = common.timed(
        [
            common.tool("updater"),
            "install",
            source,
            "--config",
            str(config or device.config_path),
            "--json",
            *extra,
        ],
        env=env,
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    if result.get("status") != "installed":
        raise RuntimeError(f"install did not finish: {result}")
    return run, result


def reference(bundle: Path, slot: Path, size: int, root: str) -> tuple[float, int]:
    """dd the data and hash area from the bundle into `slot`, then veritysetup verify it."""
    runs = reference_runs(bundle, slot, size, root)
    return sum(r.seconds for r in runs), max(r.max_rss_kib for r in runs)


def reference_runs(bundle: Path, slot: Path, size: int, root: str) -> list[common.Run]:
    """The steps of `reference`, each timed."""
    area_offset, data_offset = image_offsets(bundle)
    area = area_size(size)
    steps = [
        [
            "dd",
            f"if={bundle}",
            f"of={slot}",
            "bs=1M",
            "iflag=skip_bytes,count_bytes",
            f"skip={data_offset}",
            f"count={size}",
            "conv=fsync",
            "status=none",
        ],
        [
            "dd",
            f"if={bundle}",
            f"of={slot}",
            "bs=1M",
            "iflag=skip_bytes,count_bytes",
            "oflag=seek_bytes",
            f"skip={area_offset}",
            f"count={area}",
            f"seek={size}",
            "conv=fsync,notrunc",
            "status=none",
        ],
        ["dd", f"if={slot}", "iflag=nocache", "count=0", "status=none"],
        ["veritysetup", "verify", str(slot), str(slot), root, f"--hash-offset={size}"],
    ]
    return [common.timed(step) for step in steps]


def changed_copy(old: Path, new: Path, fraction: float, run: int, seed: int) -> int:
    """Copy `old` to `new` with `fraction` of its blocks rewritten in runs of `run` blocks."""
    shutil.copyfile(old, new)
    rng = random.Random(seed)
    blocks = old.stat().st_size // common.BLOCK
    starts = rng.sample(range(0, blocks - run, run), int(blocks * fraction) // run)
    with new.open("r+b") as f:
        for start in starts:
            os.pwrite(f.fileno(), rng.randbytes(run * common.BLOCK), start * common.BLOCK)
    return len(starts) * run


def shifted_copy(old: Path, new: Path, at: int, inserted: int, seed: int) -> None:
    """Copy `old` to `new` with `inserted` new blocks put in before block `at`."""
    rng = random.Random(seed)
    with old.open("rb") as src, new.open("wb") as dst:
        dst.write(src.read(at * common.BLOCK))
        dst.write(rng.randbytes(inserted * common.BLOCK))
        shutil.copyfileobj(src, dst, 1 << 20)


def local_runs(n: int, device: Any, bundle: Path) -> list[Run]:
    runs = []
    for _ in range(n):
        empty(device.slot("B"))
        drop_cache(bundle)
        runs.append(install(device, str(bundle))[0])
    return runs


def rss_line(runs: list[Run]) -> str:
    return f"peak RSS {max(r.max_rss_kib for r in runs) / 1024:.1f} MiB (max of runs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument(
        "--size",
        type=lambda s: common.parse_sizes(s)[0],
        default=GIB,
        help="image size in GiB of the comparisons (default 1)",
    )
    parser.add_argument(
        "--rss-sizes",
        type=common.parse_sizes,
        default=common.parse_sizes("1,4"),
        help="image sizes in GiB for the local install's peak-memory check (default 1,4)",
    )
    parser.add_argument("--no-https", action="store_true", help="skip the HTTPS and delta runs")
    args = parser.parse_args()
    n = args.repeat
    workdir = common.make_workdir(args.workdir)

    from bundle_tool import keygen
    from tests.helpers.nginx import NginxServer
    from tests.helpers.tlsca import make_tls_files
    from tests.updater.device import image_bytes, make_device

    try:
        print(common.machine_summary(workdir))
        print(f"repeat: {n} (min and median of the runs)")
        pki = keygen.make_dev_pki(workdir / "pki")
        size = args.size
        image = workdir / "image.img"
        common.make_image(image, size)
        bundle = workdir / "www" / "v2.bundle"
        bundle.parent.mkdir()
        root = make_bundle(image, bundle, pki, "2.0.0")
        device = make_device(workdir / "dev", pki, image_bytes(256, seed=1))

        common.section(f"\n== install of one {gib(size)} image from a local file ==")
        local_first = local_runs(n, device, bundle)
        t_ours = [r.seconds for r in local_first]
        subprocess.run(
            [
                "veritysetup",
                "verify",
                str(device.slot("B")),
                str(device.slot("B")),
                root,
                f"--hash-offset={size}",
            ],
            check=True,
        )
        print(f"{'ours (updater install)':34}{summary(t_ours, size)}; {rss_line(local_first)}")
        ref_slot = workdir / "ref-slot.img"
        t_ref: list[float] = []
        ref_rss = 0
        for _ in range(n):
            empty(ref_slot)
            drop_cache(bundle)
            seconds, rss = reference(bundle, ref_slot, size, root)
            t_ref.append(seconds)
            ref_rss = max(ref_rss, rss)
        print(
            f"{'dd + veritysetup verify':34}{summary(t_ref, size)}; "
            f"peak RSS {ref_rss / 1024:.1f} MiB (largest step)"
        )
        print(f"ours / reference time: {min(t_ours) / min(t_ref):.2f} (min)")
        ref_slot.unlink()

        if not args.no_https:
            (workdir / "tls").mkdir()
            tls = make_tls_files(workdir / "tls")
            (workdir / "nginx").mkdir()
            with NginxServer(workdir / "nginx", bundle.parent, tls) as nginx:
                with device.config_path.open("a") as f:
                    f.write(f'[http]\nca_file = "{tls.ca_file}"\n')
                url = nginx.url(bundle.name)
                common.section(
                    "\n== install of the same bundle over HTTPS from nginx on 127.0.0.1 =="
                )
                for label, extra in (("adaptive (default)", ()), ("--no-delta", ("--no-delta",))):
                    runs, served = [], []
                    for _ in range(n):
                        empty(device.slot("B"))
                        drop_cache(bundle)
                        nginx.reset_log()
                        runs.append(install(device, url, *extra)[0])
                        served.append(nginx.body_bytes_served())
                    times = [r.seconds for r in runs]
                    print(
                        f"{'ours HTTPS ' + label:34}{summary(times, size)}; {rss_line(runs)}; "
                        f"nginx served {max(served)} bytes"
                    )
                    print(f"  HTTPS / local speed: {min(t_ours) / min(times):.0%} (min)")

                common.section(
                    f"\n== delta install over HTTPS of {gib(size)}, slot A holding the old image =="
                )
                delta_dev = make_device(workdir / "dev-delta", pki, image.read_bytes())
                with delta_dev.config_path.open("a") as f:
                    f.write(f'[http]\nca_file = "{tls.ca_file}"\n')
                moved_config = delta_dev.root / "device-moved.toml"
                moved_config.write_text(
                    "find_moved_blocks = true\n" + delta_dev.config_path.read_text()
                )
                blocks = size // common.BLOCK
                scenarios = [
                    ("runs of 8 blocks", 8, None),
                    ("scattered blocks", 1, None),
                    ("4 blocks inserted at 10%, same offset only", 0, None),
                    ("4 blocks inserted at 10%, find_moved_blocks", 0, moved_config),
                ]
                for label, run_len, config in scenarios:
                    new = workdir / "new.img"
                    if run_len:
                        changed = f"{changed_copy(image, new, 0.01, run_len, seed=2)} blocks"
                    else:
                        shifted_copy(image, new, blocks // 10, 4, seed=2)
                        changed = f"{blocks - blocks // 10} blocks moved"
                    name = f"delta-{run_len}.bundle"
                    make_bundle(new, bundle.parent / name, pki, "3.0.0")
                    new.unlink()
                    runs, served, fetched, requests = [], [], [], []
                    for _ in range(n):
                        empty(delta_dev.slot("B"))
                        nginx.reset_log()
                        run, result = install(delta_dev, nginx.url(name), config=config)
                        runs.append(run)
                        served.append(nginx.body_bytes_served())
                        requests.append(len(nginx.log_entries()))
                        fetched.append(int(result["bytes_fetched"]))
                    print(
                        f"{label}: {changed}; nginx served {max(served)} bytes = "
                        f"{max(served) / size:.2%} of the image in {max(requests)} requests "
                        f"(updater counted {max(fetched)}); "
                        f"{summary([r.seconds for r in runs], size)}; {rss_line(runs)}"
                    )
                    (bundle.parent / name).unlink()
                shutil.rmtree(workdir / "dev-delta")

        common.section("\n== local install: time and peak RSS by image size ==")
        for each in args.rss_sizes:
            if each != size:
                bundle.unlink()
                image.unlink(missing_ok=True)
                common.make_image(image, each)
                make_bundle(image, bundle, pki, "2.0.0")
                image.unlink()
            runs = local_first if each == size else local_runs(n, device, bundle)
            print(
                f"local install {gib(each)}: {summary([r.seconds for r in runs], each)}; "
                f"{rss_line(runs)}"
            )
        print(f"\nload average at end: {common.load_now()}")
    finally:
        common.cleanup(workdir, args.keep)


if __name__ == "__main__":
    main()
