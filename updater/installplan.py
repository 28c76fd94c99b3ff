"""An install's plan: which images go to which slots, and how, decided before anything is written.

`Installer.plan` gathers the facts (the verified head, the booted slot, whether
the target already holds an image's tree) and the functions here decide; the
plan is a value the installer then carries out step by step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bootctl.board import BoardConfig
from bundle_tool.container import ArtifactLayout, ImageLayout, VerifiedHead
from bundle_tool.manifest import Image

from .errors import DeviceError, RefusedError, UsageError

#: "stream": the bundle is read once, in order. "delta": blocks the target or the
#: running slot hold are kept or copied, the rest is fetched (random access).
WritePath = Literal["stream", "delta"]


@dataclass(frozen=True)
class ImagePlan:
    """What happens to one image of the bundle.

    Attributes:
        part: where the image lies in the bundle.
        target: the slot it is written to.
        device: the target slot's device.
        active: the booted slot of the same class, if any.
        active_device: the device the delta path copies blocks from (read only),
            or None (the stream path, or no booted slot of the class).
        path: how it is written.
        index_blocks: blocks of the running slot to index to find blocks that
            moved (`find_moved_blocks`); 0 for none.
    """

    part: ImageLayout
    target: str
    device: str
    active: str | None
    active_device: str | None
    path: WritePath
    index_blocks: int = 0

    @property
    def image(self) -> Image:
        return self.part.image

    @property
    def needed(self) -> int:
        """Bytes of the target the image and its hash tree take."""
        return self.image.size + self.image.verity.tree_size


@dataclass(frozen=True)
class FilePlan:
    """A file of the target slot group's boot folder: a file image or an artifact.

    Attributes:
        folder: the folder it goes in (the slot's boot folder, or one inside it).
        name: its file name there.
        image: the file image it is, or None.
        artifact: the artifact it is, or None.
    """

    folder: Path
    name: str
    image: ImageLayout | None = None
    artifact: ArtifactLayout | None = None

    @property
    def offset(self) -> int:
        """Where its bytes start in the bundle (files are written in bundle order)."""
        if self.image is not None:
            return self.image.area_offset
        assert self.artifact is not None
        return self.artifact.offset


@dataclass(frozen=True)
class InstallPlan:
    """An install, decided: the verified head, the block image's target and path, the files.

    Attributes:
        head: the verified bundle head.
        images: the images written into slot devices (one: the slot group's device).
        files: the files written into the target slot's boot folder, in bundle order.
    """

    head: VerifiedHead
    images: tuple[ImagePlan, ...]
    files: tuple[FilePlan, ...] = ()


def refuse_delta_from_a_stream(delta: bool | None, random_access: bool) -> None:
    """Delta asked for where the source is read once, in order: refused, not ignored."""
    if delta and not random_access:
        raise UsageError(
            "delta needs a file or an https:// URL; standard input is read once, in order"
        )


def choose_target(
    board: BoardConfig, image_class: str, slot: str | None, booted: str | None
) -> tuple[str, str | None]:
    """The slot to write and the booted slot of the same class (if any).

    Args:
        board: the board config.
        image_class: the image's slot class.
        slot: the slot asked for, if any.
        booted: the running slot, if known.

    Raises:
        RefusedError: the board has no slot of that class.
        UsageError: `slot` is not of that class, or is the booted slot.
        DeviceError: the booted slot is unknown and more than one slot could be meant.
    """
    same = [s.name for s in board.slots if s.slot_class == image_class]
    if not same:
        raise RefusedError(f"board {board.name} has no slot of class {image_class}")
    active = booted if booted in same else None
    if slot is not None:
        if slot not in same:
            raise UsageError(f"slot {slot} is not a {image_class} slot of {board.name}")
        if slot == booted:
            raise UsageError(f"refusing to install into the booted slot {slot}")
        return slot, active
    others = [s for s in same if s != booted]
    if booted is None and len(others) > 1:
        raise DeviceError(
            "cannot tell which slot is booted (no abupdate.slot= on the kernel command "
            "line); name the target slot with --slot"
        )
    return others[0], active


def block_image(board: BoardConfig, head: VerifiedHead) -> ImageLayout:
    """The bundle's one image for a slot device; every other must be a boot file of the board.

    A slot group is installed whole: the bundle must carry an image for every file
    of `boot.files` (a slot of a `fit` board boots only its signed FIT, so a new
    rootfs without one would never boot).

    Raises:
        RefusedError: an image or artifact has no place on this board, the bundle
            does not hold exactly one image for a slot device, or it lacks a file
            of the slot group.
    """
    problem = board.group_problem(
        [p.image.slot_class for p in head.images], [a.artifact.name for a in head.artifacts]
    )
    if problem is not None:
        raise RefusedError(f"{problem}; nothing signed is left out, so the bundle is refused")
    blocks = {s.slot_class for s in board.slots}
    (part,) = (p for p in head.images if p.image.slot_class in blocks)
    if part.image.file_size is not None:
        raise RefusedError(
            f"image {part.image.slot_class} is a file of {part.image.file_size} bytes; "
            "a slot device takes whole 4096-byte blocks"
        )
    return part


def plan_files(board: BoardConfig, head: VerifiedHead, boot_dir: Path) -> tuple[FilePlan, ...]:
    """Where each file image and artifact of the bundle goes: in the target's `boot_dir`.

    Call after `block_image`, which refuses what has no place.
    """
    files = []
    for part in head.images:
        name = board.boot.file_of(part.image.slot_class)
        if name is not None:
            files.append(FilePlan(boot_dir, name, image=part))
    for art in head.artifacts:
        path = Path(board.boot.artifact_path(art.artifact.name) or art.artifact.name)
        files.append(FilePlan(boot_dir / path.parent, path.name, artifact=art))
    return tuple(sorted(files, key=lambda f: f.offset))


def choose_path(
    delta: bool | None, *, random_access: bool, remote: bool, resumable: Callable[[], bool]
) -> WritePath:
    """Stream or delta, as asked; by default delta where the source allows random access
    and is remote, or where the target already holds this image's tree (an earlier
    install of it got that far: it resumes).

    `resumable` is only asked where the answer matters (it reads the target).
    """
    if delta is None:
        delta = random_access and (remote or resumable())
    return "delta" if delta and random_access else "stream"
