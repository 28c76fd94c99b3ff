"""Installing a bundle into the inactive slot.

The order, fixed and crash-safe (docs/updater.md explains why each step is where it is):

1. Read the bounded head, check signatures and policy. Nothing is written before
   (but the reason of a refusal, in last-install.json).
2. Choose the target: the slot of the image's class that is not booted.
3. Make the target unbootable (no tries, no root hash): one env write, skipped if
   it already is.
4. Write the hash area, each block checked before it is written, then the data,
   each 4096-byte block checked against its leaf digest before it is written.
   With a random-access source, blocks the target already holds are kept
   (resume) and blocks the active slot holds at the same place are copied
   (delta); only the rest is fetched, in coalesced ranges.
5. fsync, drop the page cache, and check the whole slot again from the medium:
   each flushed region while the next is written, then the rest (see readback).
6. The slot's record goes to the state directory (it counts only while the env
   gives the slot its root hash); then one env write records the root hash and
   makes the target primary with full tries.

A failure at any step leaves the booted slot and the boot order as they were.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from bootctl import state as slotstate
from bootctl.control import SlotControl
from bootctl.errors import BootctlError, ConfigError, SlotError
from bootctl.state import SlotVerity
from bundle_tool import verity
from bundle_tool.container import ImageLayout, VerifiedHead
from bundle_tool.errors import BundleError, BundleIOError, PolicyError, TrustError
from bundle_tool.manifest import VerityInfo
from bundle_tool.policy import check_policy
from bundle_tool.reader import read_head
from bundle_tool.signing import load_keyring

from . import blockindex, hashing, leaffetch, readback
from .config import DeviceConfig
from .errors import DeviceError, TransportError, UsageError
from .filesource import FileSource
from .pieces import ExactReader, paired_runs, runs
from .slotdev import FileSlot, SlotDevice
from .source import BundleSource
from .statedir import SlotRecord, StateDir

BLOCK = verity.BLOCK_SIZE
SPAN_BLOCKS = 256  # blocks checked and written per step in the stream path (1 MiB)
GROUP = verity.HASHES_PER_BLOCK  # data blocks covered by one leaf block
BATCH_GROUPS = 16  # leaf groups planned together in the delta path (8 MiB of data)
COLD_GROUPS = 32  # see _DeltaWriter.cold
COLD_BATCHES = 8  # batches planned as one while the active slot is cold (fewer requests)
FLUSH_EVERY = 64 << 20  # make progress durable this often, so a power cut resumes
PIPELINE_DEPTH = 4  # chunks read ahead in the delta path
RING_SLOTS = 8  # spans in the stream path's hashing ring: being read, hashed, checked, written


@dataclass(frozen=True)
class Progress:
    """One progress report.

    Attributes:
        phase: "tree", "index", "data", "read-back" or "switch".
        done: what is done of this phase so far: bytes ("tree": of the hash area;
            "index": of the running slot; "data" and "read-back": of the image),
            or 0 for "switch" (of 1).
        total: the size of this phase in the same unit.
        fetched: bytes read from the source so far (network or medium).
        reused: image bytes kept on the target or copied from the active slot.
    """

    phase: str
    done: int
    total: int
    fetched: int
    reused: int


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
    seconds: float
    signers: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"status": "installed", **asdict(self)}


def prefetched(chunks: Iterable[bytes], pool: ThreadPoolExecutor) -> Generator[bytes, None, None]:
    """The chunks, with up to PIPELINE_DEPTH of them read ahead in `pool`'s one thread.

    A network source then receives and decrypts (without the GIL) while the
    caller checks and writes what came before.
    """
    it = iter(chunks)
    pending: deque[Future[bytes | None]] = deque()
    try:
        while True:
            while len(pending) < PIPELINE_DEPTH:
                pending.append(pool.submit(next, it, None))
            chunk = pending.popleft().result()
            if chunk is None:
                return
            yield chunk
    finally:
        for f in pending:
            f.cancel()
        futures.wait(pending)
        if isinstance(it, Generator):
            it.close()


def group_pieces(first: int, count: int) -> Iterator[tuple[int, int, int]]:
    """Split blocks [first, first + count) at leaf-group bounds: (group, index in it, count)."""
    block, end = first, first + count
    while block < end:
        j, i = divmod(block, GROUP)
        n = min(end - block, GROUP - i)
        yield j, i, n
        block += n


def pack_leaf(digests: bytes) -> bytes:
    """A leaf-level hash block from the digests of up to 128 data blocks."""
    return digests.ljust(BLOCK, b"\x00")


class Installer:
    """Installs bundles on one device.

    Args:
        config: the device configuration.
        control: slot state access (default: from the config; tests inject one).
        open_slot: opens the target slot's device by path (tests inject a faulty one).
        clock: seconds since the epoch (tests set the time).
        progress: called with Progress reports.
    """

    def __init__(
        self,
        config: DeviceConfig,
        *,
        control: SlotControl | None = None,
        open_slot: Callable[[str], SlotDevice] = FileSlot,
        clock: Callable[[], float] = time.time,
        progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.config = config
        self.board = config.board
        self.control = control or open_control(config)
        self.open_slot = open_slot
        self.clock = clock
        self.progress = progress
        self.state = StateDir(config.state_dir)
        self._reused = 0
        self._hashing: hashing.SpanDigests | None = None  # during an install's write
        #: What went wrong after the last install's switch (the install stands).
        self.warnings: list[str] = []

    # --- checks before anything is written ------------------------------------------------

    def _boot_state(self) -> slotstate.BootState:
        try:
            return slotstate.parse_state(self.control.env(), self.board.slot_names)
        except BootctlError as e:
            raise DeviceError(f"cannot read the slot state: {e}") from e

    def installed(self, st: slotstate.BootState | None = None) -> dict[str, SlotRecord]:
        """What the updater installed into each slot, where the boot environment agrees.

        A record counts only while the environment gives its slot the same root
        hash. The record is written just before the switch, so a power cut between
        the two leaves a record that the environment does not confirm (nor boot).
        """
        st = st or self._boot_state()
        roots = {s.name: s.verity.root_hash for s in st.slots if s.verity is not None}
        return {
            name: record
            for name, record in self.state.slot_records().items()
            if roots.get(name) == record.root_hash
        }

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
        st = self._boot_state()
        record = self.installed(st).get(booted)
        if record and st.primary == booted and st.slot(booted).tries >= self.board.tries:
            return max(stored, record.security_version)
        return stored

    def refresh_floor(self) -> None:
        """Store the floor in force (raise it once a newly installed slot was marked good)."""
        self.state.raise_floor(self.security_floor())

    def check(self, source: BundleSource) -> VerifiedHead:
        """Read and check a bundle's head: signatures, compatible, expiry, anti-rollback.

        Nothing is written: `install` stores the floor in force once these pass.
        """
        try:
            keyring_pem = self.config.keyring.read_bytes()
        except OSError as e:
            raise DeviceError(f"cannot read keyring {self.config.keyring}: {e.strerror}") from e
        keyring = load_keyring(keyring_pem)
        now = datetime.fromtimestamp(self.clock(), UTC)
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
        try:
            booted = self.control.booted_slot()
        except SlotError as e:
            raise DeviceError(str(e)) from e
        same = [s.name for s in self.board.slots if s.slot_class == image_class]
        if not same:
            raise PolicyError(f"board {self.board.name} has no slot of class {image_class}")
        if slot is not None:
            if slot not in same:
                raise UsageError(f"slot {slot} is not a {image_class} slot of {self.board.name}")
            if slot == booted:
                raise UsageError(f"refusing to install into the booted slot {slot}")
            return slot, booted if booted in same else None
        others = [s for s in same if s != booted]
        if booted is None and len(others) > 1:
            raise DeviceError(
                "cannot tell which slot is booted (no abupdate.slot= on the kernel command "
                "line); name the target slot explicitly"
            )
        return others[0], booted if booted in same else None

    # --- the install ----------------------------------------------------------------------

    def install(
        self,
        source: BundleSource,
        *,
        slot: str | None = None,
        delta: bool | None = None,
    ) -> InstallResult:
        """Install the bundle from `source`; see the module docstring for the steps.

        Args:
            source: where the bundle comes from.
            slot: target slot (default: the inactive one).
            delta: reuse blocks of the target and active slots (default: when the
                source allows random access, and is remote or the target already
                holds this image's tree, as after an interrupted install: it resumes).
        """
        if delta and not source.random_access:
            raise UsageError(
                "delta needs a file or an https:// URL; standard input is read once, in order"
            )
        started = self.clock()
        self.warnings = []
        try:
            result = self._install(source, slot, delta, started)
        except (BundleError, TrustError, PolicyError, TransportError, DeviceError, UsageError) as e:
            self._record_failure(e, started)
            raise
        except BootctlError as e:
            error = DeviceError(f"boot environment: {e}")
            self._record_failure(error, started)
            raise error from e
        except BundleIOError as e:  # a helper process failed (see bundle_tool.forked)
            error = DeviceError(str(e))
            self._record_failure(error, started)
            raise error from e
        try:
            self.state.record_result({**result.to_dict(), "at": int(started)})
        except DeviceError as e:  # after the switch: the new slot boots next all the same
            self.warnings.append(f"the install stands, but its result was not recorded: {e}")
        return result

    def _record_failure(self, error: Exception, started: float) -> None:
        with contextlib.suppress(DeviceError):  # the original error matters more
            self.state.record_result(
                {
                    "status": "failed",
                    "error": str(error),
                    "kind": type(error).__name__,
                    "at": int(started),
                }
            )

    def _install(
        self,
        source: BundleSource,
        slot: str | None,
        delta: bool | None,
        started: float,
    ) -> InstallResult:
        head = self.check(source)
        self.refresh_floor()  # the checks passed: writing may begin
        if len(head.images) != 1:
            raise PolicyError("bundles with more than one image are not supported yet")
        part = head.images[0]
        image = part.image
        target, active = self.choose_target(image.slot_class, slot)
        vinfo = image.verity
        needed = image.size + vinfo.tree_size

        with self.open_slot(self.config.slot_device(target)) as dev:
            capacity = dev.capacity()
            if capacity is not None and capacity < needed:
                raise DeviceError(
                    f"slot {target} holds {capacity} bytes; "
                    f"the image and its hash tree need {needed}"
                )
            self._invalidate(target)
            self.state.record_slot(target, None)
            checker = verity.TreeChecker(vinfo.root_hash, vinfo.salt, vinfo.data_blocks)
            self._reused = 0
            if delta is None:
                delta = source.random_access and (source.remote or _holds_tree(dev, vinfo))
            active_dev = self._open_active(active) if delta and source.random_access else None
            # Blocks are hashed by a child from here on (forked before any thread starts).
            self._hashing = hasher = hashing.SpanDigests(
                vinfo.salt, SPAN_BLOCKS * BLOCK, RING_SLOTS
            )
            try:
                write_data: Callable[[readback.RegionReadBack], None]
                if delta and source.random_access:
                    writer = _DeltaWriter(self, source, part, checker, dev, active_dev)
                    if self.config.find_moved_blocks and source.remote and active_dev:
                        writer.index_active(self._running_blocks(active, vinfo))
                    writer.write_upper()
                    write_data = writer.write_data
                else:
                    reader = self._stream_tree(source, part, checker, dev)
                    write_data = functools.partial(
                        self._stream_data, source, reader, part, checker, dev
                    )
                # The tree above the leaves is verified now: the read-back child
                # inherits it and checks each flushed region while the rest is written.
                with readback.RegionReadBack(dev, checker, vinfo) as back:
                    write_data(back)
                    self._check_end(source, head)
                    dev.flush()
                    self._report("read-back", 0, image.size, source)
                    back.finish()
            finally:
                hasher.close()
                self._hashing = None
                if active_dev is not None:
                    active_dev.close()
            self._report("read-back", image.size, image.size, source)

        root = vinfo.root_hash.hex()
        m = head.manifest
        # Recorded first: it counts once the environment gives the slot this root hash.
        self.state.record_slot(
            target, SlotRecord(m.version, m.security_version, m.compatible, root, int(self.clock()))
        )
        self._report("switch", 0, 1, source)
        self.control.set_primary(target, SlotVerity(root, vinfo.salt.hex(), vinfo.data_blocks))
        return InstallResult(
            slot=target,
            version=m.version,
            compatible=m.compatible,
            security_version=m.security_version,
            root_hash=root,
            image_size=image.size,
            bytes_fetched=source.bytes_fetched,
            bytes_reused=self._reused,
            seconds=round(self.clock() - started, 3),
            signers=tuple(s.subject for s in head.signers),
        )

    def _invalidate(self, target: str) -> None:
        """No tries and no root hash for the target, in one env write (none if already so)."""
        names = self.board.slot_names
        store = self.control.store
        with store.locked():
            env = store.load()
            new = slotstate.set_verity(slotstate.mark_bad(env, target, names), target, None, names)
            if new != env:
                store.save(new)

    def _open_active(self, active: str | None) -> SlotDevice | None:
        """The running slot, for reading only: the installer never writes it."""
        if active is None:
            return None
        try:
            return FileSlot(self.config.slot_device(active), writable=False)
        except DeviceError:
            return None  # no delta source; everything is fetched

    def _running_blocks(self, active: str | None, vinfo: VerityInfo) -> int:
        """Blocks of the image in slot `active`, as its recorded verity value says.

        Without a valid record, as many as the new image has.
        """
        if active is not None:
            with contextlib.suppress(BootctlError):
                value = self.control.store.load().get(slotstate.verity_var(active), "")
                return SlotVerity.from_env(value).data_blocks
        return vinfo.data_blocks

    def _report(self, phase: str, done: int, total: int, source: BundleSource) -> None:
        if self.progress:
            self.progress(Progress(phase, done, total, source.bytes_fetched, self._reused))

    def _check_end(self, source: BundleSource, head: VerifiedHead) -> None:
        """A stream must end exactly where the manifest says (trailing bytes are refused)."""
        at_eof = getattr(source, "at_eof", None)
        if at_eof is not None and not at_eof():
            raise BundleError("bundle has bytes the manifest does not account for")

    # --- writing and checking blocks -------------------------------------------------------

    def check_blocks(
        self, checker: verity.TreeChecker, first: int, data: bytes, expected: bytes
    ) -> None:
        """Refuse blocks [first, first + len(data)/4096) unless they match `expected`."""
        self._refuse_mismatch(first, self.block_digests(checker.salt, data), expected)

    @staticmethod
    def _refuse_mismatch(first: int, got: bytes, expected: bytes) -> None:
        """Refuse blocks from `first` whose digests `got` are not those `expected`."""
        bad = verity.first_mismatch(first, got, expected)
        if bad is not None:
            raise BundleError(
                f"image block {bad} (image offset {bad * BLOCK}) does not match the signed "
                "hash tree; it was not written"
            )

    def block_digests(self, salt: bytes, data: bytes | memoryview) -> bytes:
        """sha256(salt || block) of each block of `data`: in the hashing child during a write."""
        if self._hashing is not None and self._hashing.salt == salt:
            return self._hashing.digests(data)
        return verity.digest_blocks(salt, data)

    def write_checked(
        self,
        dev: SlotDevice,
        checker: verity.TreeChecker,
        first: int,
        data: bytes,
        expected: bytes,
    ) -> None:
        """Check blocks [first, first + len(data)/4096) against `expected`, then write them."""
        self.check_blocks(checker, first, data, expected)
        dev.pwrite(first * BLOCK, data)

    def _stream_tree(
        self, source: BundleSource, part: ImageLayout, checker: verity.TreeChecker, dev: SlotDevice
    ) -> ExactReader:
        """Check and write the hash area; return a reader of the data that follows it.

        The data is read on its own, so that its chunks start on a data block
        and each span is taken whole from one chunk, without a copy.
        """
        vinfo = part.image.verity
        tree = ExactReader(source.read(part.area_offset, vinfo.tree_size))
        area = (tree.take(BLOCK) for _ in range(vinfo.tree_size // BLOCK))
        for index, hash_block in checker.check_area(area):
            dev.pwrite(part.image.size + index * BLOCK, hash_block)
        tree.finish()
        self._report("tree", vinfo.tree_size, vinfo.tree_size, source)
        return ExactReader(source.read(part.data_offset, part.image.size))

    def _stream_data(  # noqa: PLR0917 - private, bound with functools.partial
        self,
        source: BundleSource,
        reader: ExactReader,
        part: ImageLayout,
        checker: verity.TreeChecker,
        dev: SlotDevice,
        back: readback.RegionReadBack,
    ) -> None:
        """Check each data block before writing it; each flushed region is read back.

        Each span goes round the hashing ring (`hashing.SpanDigests`): read into a
        free slot (in one thread), hashed by the child, compared here with the
        signed leaves, written from the same slot (in another thread), and the
        slot is free again. So a span is read, another hashed and others written
        while this thread compares. Writes stay in order, and a flush waits for
        every write before it.
        """
        hasher = self._hashing
        if hasher is None:
            raise ValueError("the stream path needs the hashing ring")
        vinfo = part.image.verity
        hash_offset = part.image.size
        if isinstance(source, FileSource):
            data_offset = part.data_offset

            def fill(first: int, view: memoryview) -> None:
                source.read_into(data_offset + first * BLOCK, view)
        else:

            def fill(first: int, view: memoryview) -> None:
                reader.take_into(view)

        def leaf(j: int) -> bytes:
            return dev.pread(hash_offset + (checker.first_leaf + j) * BLOCK, BLOCK)

        free = deque(range(hasher.slots))
        reads: deque[tuple[int, int, int, Future[None]]] = deque()  # first, count, slot
        hashed: deque[tuple[int, int, int]] = deque()  # submitted to the child, in order
        writes: deque[tuple[int, Future[None]]] = deque()  # slot, write
        reader_thread = ThreadPoolExecutor(1, thread_name_prefix="abupdate-read")
        writer_thread = ThreadPoolExecutor(1, thread_name_prefix="abupdate-write")
        next_block = 0
        unflushed = 0

        def reclaim(wait: int) -> None:
            """Free the slots of finished writes, after waiting for the oldest `wait`."""
            while writes and (wait > 0 or writes[0][1].done()):
                slot, write = writes.popleft()
                write.result()
                free.append(slot)
                wait -= 1

        def read_ahead() -> None:
            nonlocal next_block
            reclaim(0 if free or reads or hashed else 1)  # else wait for a slot's write
            while free and next_block < vinfo.data_blocks:
                count = min(SPAN_BLOCKS, vinfo.data_blocks - next_block)
                slot = free.popleft()
                view = hasher.view(slot, count * BLOCK)
                reads.append(
                    (next_block, count, slot, reader_thread.submit(fill, next_block, view))
                )
                next_block += count

        def check_and_write() -> None:
            nonlocal unflushed
            first, count, slot = hashed.popleft()
            try:
                expected = checker.leaf_digests(first, count, leaf)
            except BundleError as e:  # the leaf block was checked before it was written
                raise readback.medium_failed(dev, f"hash tree: {e}") from e
            self._refuse_mismatch(first, hasher.collect(), expected)
            view = hasher.view(slot, count * BLOCK)
            writes.append((slot, writer_thread.submit(dev.pwrite, first * BLOCK, view)))
            unflushed += count * BLOCK
            if unflushed >= FLUSH_EVERY:
                reclaim(len(writes))
                dev.flush()
                back.flushed(first + count)
                unflushed = 0
            self._report("data", (first + count) * BLOCK, part.image.size, source)

        try:
            read_ahead()
            while reads or hashed:
                if reads:
                    first, count, slot, pending = reads.popleft()
                    pending.result()
                    hasher.submit(slot, count * BLOCK)
                    hashed.append((first, count, slot))
                # One span stays with the child while this thread checks the one before.
                if len(hashed) > 1 or not reads:
                    check_and_write()
                read_ahead()
            reclaim(len(writes))
        finally:
            reader_thread.shutdown(wait=False, cancel_futures=True)
            writer_thread.shutdown(wait=True, cancel_futures=True)


def _holds_tree(dev: SlotDevice, vinfo: VerityInfo) -> bool:
    """Whether `dev` holds this image's hash area above the leaves, where it belongs.

    The tree is written before the data, so this is the mark of an earlier
    install of the same image into this slot, interrupted or not: the delta path
    then keeps the blocks it flushed instead of writing them again.
    """
    probe = verity.TreeChecker(vinfo.root_hash, vinfo.salt, vinfo.data_blocks)
    offset = vinfo.data_blocks * BLOCK
    try:
        for _ in probe.check_upper(
            dev.pread(offset + i * BLOCK, BLOCK) for i in range(probe.first_leaf)
        ):
            pass
    except (BundleError, DeviceError):
        return False
    return True


class _DeltaWriter:
    """The random-access path: keep, copy or fetch each block, in batches of leaf groups."""

    def __init__(  # noqa: PLR0917 - private helper, called once
        self,
        installer: Installer,
        source: BundleSource,
        part: ImageLayout,
        checker: verity.TreeChecker,
        dev: SlotDevice,
        active: SlotDevice | None,
    ) -> None:
        self.inst = installer
        self.source = source
        self.part = part
        self.checker = checker
        self.dev = dev
        self.active = active
        self.vinfo = part.image.verity
        self.hash_offset = part.image.size
        self.base = hashlib.sha256(self.vinfo.salt)
        self.unflushed = 0
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="abupdate-fetch")
        # Groups in a row in which the active slot held no wanted block: past
        # COLD_GROUPS, it is only probed every COLD_GROUPS groups (a fresh install of an
        # unrelated image then costs no extra hashing).
        self.cold = 0
        self.moved: blockindex.BlockIndex | None = None  # see index_active
        self.leaf_fetcher = leaffetch.LeafFetcher(source, part, checker)

    def index_active(self, blocks: int) -> None:
        """Index the active slot's first `blocks` blocks, to copy blocks that moved.

        Reported as the "index" phase. A slot that cannot be read whole is indexed
        as far as it goes, or not at all: blocks are then fetched instead.
        """
        if self.active is None:
            return
        path = self.active.path
        try:
            with open(path, "rb", buffering=0) as f:
                blocks = min(blocks, os.lseek(f.fileno(), 0, os.SEEK_END) // BLOCK)

            def report(done: int) -> None:
                self.inst._report("index", done * BLOCK, blocks * BLOCK, self.source)

            report(0)
            self.moved = blockindex.build(path, self.vinfo.salt, blocks, report)
        except (OSError, BundleIOError):
            self.moved = None

    def leaf_offset(self, j: int) -> int:
        return self.hash_offset + (self.checker.first_leaf + j) * BLOCK

    def write_upper(self) -> None:
        """Fetch, check and write the superblock and the tree levels above the leaves."""
        upper = self.checker.first_leaf * BLOCK
        blocks = ExactReader(self.source.read(self.part.area_offset, upper))
        for index, block in self.checker.check_upper(
            blocks.take(BLOCK) for _ in range(self.checker.first_leaf)
        ):
            self.dev.pwrite(self.hash_offset + index * BLOCK, block)

    def write_data(self, back: readback.RegionReadBack) -> None:
        """Keep, copy or fetch every data block (and its leaf block), batch after batch."""
        groups = -(-self.vinfo.data_blocks // GROUP)
        first = 0
        try:
            while first < groups:
                # While the running slot holds nothing (a fresh install), nearly every
                # block is fetched: larger batches mean fewer, longer requests.
                size = BATCH_GROUPS * (COLD_BATCHES if self.cold >= COLD_GROUPS else 1)
                self.batch(range(first, min(groups, first + size)))
                first += size
                end = min(self.vinfo.data_blocks, first * GROUP)
                if self.unflushed >= FLUSH_EVERY:
                    # Batches are written in order: every block before `end` is in place.
                    self.dev.flush()
                    self.unflushed = 0
                    back.flushed(end)
                self.inst._report("data", end * BLOCK, self.part.image.size, self.source)
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def group_span(self, j: int) -> tuple[int, int]:
        first = j * GROUP
        return first, min(GROUP, self.vinfo.data_blocks - first)

    def read_group(self, dev: SlotDevice | None, j: int) -> tuple[bytes, bytes] | None:
        """Group j's blocks as they are on `dev`, and their digests (with the new salt).

        A block whose digest matches its leaf entry may be written from these very
        bytes: they are what was checked.
        """
        if dev is None:
            return None
        first, count = self.group_span(j)
        data = dev.pread(first * BLOCK, count * BLOCK)
        if len(data) < count * BLOCK:
            return None  # a plain file that ends before this group holds none of it
        return data, self.inst.block_digests(self.vinfo.salt, data)

    def leaf_ok(self, j: int, block: bytes) -> bool:
        try:
            self.checker.check_leaf(j, block)
        except BundleError:
            return False
        return True

    def batch(self, groups: range) -> None:
        has_leaves = bool(self.checker.geometry.levels)
        leaves: dict[int, bytes] = {}
        on_target: dict[int, bytes | None] = {}
        on_active: dict[int, bytes | None] = {}
        active_data: dict[int, bytes] = {}  # the probed blocks, to copy without reading again
        probed: set[int] = set()  # groups looked for on the active slot
        # What a changed group's leaf block would be had none of its blocks changed.
        unchanged: dict[int, bytes] = {}
        for j in groups:
            first, count = self.group_span(j)
            if not has_leaves:
                # One data block: its digest is the root hash itself.
                leaves[j] = pack_leaf(self.vinfo.root_hash)
                on_target[j] = _digests_of(self.read_group(self.dev, j))
            elif self.leaf_ok(j, stored := self.dev.pread(self.leaf_offset(j), BLOCK)):
                leaves[j] = stored
                on_target[j] = _digests_of(self.read_group(self.dev, j))
            else:
                # Without a valid leaf on the target, an interrupted earlier install
                # never reached this group's data: do not bother hashing the target.
                on_target[j] = None
            if j in leaves and on_target[j] == leaves[j][: count * verity.DIGEST_SIZE]:
                on_active[j] = None  # the target already holds the whole group
                continue
            if self.cold < COLD_GROUPS or j % COLD_GROUPS == 0:
                probed.add(j)
                group = self.read_group(self.active, j)
            else:
                group = None
            on_active[j] = _digests_of(group)
            if group is not None:
                active_data[j] = group[0]
            if j not in leaves and on_active[j] is not None:
                candidate = pack_leaf(on_active[j] or b"")
                if self.leaf_ok(j, candidate):
                    leaves[j] = candidate
                    self.dev.pwrite(self.leaf_offset(j), candidate)
                    self.cold = 0  # the running slot holds this group: probe the next ones
                else:
                    unchanged[j] = candidate
        missing = {j: unchanged.get(j) for j in groups if j not in leaves}
        for j, block in sorted(self.leaf_fetcher.fetch(missing).items()):
            self.dev.pwrite(self.leaf_offset(j), block)
            leaves[j] = block
        fetch: list[int] = []
        copy: list[int] = []
        for j in groups:
            first, count = self.group_span(j)
            want = leaves[j]
            t, a = on_target[j], on_active[j]
            copies = len(copy)
            if t is None and a is None:  # nothing to reuse (a fresh install): fetch it all
                fetch.extend(range(first, first + count))
            else:
                for i in range(count):
                    d = want[i * verity.DIGEST_SIZE : (i + 1) * verity.DIGEST_SIZE]
                    sl = slice(i * verity.DIGEST_SIZE, (i + 1) * verity.DIGEST_SIZE)
                    if t is not None and t[sl] == d:
                        self.inst._reused += BLOCK
                    elif a is not None and a[sl] == d:
                        copy.append(first + i)
                    else:
                        fetch.append(first + i)
            if j in probed:  # a probe that found nothing to copy (also past its end) cools
                self.cold = 0 if len(copy) > copies else self.cold + 1
            if len(copy) == copies:
                active_data.pop(j, None)  # nothing to copy from it: let it go
        for b0, n in runs(copy):
            # Written from the bytes whose digests matched their leaf entries above.
            for j, i, count in group_pieces(b0, n):
                piece = memoryview(active_data[j])[i * BLOCK : (i + count) * BLOCK]
                self.dev.pwrite((j * GROUP + i) * BLOCK, piece)
            self.inst._reused += n * BLOCK
            self.unflushed += n * BLOCK
        expected = self._expected(groups, leaves)
        fetch = self.copy_moved(fetch, expected)
        wanted = list(runs(fetch, self.source.merge_gap // BLOCK))
        spans = [(self.part.data_offset + b0 * BLOCK, n * BLOCK) for b0, n in wanted]
        # Fetched together (as few requests as the source allows), checked and written
        # a span at a time (flat memory). Closed before the next batch: the read-ahead
        # thread is done with these answers when the next batch's requests start.
        with contextlib.closing(prefetched(self.source.read_spans(spans), self.pool)) as ahead:
            stream = ExactReader(ahead)
            for b0, n in wanted:
                for first in range(b0, b0 + n, SPAN_BLOCKS):
                    count = min(SPAN_BLOCKS, b0 + n - first)
                    data = stream.take(count * BLOCK)
                    self.inst.write_checked(
                        self.dev, self.checker, first, data, expected(first, count)
                    )
                self.unflushed += n * BLOCK
            stream.finish()

    def copy_moved(self, fetch: list[int], expected: Callable[[int, int], bytes]) -> list[int]:
        """Copy the blocks of `fetch` the active slot holds elsewhere; return the rest.

        A block the index finds anchors a guess for its neighbours in `fetch`, up to
        `stride - 1` blocks away: a moved file is a run of blocks, and the index
        may hold only every `stride`-th block. Every guess is read, hashed and
        compared with its signed leaf entry, and only blocks that match are
        written, from the bytes checked. In the next round a guess that failed is
        looked up itself, or guessed again from a neighbour copied meanwhile (where
        two moved runs meet), until no new guess is left.
        """
        if self.moved is None:
            return fetch
        wanted = set(fetch)
        looked: set[int] = set()  # blocks looked up in the index
        tried: set[tuple[int, int]] = set()  # (block, active block) guesses made
        source: dict[int, int] = {}  # block -> the active block it was copied from
        pending = fetch
        while pending:
            guesses: dict[int, int] = {}  # block -> where the active slot may hold it
            for b in pending:
                if b in guesses:
                    continue
                if b not in looked:
                    looked.add(b)
                    c = self.moved.find(expected(b, 1))
                    if c is not None:
                        _guess_run(b, c, self.moved.stride - 1, wanted, guesses)
                        continue
                for c in (source.get(b - 1, -2) + 1, source.get(b + 1, 0) - 1):
                    if c >= 0 and (b, c) not in tried:
                        guesses[b] = c
                        break
            guesses = {b: c for b, c in guesses.items() if (b, c) not in tried}
            if not guesses:
                break
            tried.update(guesses.items())
            copied = self._copy_guesses(sorted(guesses.items()), expected)
            source.update((b, guesses[b]) for b in copied)
            wanted -= copied
            near = {n for b in copied for n in (b - 1, b + 1)}
            pending = sorted(wanted & (near | guesses.keys()))
        return [b for b in fetch if b in wanted]

    def _copy_guesses(
        self, guesses: list[tuple[int, int]], expected: Callable[[int, int], bytes]
    ) -> set[int]:
        """Copy each (block, active block) pair whose active block matches; which did."""
        if self.active is None:
            return set()
        copied: set[int] = set()
        size = verity.DIGEST_SIZE
        for b0, c0, asked in paired_runs(guesses, SPAN_BLOCKS):
            data = memoryview(self.active.pread(c0 * BLOCK, asked * BLOCK))
            n = len(data) // BLOCK  # fewer where the slot ends early
            got = self.inst.block_digests(self.vinfo.salt, data[: n * BLOCK])
            want = expected(b0, n)
            same = [
                i
                for i in range(n)
                if got[i * size : (i + 1) * size] == want[i * size : (i + 1) * size]
            ]
            for i0, k in runs(same):
                self.dev.pwrite((b0 + i0) * BLOCK, data[i0 * BLOCK : (i0 + k) * BLOCK])
                copied.update(range(b0 + i0, b0 + i0 + k))
        self.inst._reused += len(copied) * BLOCK
        self.unflushed += len(copied) * BLOCK
        return copied

    def _expected(self, groups: range, leaves: dict[int, bytes]) -> Callable[[int, int], bytes]:
        def expected(first: int, count: int) -> bytes:
            return b"".join(
                leaves[j][i * verity.DIGEST_SIZE : (i + n) * verity.DIGEST_SIZE]
                for j, i, n in group_pieces(first, count)
            )

        return expected


def _guess_run(b: int, c: int, reach: int, wanted: set[int], guesses: dict[int, int]) -> None:
    """Guess that the wanted blocks around b, as far as `reach` away, moved with it to c.

    Each block of a moved run of `stride` or more blocks lies within stride - 1 of
    one the index holds: `reach` is stride - 1.
    """
    lo = b
    while lo > b - reach and lo - 1 in wanted and lo - 1 not in guesses and c > b - lo:
        lo -= 1
    hi = b
    while hi < b + reach and hi + 1 in wanted:
        hi += 1
    guesses.update((x, c + x - b) for x in range(lo, hi + 1))


def _digests_of(group: tuple[bytes, bytes] | None) -> bytes | None:
    return None if group is None else group[1]


def open_control(config: DeviceConfig) -> SlotControl:
    """The boot environment and slot state of the configured device.

    Raises:
        UsageError: the configuration's environment location is malformed.
        DeviceError: the environment cannot be read.
    """
    try:
        return SlotControl.open(
            config.board, env_override=config.env_override, cmdline_path=config.cmdline
        )
    except ConfigError as e:
        raise UsageError(f"device config: boot environment: {e}") from e
    except BootctlError as e:
        raise DeviceError(f"boot environment: {e}") from e
