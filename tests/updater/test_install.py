"""Installing bundles into file-backed slots, checked with the real veritysetup and fw_printenv."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from bootctl.state import SlotVerity
from bundle_tool import keygen, signing
from bundle_tool.errors import BundleError, PolicyError, TrustError
from tests.updater.device import (
    BOARD,
    BUILD_TIME,
    GRUB_BOARD,
    Device,
    image_bytes,
    make_device,
    straight_reads,
    veritysetup_verify,
)
from updater import directio
from updater.errors import DeviceError, UsageError
from updater.filesource import FileSource, StdinSource
from updater.install import Installer, InstallTuning
from updater.slotdev import FileSlot
from updater.statedir import StateDir

BLOCKS = 700  # 2.8 MiB: several leaf blocks, two tree levels


def fw_printenv(device: Device) -> dict[str, str]:
    config = device.root / "fw_env.config"
    config.write_text(f"{device.env_file} 0x0000 0x4000\n")
    out = subprocess.run(
        ["fw_printenv", "-c", str(config)], check=True, capture_output=True, text=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def assert_installed(device: Device, slot: str = "B", bundle: Path | None = None) -> SlotVerity:
    """The env boots `slot` first with full tries, and the slot verifies with its root hash.

    With `bundle`, that root hash must be the one its signed manifest names.
    """
    env = fw_printenv(device)
    assert env["BOOT_ORDER"].split()[0] == slot
    assert env[f"BOOT_{slot}_LEFT"] == "3"
    v = SlotVerity.from_env(env[f"BOOT_{slot}_VERITY"])
    if bundle is not None:
        assert v.root_hash == manifest_root_hash(bundle)
    result = veritysetup_verify(device.slot(slot), v)
    assert result.returncode == 0, result.stderr
    return v


def manifest_root_hash(bundle: Path) -> str:
    from bundle_tool.container import HEADER_SIZE, inspect_head, parse_header

    raw = bundle.read_bytes()
    manifest, _ = inspect_head(raw[: parse_header(raw[:HEADER_SIZE]).head_size])
    return manifest.images[0].verity.root_hash.hex()


def spy(monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> list[tuple[Any, ...]]:
    """Record the arguments (self first) of every call of `owner.name`, which still runs."""
    calls: list[tuple[Any, ...]] = []
    real = getattr(owner, name)

    def recording(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(owner, name, recording)
    return calls


def install_file(
    device: Device, bundle: Path, tuning: InstallTuning | None = None, **kw: object
) -> object:
    with FileSource(bundle) as src:
        return Installer(device.config(), tuning=tuning).install(src, **kw)  # type: ignore[arg-type]


#: A flush every 64 blocks, written a span of 64 blocks at a time.
SMALL_REGIONS = InstallTuning(flush_every=64 * 4096, span_blocks=64)


# One block (no tree), two leaf blocks, and more than one 4 MiB read-back chunk;
# a flush every 300 blocks, so the slot is read back in several regions.
@pytest.mark.parametrize("blocks", [1, 129, 2 * 1024 + 5])
def test_stream_install_reads_back_by_regions(device: Device, blocks: int) -> None:
    new = image_bytes(blocks, seed=blocks)
    install_file(device, device.bundle(new), InstallTuning(flush_every=300 * 4096))
    v = assert_installed(device)
    assert v.data_blocks == blocks
    assert device.slot("B").read_bytes()[: len(new)] == new


# Rings of one to three 64-block slots: spans wait for a free slot, for its write
# and for the child, and a flush comes between spans still in the ring.
@pytest.mark.parametrize("slots", [1, 2, 3])
@pytest.mark.parametrize("stdin", [False, True], ids=["file", "stdin"])
def test_stream_install_through_a_small_hashing_ring(
    device: Device, slots: int, stdin: bool
) -> None:
    tuning = InstallTuning(ring_slots=slots, span_blocks=64, flush_every=200 * 4096)
    new = image_bytes(BLOCKS, seed=30 + slots)
    bundle = device.bundle(new)
    if stdin:
        with bundle.open("rb") as f:
            Installer(device.config(), tuning=tuning).install(StdinSource(f))
    else:
        install_file(device, bundle, tuning, delta=False)
    assert_installed(device, bundle=bundle)


# One ring slot: a span of data then waits for the write of the one before, and zero
# spans (which take no slot) come between; eight: spans of zeros run ahead.
@pytest.mark.parametrize("slots", [1, 8])
@pytest.mark.parametrize("stdin", [False, True], ids=["file", "stdin"])
def test_stream_install_writes_spans_of_zero_blocks_without_reading_or_hashing_them(
    device: Device, monkeypatch: pytest.MonkeyPatch, stdin: bool, slots: int
) -> None:
    from updater import hashing

    # Spans of 64 blocks: 64-255 are zeros (three whole spans), so are 320-383 and
    # 448-511 (one span each, between spans of data), and 600-630 (part of one).
    new = bytearray(image_bytes(BLOCKS, seed=40))
    for first, end in ((64, 256), (320, 384), (448, 512), (600, 631)):
        new[first * 4096 : end * 4096] = bytes((end - first) * 4096)
    bundle = device.bundle(bytes(new))
    # The bundle's bytes of the zero spans are not what is installed: the signed digests
    # say those blocks are zeros. Garbage there is never read into the slot.
    data_offset = layout(device, bundle)[1]
    with bundle.open("r+b") as f:
        f.seek(data_offset + 64 * 4096)
        f.write(b"\xa5" * (192 * 4096))
    device.slot("B").write_bytes(b"\x5a" * (BLOCKS * 4096))  # the old content goes
    hashed = spy(monkeypatch, hashing.SpanDigests, "submit")
    tuning = InstallTuning(span_blocks=64, flush_every=200 * 4096, ring_slots=slots)
    if stdin:
        with bundle.open("rb") as f:
            Installer(device.config(), tuning=tuning).install(StdinSource(f))
    else:
        with FileSource(bundle) as src:
            Installer(device.config(), tuning=tuning).install(src, delta=False)
            assert src.bytes_fetched < bundle.stat().st_size - 192 * 4096
    assert_installed(device, bundle=bundle)
    assert device.slot("B").read_bytes()[: BLOCKS * 4096] == bytes(new)
    # Every span but the five of zeros went through the hashing child.
    assert len(hashed) == -(-BLOCKS // 64) - 5, hashed


@pytest.mark.parametrize("change", ["cut", "grown"])
def test_a_bundle_file_changed_in_size_while_read_is_refused_though_its_zeros_are_not_read(
    device: Device, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """Its last spans hold zero blocks only, so the stream path reads none of their
    bytes: the file is measured again before the switch."""
    from updater import readback

    new = bytearray(image_bytes(BLOCKS, seed=41))
    new[500 * 4096 :] = bytes((BLOCKS - 500) * 4096)  # free space at the image's end
    bundle = device.bundle(bytes(new))
    size = bundle.stat().st_size
    data_offset = layout(device, bundle)[1]
    assert size == data_offset + BLOCKS * 4096  # the data ends the file
    flushed = readback.RegionReadBack.flushed

    def change_file(self: readback.RegionReadBack, upto_block: int) -> None:
        if upto_block <= 64:  # after the first flush, the data still being read
            if change == "cut":
                os.truncate(bundle, data_offset + 600 * 4096)  # in the zero spans
            else:
                with bundle.open("ab") as f:
                    f.write(b"appended")
        flushed(self, upto_block)

    monkeypatch.setattr(readback.RegionReadBack, "flushed", change_file)
    before = device.snapshot()
    tuning = InstallTuning(span_blocks=64, flush_every=64 * 4096)
    message = "ends early" if change == "cut" else "changed while it was read"
    with FileSource(bundle) as src, pytest.raises(BundleError, match=message):
        Installer(device.config(), tuning=tuning).install(src, delta=False)
    assert device.snapshot() == before
    assert bundle.stat().st_size != size


def test_good_install_from_file(device: Device) -> None:
    new = image_bytes(BLOCKS, seed=2)
    bundle = device.bundle(new)
    result = install_file(device, bundle)
    v = assert_installed(device, bundle=bundle)
    assert device.slot("B").read_bytes()[: len(new)] == new
    assert result.slot == "B" and result.version == "2.0.0"  # type: ignore[attr-defined]
    assert v.data_blocks == BLOCKS
    record = StateDir(device.root / "state").slot_records()["B"]
    assert record.version == "2.0.0" and record.root_hash == v.root_hash


@pytest.mark.parametrize("data_padding", [True, False], ids=["padded", "older form"])
def test_a_file_bundle_is_read_straight_into_the_ring_where_its_data_is_on_a_block(
    device: Device, monkeypatch: pytest.MonkeyPatch, data_padding: bool
) -> None:
    new = image_bytes(BLOCKS, seed=4)
    bundle = device.bundle(new, data_padding=data_padding)
    fd = directio.open_direct(str(bundle), os.O_RDONLY)
    if fd is None:
        pytest.skip("this file system refuses direct I/O")
    os.close(fd)
    straight = straight_reads(monkeypatch)
    install_file(device, bundle)
    assert_installed(device, bundle=bundle)
    assert device.slot("B").read_bytes()[: len(new)] == new
    assert straight  # every span of data, each read with no copy or else copied
    assert all(straight) if data_padding else not any(straight)


def test_good_install_from_stdin_with_the_cli(device: Device) -> None:
    bundle = device.bundle(image_bytes(BLOCKS, seed=3))
    with bundle.open("rb") as f:
        r = device.cli("install", "-", "--json", stdin=f)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert lines[-1]["event"] == "result" and lines[-1]["slot"] == "B"
    assert any(line["event"] == "progress" and line["phase"] == "data" for line in lines)
    assert_installed(device, bundle=bundle)


def test_good_install_over_https(device: Device, nginx_server) -> None:  # type: ignore[no-untyped-def]
    bundle = device.bundle(image_bytes(BLOCKS, seed=4))
    (Path(nginx_server.root) / "u.bundle").write_bytes(bundle.read_bytes())
    with device.config_path.open("a") as f:
        f.write(f'[http]\nca_file = "{nginx_server.ca_file}"\n')
    r = device.cli("install", nginx_server.url("u.bundle"), "--json")
    assert r.returncode == 0, r.stderr
    assert_installed(device, bundle=bundle)
    # Slot B was empty and A holds other data: everything came over the network once.
    assert nginx_server.body_bytes_served() >= BLOCKS * 4096


def test_reinstall_resumes_without_fetching_data(device: Device) -> None:
    bundle = device.bundle(image_bytes(BLOCKS, seed=5))
    install_file(device, bundle)
    again = install_file(device, bundle, delta=True)
    assert again.bytes_reused == BLOCKS * 4096  # type: ignore[attr-defined]
    assert again.bytes_fetched < 16 * 4096  # type: ignore[attr-defined]
    assert_installed(device, bundle=bundle)


class FailingAfter500Blocks(FileSlot):
    """A medium that fails once the install has written past data block 500."""

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        if 500 * 4096 <= offset < BLOCKS * 4096:
            raise DeviceError(f"slot {self.path}: write failed: Input/output error")
        super().pwrite(offset, data)


@pytest.mark.parametrize("cli", [False, True])
def test_an_interrupted_install_from_a_file_resumes_when_run_again(
    device: Device, *, cli: bool
) -> None:
    new = image_bytes(BLOCKS, seed=14)
    bundle = device.bundle(new)
    failing = Installer(device.config(), open_slot=FailingAfter500Blocks, tuning=SMALL_REGIONS)
    with FileSource(bundle) as src, pytest.raises(DeviceError, match="Input/output error"):
        failing.install(src)
    # Run again as a user would, with no delta option: the flushed blocks are kept.
    if cli:
        r = device.cli("install", str(bundle), "--json")
        assert r.returncode == 0, r.stderr
        again = json.loads(r.stdout.splitlines()[-1])
    else:
        again = install_file(device, bundle, SMALL_REGIONS).to_dict()  # type: ignore[attr-defined]
    assert again["bytes_reused"] >= 448 * 4096, again
    assert again["bytes_fetched"] <= (BLOCKS - 448 + 16) * 4096, again
    assert_installed(device)
    assert device.slot("B").read_bytes()[: len(new)] == new


class FailingOnZeros(FileSlot):
    """A medium that fails the write of the zero blocks from block 512."""

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        if offset == 512 * 4096:
            raise self._fail("write", OSError(errno.EIO, "Input/output error"))
        super().pwrite(offset, data)


@pytest.mark.parametrize("delta", [False, True])
def test_a_failed_write_of_zero_blocks_is_a_device_error_on_record(
    device: Device, *, delta: bool
) -> None:
    new = bytearray(image_bytes(BLOCKS, seed=15))
    new[512 * 4096 : 640 * 4096] = bytes(128 * 4096)  # a span of zeros, written from a buffer
    bundle = device.bundle(bytes(new))

    inst = Installer(device.config(), open_slot=FailingOnZeros, tuning=SMALL_REGIONS)
    with FileSource(bundle) as src, pytest.raises(DeviceError, match="Input/output error"):
        inst.install(src, delta=delta)
    last = StateDir(device.root / "state").last_result()
    assert last is not None and last["kind"] == "DeviceError", last
    env = fw_printenv(device)
    assert env["BOOT_ORDER"] == "A B" and env["BOOT_B_LEFT"] == "0"


def plan_paths(device: Device, bundle: Path, **kw: object) -> list[tuple[str, str | None, str]]:
    """(target, active, path) of each image of the install's plan."""
    with FileSource(bundle) as src:
        plan = Installer(device.config()).plan(src, **kw)  # type: ignore[arg-type]
    return [(image.target, image.active, image.path) for image in plan.images]


@pytest.mark.parametrize("b_holds", ["nothing", "another image"])
def test_a_fresh_install_from_a_file_takes_the_stream_path(
    tmp_path: Path, pki: keygen.DevPki, b_holds: str
) -> None:
    b_image = image_bytes(BLOCKS, seed=19) if b_holds == "another image" else None
    device = make_device(tmp_path / "device", pki, image_bytes(BLOCKS, seed=1), b_image=b_image)
    bundle = device.bundle(image_bytes(BLOCKS, seed=15))
    # Not the delta path: B does not hold this image's tree.
    assert plan_paths(device, bundle) == [("B", "A", "stream")]
    result = install_file(device, bundle)
    assert result.bytes_reused == 0  # type: ignore[attr-defined]
    assert result.bytes_fetched >= BLOCKS * 4096  # type: ignore[attr-defined]


# --- refusals: the booted slot and the environment stay byte-identical --------------------


def other_signer(tmp_path: Path) -> tuple[keygen.DevPki, signing.Signer]:
    other = keygen.make_dev_pki(tmp_path / "other-pki")
    return other, signing.load_signer(other.signer_key.read_bytes(), other.signer_cert.read_bytes())


def flip(path: Path, offset: int) -> Path:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    out = path.with_name(path.name + ".bad")
    out.write_bytes(bytes(data))
    return out


def layout(device: Device, bundle: Path) -> tuple[int, int]:
    """(hash area offset, data offset) of the bundle's image."""
    from bundle_tool.container import HEADER_SIZE, inspect_head, parse_header
    from bundle_tool.container import layout as parts

    raw = bundle.read_bytes()
    header = parse_header(raw[:HEADER_SIZE])
    manifest, _ = inspect_head(raw[: header.head_size])
    (part,), _ = parts(header, manifest)
    return part.area_offset, part.data_offset


REFUSALS: dict[str, tuple[type[Exception], str]] = {
    "wrong signature": (TrustError, "signature 1 does not match"),
    "unknown CA": (TrustError, "0 of 1 required signatures trusted"),
    "wrong compatible": (PolicyError, "this device is 'qemu-arm64-uboot'"),
    "downgrade": (PolicyError, "below this device's anti-rollback floor 5"),
    "expired": (PolicyError, "expired on"),
    "corrupt tree": (BundleError, "hash tree block 0 of level 1 does not match"),
    "corrupt leaf": (BundleError, "hash tree block 2 of level 0 does not match"),
    "corrupt data": (BundleError, "image block 333 "),
    "truncated": (BundleError, "truncated"),
    "extra bytes": (BundleError, "1 bytes the manifest does not account for"),
    "booted slot": (UsageError, "refusing to install into the booted slot A"),
}


# Found while the target is written: the blocks checked before are on it by then.
FOUND_WHILE_WRITING = {"corrupt tree", "corrupt leaf", "corrupt data"}


@pytest.mark.parametrize("b_bootable", [False, True], ids=["fresh", "bootable-b"])
@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusal_leaves_booted_slot_and_env_untouched(
    tmp_path: Path, pki: keygen.DevPki, case: str, b_bootable: bool
) -> None:
    b_image = image_bytes(BLOCKS, seed=17) if b_bootable else None
    device = make_device(tmp_path / "device", pki, image_bytes(BLOCKS, seed=1), b_image=b_image)
    good = device.bundle(image_bytes(BLOCKS, seed=6))
    kw: dict[str, object] = {}
    bundle = good
    if case == "wrong signature":
        raw = bytearray(good.read_bytes())
        from bundle_tool.container import parse_header

        h = parse_header(bytes(raw[:64]))
        raw[h.head_size - 5] ^= 0xFF  # inside the signature bytes
        bundle = tmp_path / "badsig.bundle"
        bundle.write_bytes(bytes(raw))
    elif case == "unknown CA":
        bundle = device.bundle(image_bytes(BLOCKS, 6), "o.bundle", signer=other_signer(tmp_path)[1])
    elif case == "wrong compatible":
        bundle = device.bundle(image_bytes(BLOCKS, 6), "c.bundle", compatible="other-board")
    elif case == "downgrade":
        StateDir(device.root / "state").raise_floor(5)
    elif case == "expired":
        bundle = device.bundle(image_bytes(BLOCKS, 6), "e.bundle", expires=BUILD_TIME + 1)
    elif case == "corrupt tree":  # the area: superblock, level 1 (one block), 6 leaf blocks
        bundle = flip(good, layout(device, good)[0] + 4096 + 100)
    elif case == "corrupt leaf":
        bundle = flip(good, layout(device, good)[0] + 4 * 4096 + 100)
    elif case == "corrupt data":
        bundle = flip(good, layout(device, good)[1] + 333 * 4096 + 7)
    elif case == "truncated":
        bundle = tmp_path / "t.bundle"
        bundle.write_bytes(good.read_bytes()[:-4096])
    elif case == "extra bytes":
        bundle = tmp_path / "x.bundle"
        bundle.write_bytes(good.read_bytes() + b"\0")
    elif case == "booted slot":
        kw = {"slot": "A"}
    written = case in FOUND_WHILE_WRITING

    def snapshot() -> dict[str, bytes | None]:
        files = device.snapshot(target=not written)
        if written and b_bootable:  # B was made unbootable first: one env write
            del files["env"]
        return files

    before = snapshot()
    error, message = REFUSALS[case]
    with pytest.raises(error, match=message):
        install_file(device, bundle, **kw)
    assert snapshot() == before
    env = fw_printenv(device)
    assert env["BOOT_ORDER"] == "A B" and env["BOOT_A_LEFT"] == "3"
    assert env["BOOT_B_LEFT"] == ("0" if written or not b_bootable else "3")
    last = StateDir(device.root / "state").last_result()
    assert last is not None and last["status"] == "failed"


@pytest.mark.parametrize("delta", [False, True])
def test_a_corrupt_block_from_a_file_is_never_written(device: Device, delta: bool) -> None:
    good = device.bundle(image_bytes(BLOCKS, seed=7))
    data = layout(device, good)[1]
    bad = flip(good, data + 333 * 4096 + 7)
    bad_block = bad.read_bytes()[data + 333 * 4096 : data + 334 * 4096]
    with FileSource(bad) as src, pytest.raises(BundleError, match="image block 333 "):
        Installer(device.config()).install(src, delta=delta)
    assert device.slot("B").read_bytes()[333 * 4096 : 334 * 4096] != bad_block


class RecordingSlot(FileSlot):
    """A file slot that notes each flush in `events` (the test resets the list)."""

    events: ClassVar[list[str]] = []

    def flush(self) -> None:
        super().flush()
        self.events.append("flush")


@pytest.mark.parametrize("delta", [False, True])
def test_each_flushed_region_is_read_back_past_the_page_cache(
    device: Device, monkeypatch: pytest.MonkeyPatch, delta: bool
) -> None:
    tuning = dataclasses.replace(SMALL_REGIONS, batch_groups=1)
    events = RecordingSlot.events = []
    real = os.posix_fadvise

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        events.append("drop" if advice == os.POSIX_FADV_DONTNEED else "other")
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    bundle = device.bundle(image_bytes(BLOCKS, seed=16))
    with FileSource(bundle) as src:
        Installer(device.config(), open_slot=RecordingSlot, tuning=tuning).install(src, delta=delta)
    assert_installed(device)
    assert events.count("flush") >= 3, events
    # Every flush is followed by dropping the slot's cache, before the next write
    # is made durable and before the final check.
    assert events[-1] == "drop", events
    for i, event in enumerate(events):
        if event == "flush":
            assert "drop" in events[i + 1 : i + 2], events


def test_corrupt_data_from_a_stream_is_found_before_it_is_written(device: Device) -> None:
    good = device.bundle(image_bytes(BLOCKS, seed=7))
    bad = flip(good, layout(device, good)[1] + 600 * 4096)
    before = device.snapshot()
    with bad.open("rb") as f, pytest.raises(BundleError, match="image block 600 "):
        Installer(device.config()).install(StdinSource(f))
    assert device.snapshot() == before
    # The 1 MiB span holding block 600 (blocks 512..699) never reached the slot.
    assert device.slot("B").read_bytes()[512 * 4096 : BLOCKS * 4096] == bytes(188 * 4096)


def test_a_failed_env_write_is_recorded_as_reported(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bootctl.errors import StorageError

    inst = Installer(device.config())

    def fail(*args: object, **kw: object) -> None:
        raise StorageError("cannot write uboot.env: No space left on device")

    monkeypatch.setattr(inst.control, "set_primary", fail)
    bundle = device.bundle(image_bytes(BLOCKS, seed=18))
    with FileSource(bundle) as src, pytest.raises(DeviceError, match=r"^boot environment: ") as e:
        inst.install(src)
    last = StateDir(device.root / "state").last_result()
    assert last is not None and (last["error"], last["kind"]) == (str(e.value), "DeviceError")


def test_delta_from_a_stream_is_refused_not_ignored(device: Device) -> None:
    bundle = device.bundle(image_bytes(BLOCKS, seed=8))
    before = device.snapshot()
    with bundle.open("rb") as f, pytest.raises(UsageError, match="standard input is read once"):
        Installer(device.config()).install(StdinSource(f), delta=True)
    assert device.snapshot() == before


@pytest.mark.parametrize(
    ("artifacts", "cut", "extra", "message"),
    [
        (False, 0, b"junk", "does not account for"),
        (True, 0, b"j", "does not account for"),  # after the artifacts, not the image
        (True, 10, b"", "ends early"),  # inside the artifacts
    ],
    ids=["trailing", "trailing-after-artifacts", "short-artifacts"],
)
def test_trailing_bytes_on_a_stream_are_refused(
    artifact_device: Device,
    tmp_path: Path,
    *,
    artifacts: bool,
    cut: int,
    extra: bytes,
    message: str,
) -> None:
    device = artifact_device
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"release notes\n" * 100)
    good = device.bundle(image_bytes(BLOCKS, seed=8), artifacts=[notes] if artifacts else [])
    raw = good.read_bytes()
    bad = tmp_path / "bad.bundle"
    bad.write_bytes(raw[: len(raw) - cut] + extra)
    before = device.snapshot()
    with bad.open("rb") as f, pytest.raises(BundleError, match=message):
        Installer(device.config()).install(StdinSource(f))
    assert device.snapshot()["env"] == before["env"]


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_a_bundle_with_artifacts_installs_from_any_source(
    artifact_device: Device, tmp_path: Path, source: str
) -> None:
    """Artifacts follow the images: a stream is read through them up to the signed end."""
    device = artifact_device
    kernel = tmp_path / "kernel.img"
    kernel.write_bytes(image_bytes(3, seed=40)[:10_000])
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"release notes\n")
    bundle = device.bundle(image_bytes(BLOCKS, seed=41), artifacts=[kernel, notes])
    if source == "stdin":
        with bundle.open("rb") as f:
            result = Installer(device.config()).install(StdinSource(f))
        # Read once, in order, to its end: the artifacts too.
        assert result.bytes_fetched == bundle.stat().st_size
    else:
        install_file(device, bundle)
    assert_installed(device, bundle=bundle)
    # Each where the board names: in B's boot folder.
    assert (device.boot_dir("B") / "kernel.img").read_bytes() == kernel.read_bytes()
    assert (device.boot_dir("B") / "notes.txt").read_bytes() == notes.read_bytes()


def test_bytes_fetched_of_a_file_install_is_what_the_install_read(
    artifact_device: Device, tmp_path: Path
) -> None:
    """The head, the hash area, the image and the artifacts placed: not the leaf summary,
    nor the padding before the data.

    A stream is read to its end (its file size, above); a file is read where the
    install needs it, and `bytes_fetched` says what that cost.
    """
    from bundle_tool.container import HEADER_SIZE, inspect_head, parse_header

    device = artifact_device
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"release notes\n" * 1000)
    bundle = device.bundle(image_bytes(BLOCKS, seed=42), artifacts=[notes])
    raw = bundle.read_bytes()
    manifest, _ = inspect_head(raw[: parse_header(raw[:HEADER_SIZE]).head_size])
    (image,) = manifest.images
    assert image.leaf_summary_size and image.data_padding and manifest.artifacts
    result = install_file(device, bundle, delta=False)
    unread = image.leaf_summary_size + image.data_padding
    assert result.bytes_fetched == len(raw) - unread  # type: ignore[attr-defined]


def test_floor_rises_only_after_mark_good(device: Device) -> None:
    bundle = device.bundle(image_bytes(BLOCKS, seed=9), security_version=4)
    install_file(device, bundle)
    state = StateDir(device.root / "state")
    assert state.security_floor() == 0  # installed, not yet booted and marked good
    device.boot("B")
    ctl = device.control()
    # The boot script decrements the counter before booting.
    env = ctl.env()
    ctl.store.save({**env, "BOOT_B_LEFT": "2"})
    Installer(device.config()).refresh_floor()
    assert state.security_floor() == 0
    r = device.cli("mark-good")
    assert r.returncode == 0, r.stderr
    assert state.security_floor() == 4
    assert fw_printenv(device)["BOOT_B_LEFT"] == "3"


def test_abctl_mark_good_raises_the_floor_as_updater_mark_good(device: Device) -> None:
    """A hand-typed `abctl mark-good` stores the floor too: a later fallback allows no downgrade.

    On a device with the updater's config and command, abctl hands mark-good over to
    the updater (bootctl imports nothing of it).
    """
    from bootctl.cli import main as abctl

    install_file(device, device.bundle(image_bytes(BLOCKS, seed=9), security_version=4))
    device.boot("B")
    ctl = device.control()
    ctl.store.save({**ctl.env(), "BOOT_B_LEFT": "2"})  # booted once, not yet good
    fw_env = device.root / "fw_env.config"
    fw_env.write_text(f"{device.env_file} 0x0000 0x4000\n")
    where = ["--board", str(device.board), "--env-config", str(fw_env)]
    where += ["--cmdline", str(device.root / "cmdline")]
    assert abctl([*where, "mark-good", "--device-config", str(device.config_path)]) == 0
    assert fw_printenv(device)["BOOT_B_LEFT"] == "3"
    assert StateDir(device.config().state_dir).security_floor() == 4
    # B fails later and the device falls back to A: the floor stays where B raised it.
    assert abctl([*where, "mark-bad", "B", "--force"]) == 0
    device.boot("A")
    older = device.bundle(image_bytes(BLOCKS, seed=10), "old.bundle", security_version=3)
    with pytest.raises(PolicyError, match="below this device's anti-rollback floor 4"):
        install_file(device, older)


def test_abctl_mark_good_marks_the_slot_itself_where_no_updater_runs(device: Device) -> None:
    from bootctl.cli import main as abctl

    device.boot("A")
    fw_env = device.root / "fw_env.config"
    fw_env.write_text(f"{device.env_file} 0x0000 0x4000\n")
    where = ["--board", str(device.board), "--env-config", str(fw_env)]
    where += ["--cmdline", str(device.root / "cmdline")]
    missing = device.root / "no-device.toml"
    assert abctl([*where, "mark-good", "--device-config", str(missing)]) == 0
    assert not device.config().state_dir.exists()  # the updater did not run


def test_status_shows_the_floor_in_force_after_abctl_mark_good(device: Device) -> None:
    install_file(device, device.bundle(image_bytes(BLOCKS, seed=9), security_version=4))
    device.boot("B")
    ctl = device.control()
    ctl.store.save({**ctl.env(), "BOOT_B_LEFT": "2"})  # booted once, not yet good
    ctl.mark_good()  # as `abctl mark-good` does: the updater's floor is not stored yet

    def status() -> dict[str, Any]:
        r = device.cli("status", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    assert status()["security_floor"] == 4  # what the next install enforces
    assert StateDir(device.root / "state").security_floor() == 0  # status wrote nothing
    older = device.bundle(image_bytes(BLOCKS, seed=10), "old.bundle", security_version=3)
    with pytest.raises(PolicyError, match="below this device's anti-rollback floor 4"):
        install_file(device, older)


def test_a_policy_refusal_does_not_store_the_floor(device: Device) -> None:
    """The floor in force is stored once the checks pass, never by a refused install."""
    install_file(device, device.bundle(image_bytes(BLOCKS, seed=9), security_version=4))
    device.boot("B")
    device.control().mark_good()  # as `abctl mark-good` does: the floor in force is 4
    floor_file = device.config().state_dir / "security-floor.json"
    assert not floor_file.exists()
    wrong = device.bundle(image_bytes(BLOCKS, seed=10), "wrong.bundle", compatible="other")
    with pytest.raises(PolicyError, match="this device is"):
        install_file(device, wrong)
    assert not floor_file.exists()
    install_file(
        device, device.bundle(image_bytes(BLOCKS, seed=10), "next.bundle", security_version=4)
    )
    assert StateDir(device.config().state_dir).security_floor() == 4


def test_a_record_that_cannot_be_written_leaves_the_boot_order(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slot's record comes before the switch: if it fails, the old slot still boots."""
    real = StateDir.record_slot

    def record_slot(self: StateDir, name: str, record: object) -> None:
        if record is not None:
            raise DeviceError("cannot write state file slots.json: No space left on device")
        real(self, name, record)  # type: ignore[arg-type]

    monkeypatch.setattr(StateDir, "record_slot", record_slot)
    with pytest.raises(DeviceError, match="No space left"):
        install_file(device, device.bundle(image_bytes(BLOCKS, seed=14)))
    env = fw_printenv(device)
    assert env["BOOT_ORDER"] == "A B" and env["BOOT_B_LEFT"] == "0" and not env["BOOT_B_VERITY"]
    assert StateDir(device.root / "state").last_result()["status"] == "failed"  # type: ignore[index]


def test_a_result_that_cannot_be_recorded_after_the_switch_is_a_warning(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    def record_result(self: StateDir, result: dict[str, Any]) -> None:
        raise DeviceError("cannot write state file last-install.json: No space left on device")

    monkeypatch.setattr(StateDir, "record_result", record_result)
    bundle = device.bundle(image_bytes(BLOCKS, seed=15))
    with FileSource(bundle) as src:
        installer = Installer(device.config())
        result = installer.install(src)
    assert result.slot == "B"
    assert_installed(device, "B", bundle)
    assert installer.warnings == [
        "the install stands, but its result was not recorded: cannot write state file "
        "last-install.json: No space left on device"
    ]


def test_the_running_slot_is_only_read(device: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    """Delta reads the running slot through a read-only descriptor; a missing one is not made."""
    from updater import slotdev

    opened: list[tuple[str, int]] = []
    real_open = os.open

    def recording_open(path: str, flags: int, mode: int = 0o777) -> int:
        opened.append((path, flags))
        return real_open(path, flags, mode)

    monkeypatch.setattr(slotdev.os, "open", recording_open)
    image = device.slot("A").read_bytes()[: BLOCKS * 4096]  # A's image: all of it is reused
    install_file(device, device.bundle(image), delta=True)
    running = [flags for path, flags in opened if path == str(device.slot("A"))]
    assert running, opened
    for flags in running:
        assert flags & os.O_ACCMODE == os.O_RDONLY and not flags & os.O_CREAT, oct(flags)
    assert_installed(device, "B")

    device.boot("B")  # now A is the target, and B runs; B's device disappears
    os.unlink(device.slot("B"))
    install_file(device, device.bundle(image, "again.bundle"), delta=True)
    assert not device.slot("B").exists()
    assert_installed(device, "A")


def grub_editenv_list(path: Path) -> dict[str, str]:
    out = subprocess.run(
        ["grub-editenv", str(path), "list"], check=True, capture_output=True, text=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def test_install_on_a_grub_board(tmp_path: Path, pki: keygen.DevPki) -> None:
    """The same install with a GRUB environment block, read back by grub-editenv."""
    device = make_device(tmp_path / "dev", pki, image_bytes(BLOCKS, seed=1), board=GRUB_BOARD)
    grubenv = device.root / "grubenv"
    assert device.env_files() == [grubenv]
    assert grub_editenv_list(grubenv)["BOOT_ORDER"] == "A B"
    before = device.snapshot(target=True)
    wrong = device.bundle(image_bytes(BLOCKS, seed=2), "arm.bundle", compatible="qemu-arm64-uboot")
    with pytest.raises(PolicyError, match="this device is 'qemu-x86_64-grub'"):
        install_file(device, wrong)
    assert device.snapshot(target=True) == before
    bundle = device.bundle(image_bytes(BLOCKS, seed=2))
    install_file(device, bundle)
    env = grub_editenv_list(grubenv)
    assert env["BOOT_ORDER"] == "B A" and env["BOOT_B_LEFT"] == "3", env
    v = SlotVerity.from_env(env["BOOT_B_VERITY"])
    assert v.root_hash == manifest_root_hash(bundle)
    result = veritysetup_verify(device.slot("B"), v)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("board", [BOARD, GRUB_BOARD], ids=["uboot", "grub"])
def test_install_through_a_linked_environment_file(
    tmp_path: Path, pki: keygen.DevPki, board: Path
) -> None:
    """The device config names a link to the environment on the boot partition: the
    install writes that file, and the link stays (a regular file replaced the link,
    and the file on the boot partition kept the old environment)."""
    device = make_device(tmp_path / "dev", pki, image_bytes(BLOCKS, seed=1), board=board)
    (link,) = device.env_files()
    boot_partition = device.root / "bootpart"
    boot_partition.mkdir()
    link.replace(boot_partition / link.name)
    link.symlink_to(Path("bootpart") / link.name)
    bundle = device.bundle(image_bytes(BLOCKS, seed=2))
    install_file(device, bundle)
    assert link.is_symlink(), f"{link} is no longer a link"
    assert os.readlink(link) == str(Path("bootpart") / link.name)
    assert sorted(os.listdir(boot_partition)) == [link.name]
    if board == GRUB_BOARD:
        assert grub_editenv_list(link)["BOOT_ORDER"] == "B A"
    else:
        assert_installed(device, bundle=bundle)  # fw_printenv, through the link


def test_status_with_an_unknown_booted_slot_shows_the_problem(device: Device) -> None:
    device.root.joinpath("cmdline").write_text("root=/dev/dm-0 abupdate.slot=C\n")
    r = device.cli("status", "--json")
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert status["booted"] is None and status["security_floor"] == 0
    assert any("'C'" in problem for problem in status["problems"]), status["problems"]


class LyingMedium(FileSlot):
    """A slot that silently stores one bit wrong, as a failing flash chip might."""

    bad_offset = 100 * 4096

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        data = bytearray(data)
        if offset <= self.bad_offset < offset + len(data):
            data[self.bad_offset - offset] ^= 0x10
        super().pwrite(offset, bytes(data))


class DroppingMedium(LyingMedium):
    """A slot that silently loses the write of one block (the old bytes stay)."""

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        data = bytearray(data)
        if offset <= self.bad_offset < offset + len(data):
            at = self.bad_offset - offset
            data[at : at + 4096] = self.pread(self.bad_offset, 4096).ljust(4096, b"\0")
        FileSlot.pwrite(self, offset, bytes(data))


class MisplacingMedium(LyingMedium):
    """A slot that stores one block one block further on (a wrong address)."""

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        data = bytearray(data)
        FileSlot.pwrite(self, offset, bytes(data))
        if offset <= self.bad_offset < offset + len(data):
            at = self.bad_offset - offset
            FileSlot.pwrite(self, self.bad_offset + 4096, bytes(data[at : at + 4096]))
            FileSlot.pwrite(self, self.bad_offset, b"\xa5" * 4096)


class LyingAboutTheTree(LyingMedium):
    """The wrong bit lands in the hash area, in its third leaf block.

    The area is the superblock, one block of level 1, then six leaf blocks.
    """

    bad_offset = BLOCKS * 4096 + 5 * 4096 - 7


@pytest.mark.parametrize(
    ("medium", "flush_every", "delta", "reason"),
    [
        # Stream path, one region: the read-back after the last flush finds it.
        (LyingMedium, 64 << 20, False, r"\(block 100\)"),
        # Stream path, a flush every 64 blocks: the region holding block 100 is read
        # back by the child while later regions are written.
        (LyingMedium, 64 * 4096, False, r"\(block 100\)"),
        (LyingAboutTheTree, 64 * 4096, False, "hash tree"),
        # Random-access (delta) path, one region and several.
        (LyingMedium, 64 << 20, True, r"\(block 100\)"),
        (LyingMedium, 64 * 4096, True, r"\(block 100\)"),
        # A write dropped or stored one block further on, in both paths.
        (DroppingMedium, 64 * 4096, False, r"\(block 100\)"),
        (DroppingMedium, 64 << 20, True, r"\(block 100\)"),
        (MisplacingMedium, 64 * 4096, False, r"\(block 100\)"),
        (MisplacingMedium, 64 * 4096, True, r"\(block 100\)"),
        (LyingAboutTheTree, 64 << 20, True, "hash tree"),
    ],
)
def test_read_back_catches_a_failing_medium(
    device: Device,
    monkeypatch: pytest.MonkeyPatch,
    *,
    medium: type[FileSlot],
    flush_every: int,
    delta: bool,
    reason: str,
) -> None:
    from updater import readback

    # Delta batches of 256 blocks.
    tuning = InstallTuning(flush_every=flush_every, batch_groups=2)
    flushed = spy(monkeypatch, readback.RegionReadBack, "flushed")
    bundle = device.bundle(image_bytes(BLOCKS, seed=11))
    inst = Installer(device.config(), open_slot=medium, tuning=tuning)
    with FileSource(bundle) as src, pytest.raises(DeviceError, match="does not read back") as e:
        inst.install(src, delta=delta)
    assert re.search(reason, str(e.value)), e.value
    regions = [upto_block for _, upto_block in flushed]
    if medium is LyingAboutTheTree:
        # A leaf block is read from the medium when the first block it covers is
        # checked (on the stream path, which looks ahead, before any region is flushed).
        assert delta or not regions, regions
    else:
        # With small flushes a region was read back before the end of the data.
        assert regions and (regions[0] < BLOCKS) == (flush_every < 64 << 20), regions
    env = fw_printenv(device)
    assert env["BOOT_ORDER"] == "A B" and env["BOOT_B_LEFT"] == "0" and not env["BOOT_B_VERITY"]


class RenamedUnderUs(LyingMedium):
    """A lying medium whose name is re-pointed, at each flush, at a copy holding what
    was meant to be written: the slot file itself keeps the wrong bit."""

    def flush(self) -> None:
        super().flush()
        fd = self._fd  # the slot file, which the name no longer points at after the first
        good = bytearray(os.pread(fd, os.fstat(fd).st_size, 0))
        if len(good) > self.bad_offset:
            good[self.bad_offset] ^= 0x10  # the copy as the install meant it
        Path(self.path + ".good").write_bytes(good)
        os.replace(self.path + ".good", self.path)  # the open file is now unnamed


@pytest.mark.parametrize("delta", [False, True])
def test_read_back_reads_the_file_written_not_what_its_name_points_at(
    device: Device, delta: bool
) -> None:
    """The read-back children read through the slot's open descriptor: a name
    re-pointed after the slot was opened does not change what is checked."""
    bundle = device.bundle(image_bytes(BLOCKS, seed=17))
    inst = Installer(device.config(), open_slot=RenamedUnderUs)
    with FileSource(bundle) as src, pytest.raises(DeviceError, match="does not read back") as e:
        inst.install(src, delta=delta)
    assert re.search(r"\(block 100\)", str(e.value)), e.value
    # What the name points at now is the image as signed: read by name, it would pass.
    data = Path(device.slot("B")).read_bytes()[: BLOCKS * 4096]
    assert data == image_bytes(BLOCKS, seed=17)
    env = fw_printenv(device)
    assert env["BOOT_ORDER"] == "A B" and env["BOOT_B_LEFT"] == "0" and not env["BOOT_B_VERITY"]


class ShrinkingMedium(FileSlot):
    """A slot that loses all but its first 50 blocks once flushed (a medium swapped under us)."""

    def flush(self) -> None:
        super().flush()
        os.truncate(self.path, 50 * 4096)


@pytest.mark.parametrize("delta", [False, True])
def test_read_back_of_a_slot_that_shrank_is_a_device_error(device: Device, delta: bool) -> None:
    bundle = device.bundle(image_bytes(BLOCKS, seed=13))
    inst = Installer(device.config(), open_slot=ShrinkingMedium)
    with FileSource(bundle) as src, pytest.raises(DeviceError, match="back failed") as e:
        inst.install(src, delta=delta)
    # The read-back child of the region past the slot's end names it.
    end = re.search(r"ends before block (\d+)$", str(e.value))
    assert end and 0 < int(end[1]) <= BLOCKS, e.value
    assert os.path.getsize(device.slot("B")) < int(end[1]) * 4096
    env = fw_printenv(device)
    assert env["BOOT_ORDER"] == "A B" and env["BOOT_B_LEFT"] == "0" and not env["BOOT_B_VERITY"]
    assert StateDir(device.root / "state").last_result()["error"] == str(e.value)  # type: ignore[index]


def die_of_sigbus(*args: object) -> bytes:
    """Stands in for the read-back check: ends as a failed read of a mapped page would."""
    import faulthandler
    import signal

    faulthandler.disable()  # pytest's, inherited: not a crash to trace
    os.kill(os.getpid(), signal.SIGBUS)
    return b""  # pragma: no cover - not reached


def test_a_read_back_process_killed_by_a_medium_error_is_a_device_error(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    from updater import readback

    monkeypatch.setattr(readback, "_check_region", die_of_sigbus)
    real = readback.RegionReadBack.flushed

    def flushed(self: readback.RegionReadBack, upto_block: int) -> None:
        if upto_block > 64:  # the child died on the first region: wait for it (not reaping)
            os.waitid(os.P_PID, self.pids[0], os.WEXITED | os.WNOWAIT)
        real(self, upto_block)

    monkeypatch.setattr(readback.RegionReadBack, "flushed", flushed)
    bundle = device.bundle(image_bytes(BLOCKS, seed=20))
    with FileSource(bundle) as src, pytest.raises(DeviceError) as e:
        Installer(device.config(), tuning=SMALL_REGIONS).install(src)
    assert re.fullmatch(
        r"reading slot \S+slot-B\.img back failed: .*killed by SIGBUS: a file it had mapped "
        r"could not be read\)?",
        str(e.value),
    ), e.value
    assert StateDir(device.root / "state").last_result()["kind"] == "DeviceError"  # type: ignore[index]


def test_read_back_children_share_a_region_in_whole_extents(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each child gets whole extents as written, the two halves of the region, every block."""
    from bundle_tool import forked
    from updater import writelog

    blocks = 2048 + 5  # one region (no flush before the end)
    sends = spy(monkeypatch, forked.Worker, "send")
    install_file(device, device.bundle(image_bytes(blocks, seed=21)))
    assert_installed(device)
    # The hashing child's requests are 16 bytes; the read-back's whole extents of 32.
    parts = [
        list(writelog.decode_extents(r))
        for _, r in sends
        if r and len(r) % writelog.EXTENT_SIZE == 0
    ]
    assert len(parts) == 2, parts
    extents = [e for part in parts for e in part]
    assert [e.first for e in extents] == list(range(0, blocks, 256))  # the stream's spans
    assert sum(e.count for e in extents) == blocks
    assert [sum(e.count for e in part) for part in parts] == [1280, blocks - 1280]


def test_region_read_back_reports_early(device: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    """A region that does not read back stops the install before the rest is written."""
    from updater import readback

    flushes: list[int] = []
    real = readback.RegionReadBack.flushed

    def flushed(self: readback.RegionReadBack, upto_block: int) -> None:
        flushes.append(upto_block)
        if upto_block > 128:
            time.sleep(0.2)  # give the child time to answer for the earlier regions
        real(self, upto_block)

    monkeypatch.setattr(readback.RegionReadBack, "flushed", flushed)
    bundle = device.bundle(image_bytes(BLOCKS, seed=12))
    inst = Installer(device.config(), open_slot=LyingMedium, tuning=SMALL_REGIONS)
    with FileSource(bundle) as src, pytest.raises(DeviceError, match=r"\(block 100\)"):
        inst.install(src)
    # Block 100 is in the region flushed at block 128; its answer came back while
    # later regions were written, before the end (block 700).
    assert flushes[0] == 64 and flushes[-1] < BLOCKS, flushes


class RecordingSource(FileSource):
    """A bundle file that notes the spans of each `read_spans` call."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.span_calls: list[list[tuple[int, int]]] = []

    def read_spans(self, spans: Sequence[tuple[int, int]]) -> Iterator[bytes]:
        self.span_calls.append(list(spans))
        return super().read_spans(spans)


def delta_reads(
    device: Device, bundle: Path, monkeypatch: pytest.MonkeyPatch, tuning: InstallTuning
) -> tuple[object, list[int], list[int]]:
    """Install with delta; the result, the groups read from slot A, the blocks of each
    request for data (one a batch, as nothing is kept or copied)."""
    from updater import slotdev

    running = str(device.slot("A"))
    fds: set[int] = set()
    groups: list[int] = []
    real_open, real_pread = os.open, os.pread

    def recording_open(path: str, flags: int, mode: int = 0o777) -> int:
        fd = real_open(path, flags, mode)
        if path == running:
            fds.add(fd)
        return fd

    def recording_pread(fd: int, length: int, offset: int) -> bytes:
        if fd in fds:
            groups.append(offset // (128 * 4096))
        return real_pread(fd, length, offset)

    monkeypatch.setattr(slotdev.os, "open", recording_open)
    monkeypatch.setattr(slotdev.os, "pread", recording_pread)
    data_offset = layout(device, bundle)[1]
    with RecordingSource(bundle) as src:
        result = Installer(device.config(), tuning=tuning).install(src, delta=True)
    batches = [
        sum(n for _, n in spans) // 4096
        for spans in src.span_calls
        if spans and spans[0][0] >= data_offset
    ]
    return result, groups, batches


def test_delta_stops_hashing_an_unrelated_active_slot(
    tmp_path: Path, pki: keygen.DevPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = 128 * 96  # 96 leaf groups
    dev = make_device(tmp_path / "dev", pki, image_bytes(blocks, seed=1))
    unrelated = dev.bundle(image_bytes(blocks, seed=2), "unrelated.bundle")
    result, probes, batches = delta_reads(dev, unrelated, monkeypatch, InstallTuning())
    assert result.bytes_reused == 0  # type: ignore[attr-defined]
    # 32 groups are probed before the active slot counts as cold, then one in 32.
    assert probes == [*range(32), 32, 64]
    # Once cold, batches grow eightfold (fewer, longer requests).
    assert batches == [16 * 128, 16 * 128, 64 * 128]
    assert_installed(dev)


def test_delta_counts_a_short_active_slot_as_cold(
    tmp_path: Path, pki: keygen.DevPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The running slot is a plain file of one leaf group: beyond it, it holds nothing.
    dev = make_device(tmp_path / "dev", pki, image_bytes(128, seed=1))
    bundle = dev.bundle(image_bytes(128 * 96, seed=2))
    result, _, batches = delta_reads(dev, bundle, monkeypatch, InstallTuning())
    assert result.bytes_reused == 0  # type: ignore[attr-defined]
    assert batches == [16 * 128, 16 * 128, 64 * 128]
    assert_installed(dev)


def test_delta_probes_again_once_a_cold_active_slot_matches(
    tmp_path: Path, pki: keygen.DevPki
) -> None:
    # Cold after 4 groups; then batches of 8.
    tuning = InstallTuning(batch_groups=1, cold_groups=4)
    groups = 40
    old = image_bytes(groups * 128, seed=1)
    dev = make_device(tmp_path / "dev", pki, old)
    head = 6 * 128 * 4096  # the first 6 groups differ, the rest is the running image
    new = image_bytes(6 * 128, seed=2) + old[head:]
    result = install_file(dev, dev.bundle(new, "partly.bundle"), tuning, delta=True)
    # Groups 4..11 form one cold batch probing groups 4 and 8. Group 8 matches, so
    # 9..11 are probed (and copied) too; only 6 and 7 are fetched though unchanged.
    assert result.bytes_reused == (groups - 8) * 128 * 4096  # type: ignore[attr-defined]
    assert_installed(dev)


def test_no_read_back_process_is_a_device_error(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    def no_fork() -> int:
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    monkeypatch.setattr(os, "fork", no_fork)
    bundle = device.bundle(image_bytes(BLOCKS, seed=13))
    with pytest.raises(DeviceError, match="cannot start the read-back process"):
        install_file(device, bundle)
    env = fw_printenv(device)
    assert env["BOOT_ORDER"] == "A B" and env["BOOT_B_LEFT"] == "0" and not env["BOOT_B_VERITY"]


@pytest.mark.parametrize("delta", [False, True], ids=["stream", "delta"])
def test_blocks_are_hashed_by_a_child_and_its_death_costs_nothing(
    device: Device, monkeypatch: pytest.MonkeyPatch, delta: bool
) -> None:
    import signal

    from updater.hashing import SpanDigests
    from updater.install import Progress

    made = spy(monkeypatch, SpanDigests, "__init__")  # (self, salt, span_bytes, slots)
    bundle = device.bundle(image_bytes(BLOCKS, seed=14))
    seen: list[bool] = []

    def progress(p: Progress) -> None:
        if p.phase == "data":
            hasher: SpanDigests = made[0][0]
            seen.append(hasher.pid is not None)
            if hasher.pid is not None and p.done >= 256 * 4096:  # after the first span
                os.kill(hasher.pid, signal.SIGKILL)

    # A delta progress report per leaf group.
    installer = Installer(device.config(), progress=progress, tuning=InstallTuning(batch_groups=1))
    with FileSource(bundle) as src:
        installer.install(src, delta=delta)
    assert seen[0] and not seen[-1]  # the child hashed, then this process took over
    assert len(made) == 1 and made[0][0].pid is None  # stopped with the install
    assert_installed(device)


def test_a_switch_written_but_not_flushed_is_an_install_with_a_warning(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment file is replaced, then its directory's fsync fails: the switch
    stands (the next boot takes B) and the install says so, rather than failing."""
    from bootctl import atomicfile
    from bootctl.control import SlotControl

    real_set_primary, real_fsync_dir = SlotControl.set_primary, atomicfile._fsync_dir

    def eio(directory: Path) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    def set_primary(self: SlotControl, *args: Any, **kwargs: Any) -> None:
        monkeypatch.setattr(atomicfile, "_fsync_dir", eio)
        try:
            real_set_primary(self, *args, **kwargs)
        finally:
            monkeypatch.setattr(atomicfile, "_fsync_dir", real_fsync_dir)

    monkeypatch.setattr(SlotControl, "set_primary", set_primary)
    bundle = device.bundle(image_bytes(BLOCKS, seed=19))
    inst = Installer(device.config())
    with FileSource(bundle) as src:
        result = inst.install(src)
    assert result.slot == "B"
    assert len(inst.warnings) == 1, inst.warnings
    assert "may not survive a power cut" in inst.warnings[0]
    assert "Input/output error" in inst.warnings[0]
    assert_installed(device, bundle=bundle)
    assert StateDir(device.root / "state").last_result()["status"] == "installed"  # type: ignore[index]
