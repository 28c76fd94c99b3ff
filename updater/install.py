"""Installing a bundle into the inactive slot.

The order, fixed and crash-safe (docs/updater.md explains why each step is where it is):

1. Read the bounded head, check signatures and policy. Nothing is written before
   (but the reason of a refusal, in last-install.json).
2. Choose the target: the slot of the image's class that is not booted. With the
   checks, this makes the install's plan (`installplan.InstallPlan`), a value: which
   image goes to which slot, on the stream or the delta path. From a random-access
   source, each file image's padding is checked here too (its block against the
   signed tree, then for zeros), so that such a bundle is refused before step 3.
3. Make the target unbootable (no tries, no root hash): one env write, skipped if
   it already is.
4. Write the hash area, each block checked before it is written, then the data,
   each 4096-byte block checked against its leaf digest before it is written.
   With a random-access source, blocks the target already holds are kept
   (resume) and blocks the active slot holds at the same place are copied
   (delta); only the rest is fetched, in coalesced ranges (`deltawrite`).
   Otherwise the bundle is read once, in order (`streamwrite`).
5. fsync, drop the page cache, and check the whole slot again from the medium:
   each flushed region while the next is written, then the rest (see readback).
   The bundle's file images (the slot's signed boot image) and artifacts go into
   the target's boot folder, each written to a temporary name, flushed, checked
   and renamed (`bootfiles`); images and files are written in bundle order.
6. The slot's record goes to the state directory (it counts only while the env
   gives the slot its root hash); then one env write records the root hash and
   makes the target primary with full tries.

A failure at any step leaves the booted slot and the boot order as they were.
An install holds the device's lock (`installlock`) from start to end: a second
one, or a mark-good, is refused meanwhile. SIGINT and SIGTERM (as `Interrupted`,
see `interrupts`) end it like a failure, recorded with the phase it was in;
they are held while the environment or the slot records change (steps 3 and 6).
"""

from __future__ import annotations

import contextlib
import functools
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bootctl import state as slotstate
from bootctl.control import SlotControl
from bootctl.errors import BootctlError, EnvNotFlushedError, SlotError
from bootctl.state import SlotVerity
from bundle_tool.container import ImageLayout, VerifiedHead
from bundle_tool.errors import BundleIOError, BundleToolError
from bundle_tool.keyring import read_keyring
from bundle_tool.policy import check_policy
from bundle_tool.progress import Progress, ProgressCallback
from bundle_tool.reader import check_file_padding, read_head

from . import bootfiles, deltawrite, floor, installlock, installplan, interrupts, readback
from .bootenv import boot_errors, open_control
from .bootfiles import BootDir
from .config import DeviceConfig
from .deltawrite import DeltaWriter
from .errors import DeviceError, Interrupted, UpdaterError
from .installplan import FilePlan, ImagePlan, InstallPlan
from .session import ImageWriter, WriteSession
from .slotdev import FileSlot, SlotDevice
from .source import BundleSource
from .statedir import SlotRecord, StateDir
from .streamwrite import StreamWriter
from .tuning import InstallTuning

__all__ = ["InstallPlan", "InstallResult", "InstallTuning", "Installer", "Progress", "open_control"]


@dataclass(frozen=True)
class InstallResult:
    """What an install did."""

    slot: str
    version: str
    compatible: str
    security_version: int
    root_hash: str
    image_size: int
    bytes_fetched: int
    bytes_reused: int
    #: Image bytes written as zeros without a fetch (their signed digests say so).
    bytes_zero: int
    seconds: float
    signers: tuple[str, ...]
    #: The files written into the target slot's boot folder (boot image, artifacts).
    boot_files: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"status": "installed", **asdict(self)}


class Installer:
    """Installs bundles on one device.

    The installer is the device's long-lived service: status, the anti-rollback
    floor, the checks. Each install makes a plan, then a `WriteSession` for its
    writing.

    Args:
        config: the device configuration.
        control: slot state access (default: from the config; tests inject one).
        open_slot: opens the target slot's device by path (tests inject a faulty one).
        clock: seconds since the epoch (tests set the time): the checks' time, and the
            dates recorded.
        timer: seconds on a clock that never jumps (the install's duration: the
            wall clock may be set meanwhile, as NTP does on a device that booted
            with no time).
        progress: called with Progress reports.
        tuning: how an install cuts up its work (tests pass smaller sizes).
        open_boot_dir: opens a folder of the boot partition for the boot files
            (tests inject one that loses power).
    """

    def __init__(
        self,
        config: DeviceConfig,
        *,
        control: SlotControl | None = None,
        open_slot: Callable[[str], SlotDevice] = FileSlot,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.monotonic,
        progress: ProgressCallback | None = None,
        tuning: InstallTuning | None = None,
        open_boot_dir: Callable[[Path], BootDir] = BootDir,
    ) -> None:
        self.config = config
        self.open_boot_dir = open_boot_dir
        self.board = config.board
        self.control = control or open_control(config)
        self.open_slot = open_slot
        self.clock = clock
        self.timer = timer
        self.progress = progress
        self.tuning = tuning or InstallTuning()
        self.state = StateDir(config.state_dir)
        #: What went wrong after the last install's switch (the install stands).
        self.warnings: list[str] = []
        #: Where the current install is: "check", "invalidate", a progress phase
        #: ("tree", "index", "data", "read-back"), "switch", then "done".
        self.phase = "check"
        self._target = ""

    # --- state and checks before anything is written ----------------------------------------

    def _boot_state(self) -> slotstate.BootState:
        with boot_errors():
            return self.control.boot_state()

    def _booted(self) -> str | None:
        with boot_errors():
            return self.control.booted_slot()

    def installed(self, st: slotstate.BootState | None = None) -> dict[str, SlotRecord]:
        """What the updater installed into each slot, where the boot environment agrees.

        A record counts only while the environment gives its slot the same root
        hash (see `floor.confirmed`).
        """
        return floor.confirmed(self.state.slot_records(), st or self._boot_state())

    def security_floor(self) -> int:
        """The floor in force: the stored one, or the security version of a good booted slot.

        A slot counts as good when it is booted, first in the boot order and has its
        full tries (what mark-good restores, `updater mark-good` or `abctl mark-good`).
        Nothing is written; `refresh_floor` stores it.
        """
        stored = self.state.security_floor()
        try:
            booted = self.control.booted_slot()
        except SlotError:  # the command line names no slot of this board: none is good
            return stored
        if booted is None:
            return stored
        records = self.state.slot_records()
        return floor.floor_in_force(stored, records, self._boot_state(), booted, self.board.tries)

    def refresh_floor(self) -> None:
        """Store the floor in force (raise it once a newly installed slot was marked good)."""
        self.state.raise_floor(self.security_floor())

    def mark_good(self) -> str:
        """Give the booted slot its full tries back and store the floor that raises; its name.

        Runs with the install lock held (not during an install), and with signals
        held: the floor is stored with the tries. The state files are read first, so
        one that is unreadable or malformed fails it before the tries change.

        Raises:
            BusyError: an install or mark-good runs.
            DeviceError: the booted slot is unknown, the environment or the state
                directory failed.
        """
        with installlock.held(self.config.state_dir, "mark the booted slot good"):
            with interrupts.held(), boot_errors():
                stored = self.state.security_floor()
                records = self.state.slot_records()
                slot = self.control.mark_good()
                st = self.control.boot_state()
                self.state.raise_floor(
                    floor.floor_in_force(stored, records, st, slot, self.board.tries)
                )
            return slot

    def check(self, source: BundleSource) -> VerifiedHead:
        """Read and check a bundle's head: signatures, compatible, expiry, anti-rollback.

        Nothing is written: `install` stores the floor in force once these pass.
        """
        now = datetime.fromtimestamp(self.clock(), UTC)
        keyring = read_keyring(self.config.keyring, at=now)  # unreadable: a usage error
        head = read_head(source, keyring, at=now, threshold=self.config.threshold)
        check_policy(
            head.manifest,
            compatible=self.board.compatible,
            at=now,
            security_floor=self.security_floor(),
            architecture=self.board.architecture,
        )
        return head

    def choose_target(self, image_class: str, slot: str | None) -> tuple[str, str | None]:
        """The slot to write and the booted slot of the same class (if any)."""
        return installplan.choose_target(self.board, image_class, slot, self._booted())

    def plan(
        self, source: BundleSource, slot: str | None = None, delta: bool | None = None
    ) -> InstallPlan:
        """Check the bundle's head and decide the install: targets and paths. Nothing is written.

        From a random-access source, each file image's padding is checked too
        (`bundle_tool.reader.check_file_padding`): a bundle whose padding is not zeros is
        refused before the target is touched. A stream is read once, in order: its
        file images' padding is checked as they are written (`CheckedImage.data`).

        Args:
            source: where the bundle comes from (its head is read).
            slot: target slot (default: the inactive one).
            delta: reuse blocks of the target and active slots (default: when the
                source allows random access, and is remote or the target already
                holds this image's tree, as after an interrupted install: it resumes).
        """
        installplan.refuse_delta_from_a_stream(delta, source.random_access)
        head = self.check(source)
        part = installplan.block_image(self.board, head)
        target, active = self.choose_target(part.image.slot_class, slot)
        device = self.config.slot_device(target)
        path = installplan.choose_path(
            delta,
            random_access=source.random_access,
            remote=source.remote,
            resumable=functools.partial(self._holds_tree, device, part),
        )
        moved = path == "delta" and source.remote and self.config.find_moved_blocks
        image = ImagePlan(
            part=part,
            target=target,
            device=device,
            active=active,
            active_device=(
                self.config.slot_device(active) if path == "delta" and active is not None else None
            ),
            path=path,
            index_blocks=self._running_blocks(active, part) if moved and active else 0,
        )
        files = installplan.plan_files(self.board, head, self.config.boot_dir(target))
        if source.random_access:
            for f in files:
                if f.image is not None:
                    check_file_padding(source, f.image)
        return InstallPlan(head, (image,), files)

    def _holds_tree(self, device: str, part: ImageLayout) -> bool:
        """Whether the target holds this image's tree already (see `deltawrite.holds_tree`)."""
        try:
            dev = FileSlot(device, writable=False)
        except DeviceError:
            return False  # nothing there yet
        with dev:
            return deltawrite.holds_tree(dev, part.image.verity)

    def _running_blocks(self, active: str, part: ImageLayout) -> int:
        """Blocks of the image in slot `active`, as its recorded verity value says.

        Without a valid record, as many as the new image has.
        """
        with contextlib.suppress(BootctlError):
            recorded = self.control.boot_state().slot(active).verity
            if recorded is not None:
                return recorded.data_blocks
        return part.image.verity.data_blocks

    # --- the install ----------------------------------------------------------------------

    def install(
        self,
        source: BundleSource,
        *,
        slot: str | None = None,
        delta: bool | None = None,
        switch: bool = True,
    ) -> InstallResult:
        """Install the bundle from `source`; see the module docstring for the steps.

        Args:
            source: where the bundle comes from.
            slot: target slot (default: the inactive one).
            delta: as for `plan`.
            switch: make the target primary at the end (step 6). Without it the
                target is written and checked but stays unbootable and unrecorded
                (a download ahead of time): a later install of the same bundle
                finds the target holding its tree and keeps every block.
        """
        installplan.refuse_delta_from_a_stream(delta, source.random_access)
        with installlock.held(self.config.state_dir, "install"):
            return self._install(source, slot, delta, switch)

    def _install(
        self, source: BundleSource, slot: str | None, delta: bool | None, switch: bool = True
    ) -> InstallResult:
        """`install`, with the device's install lock held."""
        started = self.clock()
        began = self.timer()
        self.warnings = []
        self.phase = "check"
        try:
            with boot_errors():
                decided = self.plan(source, slot, delta)
                self.refresh_floor()  # the checks passed: writing may begin
                image, session = self._write(decided, source)
                # Held: a signal lands before the record or after the switch, not between.
                with interrupts.held():
                    if switch:
                        self.phase = "switch"
                        self._record(decided, image)
                        self._switch(image, session)
                    result = self._result(decided, image, session, began)
                    self.phase = "done"
                    self._record_success(result, started, switched=switch)
        except Interrupted as e:
            raise self._interrupted(e, started) from None
        except BundleIOError as e:  # a helper process failed (see bundle_tool.forked)
            error = DeviceError(str(e))
            self._record_failure(error, started)
            raise error from e
        except (BundleToolError, UpdaterError) as e:
            self._record_failure(e, started)
            raise
        return result

    def _record_success(self, result: InstallResult, started: float, switched: bool) -> None:
        status = {} if switched else {"status": "downloaded"}
        try:
            self.state.record_result({**result.to_dict(), **status, "at": int(started)})
        except DeviceError as e:  # after the switch: the new slot boots next all the same
            self.warnings.append(f"the install stands, but its result was not recorded: {e}")

    def _interrupted(self, e: Interrupted, started: float) -> Interrupted:
        """The error to raise for a signal in `self.phase`, recorded unless the install stands."""
        name = signal.Signals(e.signum).name
        if self.phase == "done":
            return Interrupted(e.signum, f"{name} came once the install was done; it stands")
        if self.phase == "check":
            said = "nothing was changed"
        else:
            said = f"slot {self._target} is left unbootable; run the install again"
        error = Interrupted(e.signum, f"interrupted by {name} in phase {self.phase}: {said}")
        self._record_failure(error, started, status="interrupted", phase=self.phase, signal=name)
        return error

    def _record_failure(
        self, error: BaseException, started: float, status: str = "failed", **more: str
    ) -> None:
        with contextlib.suppress(DeviceError):  # the original error matters more
            self.state.record_result(
                {
                    "status": status,
                    "error": str(error),
                    "kind": type(error).__name__,
                    "at": int(started),
                    **more,
                }
            )

    def _report(self, p: Progress) -> None:
        """Progress of the write session: its phase is the install's."""
        self.phase = p.phase
        if self.progress:
            self.progress(p)

    def _write(self, decided: InstallPlan, source: BundleSource) -> tuple[ImagePlan, WriteSession]:
        """Steps 3 to 5 of the module docstring for the planned images and files.

        Everything is written in bundle order, so that a stream is read once.
        """
        (image,) = decided.images  # the plan makes one: the slot group's device
        before = [f for f in decided.files if f.offset < image.part.area_offset]
        after = [f for f in decided.files if f.offset > image.part.area_offset]
        self._target = image.target
        with self.open_slot(image.device) as dev:
            self._check_room(image, dev)
            self.phase = "invalidate"
            with interrupts.held():
                self._invalidate(image)
            self._write_files(before, source)
            vinfo = image.image.verity
            with (
                WriteSession(dev, vinfo, source, self.tuning, self._report) as s,
                self._writer(image, source, s) as writer,
            ):
                writer.write_tree()
                # The tree above the leaves is verified now: the read-back children
                # inherit it and check each flushed region while the rest is written.
                with readback.RegionReadBack(dev, s.checker, vinfo, s.written) as back:
                    writer.write_data(back)
                    self._write_files(after, source)
                    source.check_end(decided.head.total_size)
                    self._read_back(image, s, back)
        return image, s

    def _write_files(self, files: list[FilePlan], source: BundleSource) -> None:
        """Step 5: each boot file written, flushed, checked and renamed (see bootfiles).

        Reported as the "boot-files" phase: before each file, and once all are written.
        """
        for n, f in enumerate(files):
            self._report(Progress("boot-files", n, len(files), source.bytes_fetched, 0))
            folder = self.open_boot_dir(f.folder)
            try:
                if f.image is not None:
                    bootfiles.write_image_file(source, f.image, folder, f.name)
                elif f.artifact is not None:
                    bootfiles.write_artifact(source, f.artifact, folder, f.name)
            finally:
                folder.close()
        if files:
            self._report(Progress("boot-files", len(files), len(files), source.bytes_fetched, 0))

    def _check_room(self, image: ImagePlan, dev: SlotDevice) -> None:
        capacity = dev.capacity()
        if capacity is not None and capacity < image.needed:
            raise DeviceError(
                f"slot {image.target} holds {capacity} bytes; "
                f"the image and its hash tree need {image.needed}"
            )

    def _invalidate(self, image: ImagePlan) -> None:
        """Step 3: the target unbootable, and its record gone, before it is written."""
        self.control.invalidate(image.target)
        self.state.record_slot(image.target, None)

    def _writer(self, image: ImagePlan, source: BundleSource, session: WriteSession) -> ImageWriter:
        if image.path == "stream":
            return StreamWriter(session, source, image.part)
        writer = DeltaWriter(session, source, image.part, image.active_device)
        if image.index_blocks:
            writer.index_active(image.index_blocks)
        return writer

    def _read_back(
        self, image: ImagePlan, session: WriteSession, back: readback.RegionReadBack
    ) -> None:
        """Step 5: the last flush, then every region not yet read back, and the hash area."""
        size = image.image.size
        session.dev.flush()
        session.report("read-back", 0, size)
        back.finish()
        session.report("read-back", size, size)

    def _record(self, decided: InstallPlan, image: ImagePlan) -> None:
        """Step 6, first: the slot's record (it counts once the env gives the slot its hash)."""
        m = decided.head.manifest
        root = image.image.verity.root_hash.hex()
        record = SlotRecord(m.version, m.security_version, m.compatible, root, int(self.clock()))
        self.state.record_slot(image.target, record)

    def _switch(self, image: ImagePlan, session: WriteSession) -> None:
        """Step 6, then: one env write records the root hash and makes the target primary."""
        vinfo = image.image.verity
        session.report("switch", 0, 1)
        try:
            self.control.set_primary(
                image.target,
                SlotVerity(vinfo.root_hash.hex(), vinfo.salt.hex(), vinfo.data_blocks),
            )
        except EnvNotFlushedError as e:
            # The switch is made (the next boot takes the target) unless a power cut
            # undoes it, and then the old slot boots: either way a verified slot.
            self.warnings.append(f"the switch stands, but it may not survive a power cut: {e}")

    def _result(
        self, decided: InstallPlan, image: ImagePlan, session: WriteSession, began: float
    ) -> InstallResult:
        """The install's result; `began` is when it started on `self.timer`."""
        m = decided.head.manifest
        return InstallResult(
            slot=image.target,
            version=m.version,
            compatible=m.compatible,
            security_version=m.security_version,
            root_hash=image.image.verity.root_hash.hex(),
            image_size=image.image.size,
            bytes_fetched=session.source.bytes_fetched,
            bytes_reused=session.reused,
            bytes_zero=session.zero,
            seconds=round(self.timer() - began, 3),
            signers=tuple(s.subject for s in decided.head.signers),
            boot_files=tuple(str(f.folder / f.name) for f in decided.files),
        )
