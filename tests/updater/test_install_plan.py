"""The installer's decisions as values: the install plan, the delta batch plan, the floor."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootctl.board import load_board
from bootctl.state import SlotVerity, default_env, parse_state, set_primary
from bundle_tool import verity
from bundle_tool.container import Header, VerifiedHead, layout
from bundle_tool.manifest import Artifact, Image, Manifest, VerityInfo
from tests.helpers.boards import fit_board
from tests.updater.device import BOARD, Device, image_bytes
from updater import deltawrite, floor, installplan
from updater.deltawrite import GroupDigests, plan_batch
from updater.errors import DeviceError, RefusedError, UsageError
from updater.filesource import FileSource, StdinSource
from updater.install import Installer, InstallTuning
from updater.statedir import SlotRecord
from updater.zeroblocks import ZeroBlocks

BLOCKS = 700
DIGEST = 32


def digests(seed: int, count: int) -> bytes:
    return random.Random(seed).randbytes(count * DIGEST)


def group(j: int, leaf: bytes, target: bytes | None, active: bytes | None) -> GroupDigests:
    count = len(leaf) // DIGEST
    return GroupDigests(j, j * 128, count, deltawrite.pack_leaf(leaf), target, active)


# --- the delta batch plan -------------------------------------------------------------------


def test_a_batch_plan_keeps_copies_and_fetches_by_digest() -> None:
    want = digests(1, 128)
    other = digests(2, 128)
    # Group 0: the target holds it all. Group 1: the target holds blocks 0..9, the
    # running slot 10..99, neither the rest. Group 2 (3 blocks): nothing was read.
    on_target = want[: 10 * DIGEST] + other[10 * DIGEST :]
    on_active = other[:10] + want[10 : 100 * DIGEST] + other[100 * DIGEST :]
    plan = plan_batch(
        [
            group(0, want, want, None),
            group(1, want, on_target, on_active),
            group(2, want[: 3 * DIGEST], None, None),
        ]
    )
    assert plan.kept == 128 + 10
    assert plan.copy == tuple(range(128 + 10, 128 + 100))
    assert plan.fetch == (*range(128 + 100, 256), 256, 257, 258)
    assert plan.copied_groups == {1}


def test_the_target_wins_over_the_running_slot() -> None:
    want = digests(3, 128)
    plan = plan_batch([group(5, want, want, want)])
    assert (plan.kept, plan.copy, plan.fetch, plan.copied_groups) == (128, (), (), frozenset())


def test_zero_blocks_are_written_not_fetched_nor_copied() -> None:
    zero = ZeroBlocks.for_salt(b"salt")
    assert zero.digest == hashlib.sha256(b"salt" + bytes(4096)).digest()
    want = bytearray(digests(4, 128))
    for i in (0, 1, 2, 50, 127):
        want[i * DIGEST : (i + 1) * DIGEST] = zero.digest
    want = bytes(want)
    # Group 0, fresh: its zero blocks are written. Group 1: the target holds block 1
    # (kept); the running slot holds everything (zero blocks are not copied).
    on_target = digests(5, 1) + want[DIGEST : 2 * DIGEST] + digests(6, 126)
    plan = plan_batch([group(0, want, None, None), group(1, want, on_target, want)], zero)
    assert plan.zero == (0, 1, 2, 50, 127, 128, 130, 178, 255)
    assert plan.kept == 1
    assert set(plan.fetch) == set(range(128)) - {0, 1, 2, 50, 127}
    assert set(plan.copy) == set(range(128, 256)) - {128, 129, 130, 178, 255}
    assert plan.copied_groups == plan.warm_groups == {1}
    # Group 2: the running slot holds its zero blocks only (free space in both images):
    # nothing to copy, yet the running slot is related to the image (warm).
    only_zeros = bytearray(digests(7, 128))
    for i in (0, 1, 2, 50, 127):
        only_zeros[i * DIGEST : (i + 1) * DIGEST] = zero.digest
    plan = plan_batch([group(2, want, None, bytes(only_zeros))], zero)
    assert (plan.copy, plan.copied_groups, plan.warm_groups) == ((), frozenset(), {2})
    # Without the zero block's digest, they are fetched like any other.
    assert plan_batch([group(0, want, None, None)]).fetch == tuple(range(128))


def test_the_leaf_block_of_a_group_of_zero_blocks() -> None:
    zero = ZeroBlocks.for_salt(b"")
    assert zero.leaf(3) == zero.digest * 3 + bytes(4096 - 96)
    assert zero.zeros(zero.leaf(3), 4) == [0, 1, 2]


@settings(deadline=None)  # a shared machine can be slow, not wrong
@given(
    st.lists(
        st.tuples(st.integers(1, 128), st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=6
    ),
    st.randoms(use_true_random=False),
)
def test_every_block_of_a_batch_is_planned_once(
    shapes: list[tuple[int, int, int]], rng: random.Random
) -> None:
    zero = ZeroBlocks.for_salt(b"s")
    groups = []
    for j, (count, t_kind, a_kind) in enumerate(shapes):
        want = b"".join(
            zero.digest if rng.random() < 0.2 else rng.randbytes(DIGEST) for _ in range(count)
        )

        def holding(kind: int, want: bytes = want, count: int = count) -> bytes | None:
            # 0: not read; 1: random blocks; 2: each block right or wrong at random.
            if kind == 0:
                return None
            return b"".join(
                want[i * DIGEST : (i + 1) * DIGEST]
                if kind == 2 and rng.random() < 0.5
                else rng.randbytes(DIGEST)
                for i in range(count)
            )

        groups.append(group(j, want, holding(t_kind), holding(a_kind)))
    plan = plan_batch(groups, zero)
    blocks = [b for g in groups for b in range(g.first, g.first + g.count)]
    assert plan.kept + len(plan.copy) + len(plan.fetch) + len(plan.zero) == len(blocks)
    assert set(plan.copy) | set(plan.fetch) | set(plan.zero) <= set(blocks)
    assert not set(plan.copy) & set(plan.fetch)
    assert not set(plan.zero) & (set(plan.copy) | set(plan.fetch))
    for b in plan.zero:  # zeros only where the signed digest is a zero block's
        g = groups[b // 128]
        assert zero.is_zero(g.leaf, b - g.first)
    for b in plan.copy:  # a block is copied only where the running slot holds its digest
        g = groups[b // 128]
        i = b - g.first
        assert g.active is not None
        assert g.active[i * DIGEST : (i + 1) * DIGEST] == g.leaf[i * DIGEST : (i + 1) * DIGEST]
    assert plan.copied_groups == {b // 128 for b in plan.copy}


def test_a_running_slot_that_holds_nothing_cools_and_batches_grow() -> None:
    tuning = InstallTuning()  # cold after 32 groups, then one probe in 32, batches of 8 x 16
    assert [deltawrite.probes(tuning, 31, j) for j in (33, 64)] == [True, True]
    assert [deltawrite.probes(tuning, 32, j) for j in (32, 33, 63, 64)] == [
        True,
        False,
        False,
        True,
    ]
    assert deltawrite.batch_groups(tuning, 31) == 16
    assert deltawrite.batch_groups(tuning, 32) == 128
    assert deltawrite.cooled(0, range(32), set()) == 32
    # A probe that copied something warms up again; the misses after it count anew.
    assert deltawrite.cooled(40, [64, 96, 128], {96}) == 1


# --- tuning ---------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["span_blocks", "flush_every", "cold_groups", "index_cells"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_tuning_refuses_what_is_not_a_positive_integer(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"install tuning {field} must be a positive integer"):
        InstallTuning(**{field: value})  # type: ignore[arg-type]


# --- choosing the target and the path ------------------------------------------------------


def test_the_target_is_the_slot_not_booted() -> None:
    board = load_board(BOARD)
    assert installplan.choose_target(board, "rootfs", None, "A") == ("B", "A")
    assert installplan.choose_target(board, "rootfs", "A", "B") == ("A", "B")
    assert installplan.choose_target(board, "rootfs", "B", None) == ("B", None)
    with pytest.raises(UsageError, match="refusing to install into the booted slot A"):
        installplan.choose_target(board, "rootfs", "A", "A")
    with pytest.raises(UsageError, match="slot C is not a rootfs slot"):
        installplan.choose_target(board, "rootfs", "C", "A")
    with pytest.raises(RefusedError, match="has no slot of class appfs"):
        installplan.choose_target(board, "appfs", None, "A")
    with pytest.raises(DeviceError, match="name the target slot with --slot"):
        installplan.choose_target(board, "rootfs", None, None)


def test_the_path_is_delta_where_reuse_pays() -> None:
    asked: list[bool] = []

    def resumable() -> bool:
        asked.append(True)
        return True

    def path(delta: bool | None, random_access: bool, remote: bool) -> str:
        return installplan.choose_path(
            delta, random_access=random_access, remote=remote, resumable=resumable
        )

    assert path(None, True, True) == "delta"  # https
    assert path(None, False, False) == "stream"  # standard input
    assert path(False, True, True) == "stream"
    assert path(True, True, False) == "delta"
    assert not asked  # the target is read only where the answer matters
    assert path(None, True, False) == "delta"  # a file, onto a target holding its tree
    assert asked == [True]


def test_delta_from_a_stream_is_refused() -> None:
    installplan.refuse_delta_from_a_stream(None, random_access=False)
    installplan.refuse_delta_from_a_stream(True, random_access=True)
    with pytest.raises(UsageError, match="standard input is read once"):
        installplan.refuse_delta_from_a_stream(True, random_access=False)


def test_planning_an_install_writes_nothing(device: Device) -> None:
    bundle = device.bundle(image_bytes(BLOCKS, seed=2))
    before = device.snapshot(target=True)
    with FileSource(bundle) as src:
        plan = Installer(device.config()).plan(src)
    assert device.snapshot(target=True) == before
    assert not (device.config().state_dir / "last-install.json").exists()
    (image,) = plan.images
    assert (image.target, image.active, image.path, image.index_blocks) == ("B", "A", "stream", 0)
    assert image.device == str(device.slot("B")) and image.active_device is None
    assert image.needed == BLOCKS * 4096 + image.image.verity.tree_size
    assert plan.head.manifest.version == "2.0.0"
    with FileSource(bundle) as src:
        assert Installer(device.config()).plan(src, slot="B", delta=True).images[0].path == "delta"
    with bundle.open("rb") as f:
        assert Installer(device.config()).plan(StdinSource(f)).images[0].path == "stream"


def test_a_file_resumes_on_the_delta_path_once_the_target_holds_its_tree(device: Device) -> None:
    bundle = device.bundle(image_bytes(BLOCKS, seed=3))
    with FileSource(bundle) as src:
        Installer(device.config()).install(src)
    with FileSource(bundle) as src:
        (image,) = Installer(device.config()).plan(src).images
    assert (image.target, image.path, image.active_device) == ("B", "delta", str(device.slot("A")))


# --- the anti-rollback floor ----------------------------------------------------------------

NAMES = ("A", "B")
ROOT = "ab" * 32
B_VERITY = SlotVerity(ROOT, "cd" * 4, 10)


def record(security_version: int, root: str = ROOT) -> SlotRecord:
    return SlotRecord("2.0.0", security_version, "qemu-arm64-uboot", root, 0)


def booted_b(tries: int = 3) -> dict[str, str]:
    env = set_primary(default_env(NAMES, 3), "B", B_VERITY, NAMES, 3)
    return {**env, "BOOT_B_LEFT": str(tries)}


def test_the_floor_rises_to_a_good_booted_slot() -> None:
    st = parse_state(booted_b(), NAMES)
    assert floor.floor_in_force(2, {"B": record(5)}, st, "B", 3) == 5
    assert floor.floor_in_force(7, {"B": record(5)}, st, "B", 3) == 7  # never lowered


@pytest.mark.parametrize(
    ("why", "env", "booted", "records"),
    [
        ("not booted", booted_b(), "A", {"B": record(5)}),
        ("booted slot unknown", booted_b(), None, {"B": record(5)}),
        ("not yet marked good", booted_b(tries=2), "B", {"B": record(5)}),
        ("not primary", {**booted_b(), "BOOT_ORDER": "A B"}, "B", {"B": record(5)}),
        ("record of another image", booted_b(), "B", {"B": record(5, root="12" * 32)}),
        ("no record", booted_b(), "B", {}),
    ],
)
def test_the_floor_stays_unless_the_booted_slot_is_good_and_confirmed(
    why: str, env: dict[str, str], booted: str | None, records: dict[str, SlotRecord]
) -> None:
    assert floor.floor_in_force(2, records, parse_state(env, NAMES), booted, 3) == 2, why


def test_only_records_the_environment_confirms_count() -> None:
    st = parse_state(booted_b(), NAMES)
    records = {"A": record(1), "B": record(5), "C": record(9)}
    assert floor.confirmed(records, st) == {"B": record(5)}


# --- slot groups: the files of the target's boot folder -------------------------------------


def head_of(images: list[Image], artifacts: Sequence[Artifact] = ()) -> VerifiedHead:
    """A verified head as `read_head` gives it, for a manifest that was never signed."""
    manifest = Manifest("qemu-arm64-uboot", "2.0.0", 0, 0, tuple(images), tuple(artifacts))
    raw = manifest.to_bytes()
    header = Header(len(raw), 8, manifest.payload_size)
    parts, arts = layout(header, manifest)
    return VerifiedHead(header, manifest, raw, (), parts, arts)


def image_of(slot_class: str, blocks: int, file_size: int | None = None) -> Image:
    tree = verity.Geometry.for_blocks(blocks).area_size
    info = VerityInfo(bytes(32), bytes(32), blocks, tree)
    return Image(slot_class, blocks * 4096, bytes(32), info, file_size=file_size)


def test_a_group_plan_puts_each_file_in_the_target_boot_folder(tmp_path: Path) -> None:
    board = load_board(fit_board(tmp_path / "b.toml", {"notes.txt": "doc/notes.txt"}))
    notes = Artifact("notes.txt", 14, bytes(32))
    head = head_of([image_of("boot", 3, 9000), image_of("rootfs", 40)], [notes])
    boot, rootfs = head.images
    assert installplan.block_image(board, head) == rootfs
    folder = Path("/boot/slot-B")
    assert installplan.plan_files(board, head, folder) == (
        installplan.FilePlan(folder, "boot.itb", image=boot),
        installplan.FilePlan(folder / "doc", "notes.txt", artifact=head.artifacts[0]),
    )
    plain = load_board(BOARD)  # boot.chain "script": no boot files
    assert installplan.plan_files(plain, head_of([image_of("rootfs", 4)]), folder) == ()


BOOT = image_of("boot", 2, 5000)


@pytest.mark.parametrize(
    ("images", "artifacts", "message"),
    [
        ([image_of("rootfs", 4), image_of("appfs", 2)], [], "no slot or boot file of class appfs"),
        ([image_of("rootfs", 4, 4000), BOOT], [], "a slot device takes whole 4096-byte blocks"),
        ([image_of("boot", 2, 5000)], [], "holds 0 images for a slot device"),
        ([image_of("rootfs", 4)], [], "no image of class boot: .* from its boot.itb"),
        ([image_of("rootfs", 4), BOOT], [Artifact("x.bin", 1, bytes(32))], "x.bin: .* no place"),
    ],
    ids=["unknown-class", "rootfs-file", "no-rootfs", "no-boot-image", "artifact-nowhere"],
)
def test_what_has_no_place_in_the_group_is_refused(
    tmp_path: Path, images: list[Image], artifacts: list[Artifact], message: str
) -> None:
    board = load_board(fit_board(tmp_path / "b.toml"))
    with pytest.raises(RefusedError, match=message):
        installplan.block_image(board, head_of(images, artifacts))
