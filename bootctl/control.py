"""`SlotControl`: the slot operations of `abctl` and the updater, over an environment store.

Every operation that changes state is one load, a pure transformation from `bootctl.state`,
and one atomic `EnvStore.save`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootctl import state
from bootctl.board import BoardConfig
from bootctl.envstore import EnvStore, GrubEnvStore, UBootEnvStore
from bootctl.errors import (
    BootedSlotError,
    ConfigError,
    SlotError,
    SlotRefusedError,
    StorageError,
)
from bootctl.state import SlotVerity

__all__ = [
    "LOADER_IMAGE_ID",
    "SlotControl",
    "SlotInfo",
    "SlotStatus",
    "SlotVerity",
    "booted_slot_from_cmdline",
    "booted_slot_from_image_id",
]

_CMDLINE_KEYS = ("abupdate.slot=", "rauc.slot=")
#: Where systemd-stub leaves the path of the UKI that was started (efivarfs: four attribute
#: bytes, then the path in UTF-16LE), when no boot loader set it before: on a `uki` board
#: the signed command line is the same for every slot, so this names the booted one.
LOADER_IMAGE_ID = Path(
    "/sys/firmware/efi/efivars/LoaderImageIdentifier-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
)


def booted_slot_from_cmdline(cmdline: str) -> str | None:
    """The slot named by `abupdate.slot=` (or `rauc.slot=`) on a kernel command line.

    The last occurrence wins, as with the kernel's own parameters; `abupdate.slot=` is
    preferred over `rauc.slot=`.
    """
    found: dict[str, str] = {}
    for word in cmdline.split():
        for key in _CMDLINE_KEYS:
            if word.startswith(key):
                found[key] = word[len(key) :]
    for key in _CMDLINE_KEYS:
        if found.get(key):
            return found[key]
    return None


def booted_slot_from_image_id(board: BoardConfig, value: bytes) -> str | None:
    """The slot whose boot folder holds the image named by a LoaderImageIdentifier value
    (e.g. `\\slot-B\\boot.efi`), or None if it names no slot's boot image."""
    path = value[4:].decode("utf-16-le", errors="replace").split("\0", 1)[0]
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    if len(parts) < 2 or parts[-1] != board.boot.image:
        return None
    folder = "/".join(parts[:-1])
    for slot in board.slots:
        if slot.boot_dir == folder:
            return slot.name
    return None


@dataclass(frozen=True)
class SlotInfo:
    """Status of one slot.

    Attributes:
        name: Slot name.
        device: Device Linux writes the slot to.
        tries_left: Boot attempts left (0 if the counter is missing or malformed).
        verity: The recorded `HASH:SALT:BLOCKS` value ("" if none).
        verity_valid: Whether `verity` is well-formed.
        bootable: Whether the boot script would pick the slot when its turn comes.
        booted: Whether this is the running slot.
    """

    name: str
    device: str
    tries_left: int
    verity: str
    verity_valid: bool
    bootable: bool
    booted: bool


@dataclass(frozen=True)
class SlotStatus:
    """What `abctl status` reports.

    Attributes:
        board: Board config name.
        bootloader: `u-boot` or `grub`.
        env_location: Where the environment lives.
        env_valid: False if no valid environment exists (values shown are the defaults).
        order: Known slots in boot order.
        primary: First slot in the boot order.
        next_boot: Slot the bootloader will pick next (None: all exhausted, counters reset).
        booted: Running slot, from the kernel command line (None if unknown).
        slots: Per-slot status, in config order.
        problems: Malformed values found in the environment.
    """

    board: str
    bootloader: str
    env_location: str
    env_valid: bool
    order: tuple[str, ...]
    primary: str | None
    next_boot: str | None
    booted: str | None
    slots: tuple[SlotInfo, ...]
    problems: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the `abctl status --json` document)."""
        return {
            "board": self.board,
            "bootloader": self.bootloader,
            "env": {"location": self.env_location, "valid": self.env_valid},
            "order": list(self.order),
            "primary": self.primary,
            "next_boot": self.next_boot,
            "booted": self.booted,
            "slots": {
                s.name: {
                    "device": s.device,
                    "tries_left": s.tries_left,
                    "verity": s.verity,
                    "verity_valid": s.verity_valid,
                    "bootable": s.bootable,
                    "booted": s.booted,
                }
                for s in self.slots
            },
            "problems": list(self.problems),
        }


def _store_for(board: BoardConfig, env_override: Sequence[str] | str | Path | None) -> EnvStore:
    defaults = state.default_env(board.slot_names, board.tries)
    if board.bootloader == "u-boot":
        if isinstance(env_override, (str, Path)):
            raise ConfigError("a U-Boot env override is a list of fw_env.config lines")
        lines = board.env.fw_env_config if env_override is None else env_override
        store = UBootEnvStore.from_config(list(lines), defaults)
        for loc in store.locations:
            if loc.size != board.env.uboot_size:
                raise ConfigError(
                    f"fw_env.config size {loc.size:#x} differs from the board's env.uboot_size "
                    f"{board.env.uboot_size:#x}"
                )
        return store
    if env_override is not None and not isinstance(env_override, (str, Path)):
        raise ConfigError("a GRUB env override is the path of the grubenv file")
    return GrubEnvStore(env_override or board.env.grubenv, defaults)


class SlotControl:
    """Slot state operations for one board.

    Args:
        board: The board config.
        store: Where the environment lives.
        cmdline_text: The kernel command line (to find the booted slot).
        image_id: The LoaderImageIdentifier value (`uki` boards; b"" if none).
    """

    def __init__(
        self, board: BoardConfig, store: EnvStore, cmdline_text: str, image_id: bytes = b""
    ) -> None:
        self.board = board
        self.store = store
        self.cmdline_text = cmdline_text
        self.image_id = image_id

    @classmethod
    def open(
        cls,
        board: BoardConfig,
        *,
        env_override: Sequence[str] | str | Path | None = None,
        cmdline_path: str | Path = "/proc/cmdline",
        image_id_path: str | Path = LOADER_IMAGE_ID,
    ) -> SlotControl:
        """Create a `SlotControl` for a board's environment and the running kernel.

        Args:
            board: The board config.
            env_override: Replaces the board's env location: `fw_env.config` lines (U-Boot)
                or a `grubenv` path (GRUB). Tests and the updater use plain files this way.
            cmdline_path: File holding the kernel command line. A missing file means no
                slot is known to be booted.
            image_id_path: The LoaderImageIdentifier file, read on `uki` boards when the
                command line names no slot (missing: none).

        Raises:
            ConfigError: The override does not fit the bootloader, or is invalid.
            StorageError: The command line file exists but cannot be read.
        """
        store = _store_for(board, env_override)
        try:
            cmdline = Path(cmdline_path).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            cmdline = ""
        except OSError as e:
            raise StorageError(f"cannot read {cmdline_path}: {e.strerror}") from e
        image_id = b""
        if board.boot.chain == "uki":
            try:
                image_id = Path(image_id_path).read_bytes()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise StorageError(f"cannot read {image_id_path}: {e.strerror}") from e
        return cls(board, store, cmdline, image_id)

    # --- queries -----------------------------------------------------------------------------

    def booted_slot(self) -> str | None:
        """The running slot: from the kernel command line, or on a `uki` board from the
        image systemd-stub says it was started as; None if not booted by our scripts.

        Raises:
            SlotError: The command line names a slot this board does not have.
        """
        slot = booted_slot_from_cmdline(self.cmdline_text)
        if slot is None and self.image_id:
            return booted_slot_from_image_id(self.board, self.image_id)
        if slot is not None and slot not in self.board.slot_names:
            raise BootedSlotError(
                f"kernel command line names slot {slot!r}, which board {self.board.name} "
                "does not have"
            )
        return slot

    def env(self) -> dict[str, str]:
        """All variables of the environment (the defaults if it is not valid)."""
        return self.store.load()

    def boot_state(self) -> state.BootState:
        """The slot state the environment holds (malformed values are problems, not errors).

        Raises:
            EnvSizeError: The environment does not match its configured size.
            StorageError: It cannot be read.
        """
        return self._parse(self.store.load())

    def _parse(self, env: Mapping[str, str]) -> state.BootState:
        needs = self.board.boot.env_verity_boots
        return state.parse_state(env, self.board.slot_names, needs_verity=needs)

    def status(self) -> SlotStatus:
        """Read the environment and report the slot state (never fails on malformed values).

        Raises:
            EnvSizeError: The environment does not match its configured size.
            StorageError: It cannot be read.
        """
        env = self.store.load()
        parsed = self._parse(env)
        problems = list(parsed.problems)
        try:
            booted = self.booted_slot()
        except SlotError as e:
            booted = None
            problems.append(str(e))
        if self.store.defaulted:
            problems.insert(0, f"no valid environment in {self.store.describe()}: showing defaults")
        decision = state.select_boot(
            env,
            self.board.slot_names,
            self.board.tries,
            needs_verity=self.board.boot.env_verity_boots,
        )
        slots = tuple(
            SlotInfo(
                name=s.name,
                device=self.board.slot(s.name).device,
                tries_left=s.tries,
                verity=s.verity_raw,
                verity_valid=s.verity is not None,
                bootable=s.bootable,
                booted=s.name == booted,
            )
            for s in parsed.slots
        )
        return SlotStatus(
            board=self.board.name,
            bootloader=self.board.bootloader,
            env_location=self.store.describe(),
            env_valid=not self.store.defaulted,
            order=parsed.order,
            primary=parsed.primary,
            next_boot=decision.slot,
            booted=booted,
            slots=slots,
            problems=tuple(problems),
        )

    # --- changes -----------------------------------------------------------------------------

    def _update(
        self, change: Callable[[dict[str, str]], dict[str, str]], init: bool = False
    ) -> None:
        """Load, apply a pure change, save: one atomic write, under the store's lock.

        A change that leaves a valid environment as it is writes nothing (flash wear:
        mark-good runs on every boot), but flushes what it read: an earlier write
        killed between its rename and its directory's fsync reads as done, and the
        caller goes on as if it were (an install then writes a slot it made
        unbootable only in the page cache).
        """
        with self.store.locked():
            env = self.store.load()
            new = change(env)
            if new != env or self.store.defaulted or init:
                self.store.save(new, init=init)
            else:
                self.store.flush()

    def _check_slot(self, slot: str) -> None:
        if slot not in self.board.slot_names:
            raise SlotError(
                f"unknown slot {slot!r} (board {self.board.name} has "
                f"{', '.join(self.board.slot_names)})"
            )

    def _refuse_booted(self, slot: str, action: str, force: bool, then: str = "") -> None:
        """Refuse to `action` the booted slot (`then`: the words after the slot) unless forced."""
        if not force and slot == self.booted_slot():
            raise SlotRefusedError(
                f"refusing to {action} the booted slot {slot}{then} (--force overrides)"
            )

    def mark_good(self) -> str:
        """Give the booted slot its full tries back (run once the system is healthy).

        Returns:
            The slot marked good.

        Raises:
            SlotError: No slot is known to be booted.
            EnvError, StorageError: The environment cannot be read or written.
        """
        slot = self.booted_slot()
        if slot is None:
            raise BootedSlotError(
                "cannot tell the booted slot: no abupdate.slot= on the kernel command line"
            )
        self._update(
            lambda env: state.mark_good(env, slot, self.board.slot_names, self.board.tries)
        )
        return slot

    def mark_bad(self, slot: str, force: bool = False) -> None:
        """Set the slot's tries to 0 so the bootloader skips it.

        Raises:
            SlotError: Unknown slot, or the booted slot without `force`.
            EnvError, StorageError: The environment cannot be read or written.
        """
        self._check_slot(slot)
        self._refuse_booted(slot, "mark bad", force)
        self._update(lambda env: state.mark_bad(env, slot, self.board.slot_names))

    def invalidate(self, slot: str, force: bool = False) -> None:
        """Make a slot unbootable before it is rewritten: no tries and no verity value.

        One environment write, none if the slot is so already (a refused install then
        leaves the environment byte-identical).

        Raises:
            SlotError: Unknown slot, or the booted slot without `force`.
            EnvError, StorageError: The environment cannot be read or written.
        """
        self._check_slot(slot)
        self._refuse_booted(slot, "invalidate", force)
        names = self.board.slot_names
        self._update(
            lambda env: state.set_verity(state.mark_bad(env, slot, names), slot, None, names)
        )

    def set_primary(self, slot: str, verity: SlotVerity | None, force: bool = False) -> None:
        """Make a freshly installed slot the next one to boot, in one environment write.

        Records `verity` (None: keeps the value recorded, read in the same locked
        load and save), puts the slot first in `BOOT_ORDER` and gives it full tries.

        Raises:
            SlotError: Unknown slot, the booted slot without `force`, or no verity
                value given or recorded.
            EnvError, StorageError: The environment cannot be read or written.
        """
        self._check_slot(slot)
        self._refuse_booted(slot, "make", force, then=" primary")
        names, tries = self.board.slot_names, self.board.tries

        def change(env: dict[str, str]) -> dict[str, str]:
            value = verity
            if value is None:
                recorded = env.get(state.verity_var(slot), "")
                if not recorded:
                    raise SlotError(f"slot {slot} has no verity value; pass --verity")
                value = SlotVerity.from_env(recorded)
            return state.set_primary(env, slot, value, names, tries)

        self._update(change)

    def set_verity(self, slot: str, verity: SlotVerity | None, force: bool = False) -> None:
        """Record (or clear, with None) a slot's dm-verity parameters.

        Raises:
            SlotError: Unknown slot, or the booted slot without `force`.
            EnvError, StorageError: The environment cannot be read or written.
        """
        self._check_slot(slot)
        self._refuse_booted(slot, "change the verity parameters of", force)
        self._update(lambda env: state.set_verity(env, slot, verity, self.board.slot_names))

    def reset(self) -> None:
        """Default boot order and full tries for every slot (verity values are kept).

        Raises:
            EnvError, StorageError: The environment cannot be read or written.
        """
        self._update(lambda env: state.reset(env, self.board.slot_names, self.board.tries))

    def init(self, verity: dict[str, SlotVerity] | None = None) -> None:
        """Create the environment, also over a corrupt one.

        A valid environment keeps its other variables and verity values; order and counters
        are reset. A corrupt or missing one is replaced by the board's defaults.

        Args:
            verity: Verity parameters to record per slot (e.g. when building an image).

        Raises:
            SlotError: `verity` names an unknown slot.
            EnvError, StorageError: The environment cannot be written.
        """
        names = self.board.slot_names
        for slot in verity or {}:
            self._check_slot(slot)

        def change(env: dict[str, str]) -> dict[str, str]:
            new = state.reset(env, names, self.board.tries)
            for name in names:
                new.setdefault(state.verity_var(name), "")
            for slot, value in (verity or {}).items():
                new = state.set_verity(new, slot, value, names)
            return new

        self._update(change, init=True)
