"""Installs over HTTPS from a real nginx and from a server that drops connections."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from bundle_tool import container, keygen
from bundle_tool.errors import BundleError
from tests.helpers.faultserver import FaultServer
from tests.helpers.nginx import NginxServer
from tests.updater.device import Device, image_bytes, make_device
from tests.updater.test_install import assert_installed, flip, layout
from updater.httpsettings import HttpSettings
from updater.httpsource import HttpSource
from updater.install import Installer, InstallTuning

BLOCKS = 16384  # 64 MiB


def changed(data: bytes, fraction: float, run: int, seed: int) -> bytes:
    """`data` with `fraction` of its 4096-byte blocks rewritten, in runs of `run` blocks."""
    rng = random.Random(seed)
    blocks = len(data) // 4096
    out = bytearray(data)
    todo = int(blocks * fraction)
    starts = rng.sample(range(0, blocks - run, run), todo // run)
    for start in starts:
        out[start * 4096 : (start + run) * 4096] = rng.randbytes(run * 4096)
    return bytes(out)


def summary_span(bundle: Path) -> tuple[int, int]:
    """Where the leaf summary of the bundle's image lies in it."""
    raw = bundle.read_bytes()
    header = container.parse_header(raw[: container.HEADER_SIZE])
    manifest, _ = container.inspect_head(raw[: header.head_size])
    (part,), _ = container.layout(header, manifest)
    return part.summary_offset, part.summary_offset + part.image.leaf_summary_size


def https_install(device: Device, url: str, ca_file: str, **settings: float) -> object:
    http = HttpSettings(ca_file=ca_file, **settings)  # type: ignore[arg-type]
    with HttpSource(url, http) as src:
        return Installer(device.config()).install(src)


def served_install(device: Device, nginx_server: NginxServer, bundle: Path, image: bytes) -> int:
    """Install `bundle` from nginx, check the result; the body bytes nginx served."""
    (Path(nginx_server.root) / "v2.bundle").write_bytes(bundle.read_bytes())
    nginx_server.reset_log()
    result = https_install(device, nginx_server.url("v2.bundle"), nginx_server.ca_file)
    served = nginx_server.body_bytes_served()
    assert_installed(device, bundle=bundle)
    assert device.slot("B").read_bytes()[: len(image)] == image
    assert result.bytes_fetched == served  # type: ignore[attr-defined]
    return served


@pytest.mark.slow
@pytest.mark.parametrize(
    ("run", "summary"),
    [(8, "yes"), (1, "yes"), (1, "no"), (1, "stale")],
    ids=["clustered", "scattered", "scattered-without-leaf-summary", "scattered-stale-summary"],
)
def test_delta_update_downloads_little(
    tmp_path: Path, pki: keygen.DevPki, nginx_server: NginxServer, run: int, summary: str
) -> None:
    """A stale leaf summary (the old image's, so it says no leaf block changed) costs
    whole leaf blocks, as no summary does, never a wrong block."""
    old = image_bytes(BLOCKS, seed=1)
    device = make_device(tmp_path / "dev", pki, old)
    new = changed(old, 0.01, run, seed=2)
    bundle = device.bundle(new, leaf_summary=summary != "no")
    if summary == "stale":
        stale = device.bundle(old, "old.bundle").read_bytes()
        at, end = summary_span(bundle)
        assert (at, end) == summary_span(device.root / "old.bundle")  # 128 entries each
        assert stale[at:end] != bundle.read_bytes()[at:end]
        raw = bytearray(bundle.read_bytes())
        raw[at:end] = stale[at:end]
        bundle.write_bytes(raw)
    served = served_install(device, nginx_server, bundle, new)
    # The leaf blocks (or their changed parts) of each batch of leaf groups come in
    # one request, its data blocks in another (several ranges each, a multipart
    # answer), some read ahead in a thread: each answer is read to its end before
    # the next request, so one kept-alive connection serves them all.
    entries = nginx_server.log_entries()
    batches = -(-BLOCKS // (128 * InstallTuning().batch_groups))  # 128 blocks a leaf group
    head_requests = 4  # bundle header, signed manifest, upper tree levels, leaf summary
    assert len(entries) <= head_requests + 2 * batches
    assert sum(e["range"].count(",") for e in entries) > batches  # many ranges per request
    assert len({e["connection"] for e in entries}) == 1
    share = served / len(new)
    print(f"delta ({'runs of 8' if run == 8 else 'single'} blocks): {served} bytes = {share:.2%}")
    # Scattered single blocks change most leaf blocks (1 - 0.99**128 = 72% of them):
    # whole, those cost 0.72 * 32/4096 = 0.56% of the image on top of the 1%. The
    # leaf summary lets only their changed 512-byte parts be fetched.
    if summary == "yes":
        assert share <= (0.015 if run == 8 else 0.013)
    else:
        assert 0.0156 < share <= 0.0165


def with_zero_runs(data: bytes, fraction: float, seed: int) -> bytes:
    """`data` with about `fraction` of its blocks zeroed, in runs of 1 to 400 blocks, as a
    filesystem's free space (and a few single blocks)."""
    rng = random.Random(seed)
    blocks = len(data) // 4096
    out = bytearray(data)
    zeroed: set[int] = set()
    while len(zeroed) < fraction * blocks:
        n = 1 if rng.random() < 0.2 else rng.randint(2, 400)
        start = rng.randrange(blocks - n)
        out[start * 4096 : (start + n) * 4096] = bytes(n * 4096)
        zeroed.update(range(start, start + n))
    return bytes(out)


@pytest.mark.parametrize("summary", [True, False], ids=["leaf-summary", "no-leaf-summary"])
def test_a_fresh_install_downloads_no_zero_block(
    tmp_path: Path, pki: keygen.DevPki, nginx_server: NginxServer, summary: bool
) -> None:
    """Zero blocks are known by their signed digest: written, never downloaded."""
    blocks = 4096  # 16 MiB
    device = make_device(tmp_path / "dev", pki, image_bytes(blocks, seed=30))
    new = with_zero_runs(image_bytes(blocks, seed=31), 0.3, seed=32)
    zero_share = sum(new[i : i + 4096] == bytes(4096) for i in range(0, len(new), 4096)) / blocks
    bundle = device.bundle(new, leaf_summary=summary)
    served = served_install(device, nginx_server, bundle, new)
    share = served / len(new)
    print(f"fresh, {zero_share:.1%} zero blocks: {served} bytes = {share:.2%}")
    assert 0.3 <= zero_share < 0.4
    assert share <= 1 - zero_share + 0.01


@pytest.mark.slow
def test_a_delta_install_past_free_space_still_copies(
    tmp_path: Path, pki: keygen.DevPki, nginx_server: NginxServer
) -> None:
    """Free space in both images (zero blocks, some changed) does not make the running
    slot look unrelated: the data after it is still copied, not fetched."""
    old = bytearray(image_bytes(BLOCKS, seed=33))
    old[BLOCKS // 8 * 4096 : BLOCKS * 5 // 8 * 4096] = bytes(BLOCKS // 2 * 4096)  # free space
    device = make_device(tmp_path / "dev", pki, bytes(old))
    new = changed(bytes(old), 0.01, 1, seed=34)
    served = served_install(device, nginx_server, device.bundle(new), new)
    assert served / len(new) <= 0.015


@pytest.mark.parametrize("mode", ["find-moved", "find-moved-every-6th", "same-offset"])
def test_blocks_that_moved_are_copied_with_find_moved_blocks(
    tmp_path: Path,
    pki: keygen.DevPki,
    nginx_server: NginxServer,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    """Five blocks inserted at block 100 shift the 3996 blocks after them.

    With a budget of 1024 cells the index holds every 6th block of slot A: the
    blocks between are found next to those.
    """
    find_moved = mode != "same-offset"
    tuning = InstallTuning(index_cells=1024) if mode == "find-moved-every-6th" else None
    blocks = 4096
    old = image_bytes(blocks, seed=1)
    device = make_device(tmp_path / "dev", pki, old)
    new = old[: 100 * 4096] + image_bytes(5, seed=2) + old[100 * 4096 :]
    bundle = device.bundle(new)
    (Path(nginx_server.root) / "v2.bundle").write_bytes(bundle.read_bytes())
    nginx_server.reset_log()
    config = dataclasses.replace(device.config(), find_moved_blocks=find_moved)
    phases: list[str] = []
    with HttpSource(nginx_server.url("v2.bundle"), HttpSettings(nginx_server.ca_file)) as src:
        installer = Installer(config, progress=lambda p: phases.append(p.phase), tuning=tuning)
        result = installer.install(src)
    served = nginx_server.body_bytes_served()
    assert_installed(device, bundle=bundle)
    assert device.slot("B").read_bytes()[: len(new)] == new
    assert result.bytes_fetched == served  # type: ignore[attr-defined]
    if find_moved:
        # Every old block is reused; the 5 new blocks and the leaf blocks after the
        # insertion (their digests all shifted) are downloaded.
        assert result.bytes_reused == len(old)  # type: ignore[attr-defined]
        assert served < 0.02 * len(new)
        assert "index" in phases and phases.index("index") < phases.index("data")
    else:
        assert result.bytes_reused == 100 * 4096  # type: ignore[attr-defined]
        assert served > 0.95 * len(new)
        assert "index" not in phases


def test_two_moved_runs_that_meet_are_both_copied_with_a_sparse_index(
    tmp_path: Path, pki: keygen.DevPki, nginx_server: NginxServer
) -> None:
    """Blocks 100-104 come from 300-304 and 105-110 from 601-606, every 3rd indexed.

    Block 105 (from 601, not indexed) is first guessed from the run before it
    (305), wrongly, then from its neighbour 106 once that was copied from 602.
    """
    sparse = InstallTuning(index_cells=2048)  # 4096 blocks: every 3rd
    old = image_bytes(4096, seed=1)
    device = make_device(tmp_path / "dev", pki, old)

    def blocks(a: int, b: int) -> bytes:
        return old[a * 4096 : b * 4096]

    new = blocks(0, 100) + blocks(300, 305) + blocks(601, 607) + blocks(111, 4096)
    bundle = device.bundle(new)
    (Path(nginx_server.root) / "v2.bundle").write_bytes(bundle.read_bytes())
    config = dataclasses.replace(device.config(), find_moved_blocks=True)
    with HttpSource(nginx_server.url("v2.bundle"), HttpSettings(nginx_server.ca_file)) as src:
        result = Installer(config, tuning=sparse).install(src)
    assert_installed(device, bundle=bundle)
    assert device.slot("B").read_bytes()[: len(new)] == new
    assert result.bytes_reused == len(new)  # type: ignore[attr-defined]


def test_a_wrong_candidate_from_the_index_is_never_written(
    tmp_path: Path, pki: keygen.DevPki, nginx_server: NginxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from updater.blockindex import BlockIndex

    device = make_device(tmp_path / "dev", pki, image_bytes(700, seed=1))
    new = image_bytes(700, seed=3)  # nothing in common with slot A
    bundle = device.bundle(new)
    (Path(nginx_server.root) / "v2.bundle").write_bytes(bundle.read_bytes())
    monkeypatch.setattr(BlockIndex, "find", lambda self, digest: 7)  # always a wrong block
    config = dataclasses.replace(device.config(), find_moved_blocks=True)
    with HttpSource(nginx_server.url("v2.bundle"), HttpSettings(nginx_server.ca_file)) as src:
        result = Installer(config).install(src)
    assert_installed(device, bundle=bundle)
    assert device.slot("B").read_bytes()[: len(new)] == new
    assert result.bytes_reused == 0  # type: ignore[attr-defined]


def test_a_run_of_moved_blocks_with_a_wrong_one_copies_the_others(
    tmp_path: Path, pki: keygen.DevPki, nginx_server: NginxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks 200-209 moved to 100-109, but block 103 is new: one run, one mismatch."""
    from updater.blockindex import BlockIndex

    old = image_bytes(700, seed=1)
    device = make_device(tmp_path / "dev", pki, old)
    moved = bytearray(old[200 * 4096 : 210 * 4096])
    moved[3 * 4096 : 4 * 4096] = image_bytes(1, seed=9)
    new = old[: 100 * 4096] + bytes(moved) + old[100 * 4096 :]
    bundle = device.bundle(new)
    (Path(nginx_server.root) / "v2.bundle").write_bytes(bundle.read_bytes())
    real = BlockIndex.find
    last = [0]

    def find(self: BlockIndex, digest: bytes) -> int | None:
        # Block 103 is not in slot A: name the block after the last one found,
        # as a digest prefix shared by chance would.
        found = real(self, digest)
        last[0] = last[0] + 1 if found is None else found
        return last[0]

    monkeypatch.setattr(BlockIndex, "find", find)
    config = dataclasses.replace(device.config(), find_moved_blocks=True)
    with HttpSource(nginx_server.url("v2.bundle"), HttpSettings(nginx_server.ca_file)) as src:
        result = Installer(config).install(src)
    assert_installed(device, bundle=bundle)
    assert device.slot("B").read_bytes()[: len(new)] == new
    assert result.bytes_reused == len(new) - 4096  # type: ignore[attr-defined]


def test_install_survives_dropped_connections(
    tmp_path: Path, pki: keygen.DevPki, fault_server: FaultServer
) -> None:
    device = make_device(tmp_path / "dev", pki, image_bytes(700, seed=1))
    bundle = device.bundle(image_bytes(700, seed=3))
    fault_server.data = bundle.read_bytes()
    fault_server.drop_randomly(seed=11, count=6, max_bytes=len(fault_server.data) // 2)
    result = https_install(
        device, fault_server.url(), fault_server.ca_file, backoff_initial=0.01, retries=8
    )
    assert_installed(device, bundle=bundle)
    assert len([s for s in fault_server.served if s.dropped]) >= 1  # drops really happened
    assert result.bytes_fetched >= 700 * 4096  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["normal", "single_ranges"])
def test_delta_install_survives_dropped_multirange_answers(
    tmp_path: Path, pki: keygen.DevPki, fault_server: FaultServer, mode: str
) -> None:
    blocks = 128 * 40
    old = image_bytes(blocks, seed=1)
    device = make_device(tmp_path / "dev", pki, old)
    new = changed(old, 0.02, 1, seed=4)
    fault_server.data = device.bundle(new).read_bytes()
    fault_server.mode = mode  # multipart answers, or the whole file (then single ranges)
    fault_server.drop_randomly(seed=12, count=6, max_bytes=40_000)
    result = https_install(
        device, fault_server.url(), fault_server.ca_file, backoff_initial=0.01, retries=8
    )
    assert_installed(device)
    assert device.slot("B").read_bytes()[: len(new)] == new
    assert any(s.dropped for s in fault_server.served)
    several = [r for _, r in fault_server.requests if r and "," in r]
    if mode == "normal":
        assert len(several) > 2  # the changed blocks came in multi-range answers
    else:
        assert len(several) == 1  # asked once, answered with the whole file
    assert result.bytes_reused >= len(new) * 0.9  # type: ignore[attr-defined]


TRANSPORT_FAULTS = {
    # mode: what the install says, None if it completes
    "ignore_range": "ignored the Range request",
    "lie": "wrong Content-Range",
    "trickle": r"deadline of 1\.5 s passed",
    "overrun": None,  # each answer is cut where the range asked for ends
    "extra bytes": "bytes the manifest does not account for",
}


@pytest.mark.parametrize("fault", list(TRANSPORT_FAULTS))
def test_transport_faults_during_an_install(
    tmp_path: Path, pki: keygen.DevPki, fault_server: FaultServer, fault: str
) -> None:
    """A server that misbehaves is refused and leaves the device as it was, or is read safely."""
    from updater.errors import TransportError

    device = make_device(tmp_path / "dev", pki, image_bytes(300, seed=1))
    bundle = device.bundle(image_bytes(300, seed=3)).read_bytes()
    fault_server.data = bundle + b"\0" * 4096 if fault == "extra bytes" else bundle
    fault_server.mode = "normal" if fault == "extra bytes" else fault
    fault_server.trickle_interval = 0.05  # each byte well within the read timeout
    before = device.snapshot(target=True)
    url, ca = fault_server.url(), fault_server.ca_file
    reason = TRANSPORT_FAULTS[fault]
    if reason is None:
        result = https_install(device, url, ca, retries=0)
        assert_installed(device)
        assert result.bytes_fetched <= len(bundle)  # type: ignore[attr-defined]
        # The server did send more than was asked for: it was not read.
        asked = [
            (s, [int(x) for x in s.range.removeprefix("bytes=").split("-")])
            for s in fault_server.served
            if s.range and "," not in s.range
        ]
        assert any(s.body_bytes_sent > last + 1 - first for s, (first, last) in asked), asked
        return
    error = BundleError if fault == "extra bytes" else TransportError
    with pytest.raises(error, match=reason):
        https_install(device, url, ca, retries=0, read_timeout=1.0, deadline=1.5)
    assert device.snapshot(target=True) == before


def test_untrusted_server_certificate_changes_nothing(
    tmp_path: Path, pki: keygen.DevPki, nginx_server: NginxServer
) -> None:
    from updater.errors import TransportError

    device = make_device(tmp_path / "dev", pki, image_bytes(300, seed=1))
    bundle = device.bundle(image_bytes(300, seed=3))
    (Path(nginx_server.root) / "b.bundle").write_bytes(bundle.read_bytes())
    other_ca = keygen.make_dev_pki(tmp_path / "other").ca_cert
    before = device.snapshot()
    with pytest.raises(TransportError, match="certificate"):
        https_install(device, nginx_server.url("b.bundle"), str(other_ca))
    assert device.snapshot() == before


def test_transport_errors_name_the_cause_not_the_query_or_credentials(
    tmp_path: Path, pki: keygen.DevPki
) -> None:
    """A token in the URL stays out of the message, the JSON error and the state."""
    import json

    from tests.helpers.nginx import free_port

    device = make_device(tmp_path / "dev", pki, image_bytes(8, seed=1))
    with device.config_path.open("a") as f:
        f.write("[http]\nretries = 1\nbackoff_initial = 0.01\n")
    port = free_port()  # nobody listens there
    url = f"https://user:hunter2@127.0.0.1:{port}/x.bundle?token=SECRETTOKEN"
    r = device.cli("install", url, "--json")
    assert r.returncode == 6, r.stderr
    stderr = r.stderr.strip().splitlines()
    assert len(stderr) == 1 and "Connection refused" in stderr[0], stderr
    assert f"https://127.0.0.1:{port}/x.bundle" in stderr[0]
    last = (device.root / "state" / "last-install.json").read_text()
    error = json.loads(r.stdout.splitlines()[-1])
    for text in (r.stderr, r.stdout, last):
        assert "SECRETTOKEN" not in text and "hunter2" not in text
    assert error["event"] == "error" and "Connection refused" in error["error"]


def test_a_corrupt_block_over_https_is_never_written(
    tmp_path: Path, pki: keygen.DevPki, nginx_server: NginxServer
) -> None:
    """The default HTTPS path (delta) checks each fetched block before writing it."""
    device = make_device(tmp_path / "dev", pki, image_bytes(700, seed=1))
    good = device.bundle(image_bytes(700, seed=5))
    data = layout(device, good)[1]
    bad = flip(good, data + 333 * 4096 + 7)
    (Path(nginx_server.root) / "bad.bundle").write_bytes(bad.read_bytes())
    booted, env = device.slot("A").read_bytes(), device.env_file.read_bytes()
    with pytest.raises(BundleError, match="image block 333 "):
        https_install(device, nginx_server.url("bad.bundle"), nginx_server.ca_file)
    slot_b = device.slot("B").read_bytes()
    assert slot_b[333 * 4096 : 334 * 4096] != bad.read_bytes()[data + 333 * 4096 :][:4096]
    assert device.slot("A").read_bytes() == booted and device.env_file.read_bytes() == env
