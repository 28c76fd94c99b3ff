"""Slot state model, pure: environment variables in, parsed state and new variables out.

Variables (docs/boot-protocol.md): `BOOT_ORDER`, `BOOT_<slot>_LEFT`, `BOOT_<slot>_VERITY`.
Parsing never raises on malformed values: it records a problem and treats the value the way
the boot scripts do (a counter that is not one decimal digit means no tries left).

`select_boot` is the selection the generated boot scripts implement, as a function.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bootctl import validators
from bootctl.errors import SlotError

__all__ = [
    "ORDER_VAR",
    "BootDecision",
    "BootState",
    "SlotState",
    "SlotVerity",
    "default_env",
    "left_var",
    "mark_bad",
    "mark_good",
    "parse_state",
    "reset",
    "select_boot",
    "set_primary",
    "set_verity",
    "verity_var",
]

ORDER_VAR = "BOOT_ORDER"
_DIGIT_RE = re.compile(r"[0-9]", re.ASCII)
_BLOCKS_RE = re.compile(r"[1-9][0-9]{0,18}", re.ASCII)
_MAX_BLOCKS = 2**63 - 1
_SHOWN = 40  # characters of a malformed value quoted in a problem report


def left_var(slot: str) -> str:
    """Name of a slot's tries-left counter."""
    return f"BOOT_{slot}_LEFT"


def verity_var(slot: str) -> str:
    """Name of a slot's dm-verity parameter variable."""
    return f"BOOT_{slot}_VERITY"


def _show(value: str) -> str:
    return repr(value if len(value) <= _SHOWN else value[:_SHOWN] + "...")


@dataclass(frozen=True)
class SlotVerity:
    """dm-verity parameters of a slot image (sha256, 4096-byte blocks, format 1).

    Attributes:
        root_hash: Root hash, 64 lowercase hex digits.
        salt: Salt, lowercase hex (`validators.MIN_SALT_SIZE`..`MAX_SALT_SIZE` bytes).
        data_blocks: Number of 4096-byte data blocks; the hash area starts right after them.
    """

    root_hash: str
    salt: str
    data_blocks: int

    def __post_init__(self) -> None:
        if validators.parse_hex(self.root_hash, 32, 32) is None:
            raise SlotError("verity root hash must be 64 lowercase hex digits (sha256)")
        lo, hi = validators.MIN_SALT_SIZE, validators.MAX_SALT_SIZE
        if validators.parse_hex(self.salt, lo, hi) is None:
            raise SlotError(f"verity salt must be {2 * lo}..{2 * hi} lowercase hex digits")
        if not 1 <= self.data_blocks <= _MAX_BLOCKS:
            raise SlotError(f"verity data_blocks {self.data_blocks} out of range")

    @property
    def hash_offset(self) -> int:
        """Byte offset of the hash area on the slot (`veritysetup --hash-offset`)."""
        return self.data_blocks * 4096

    def to_env(self) -> str:
        """The `BOOT_<slot>_VERITY` value: `<root_hash>:<salt>:<data_blocks>`."""
        return f"{self.root_hash}:{self.salt}:{self.data_blocks}"

    @classmethod
    def from_env(cls, value: str) -> SlotVerity:
        """Parse a `BOOT_<slot>_VERITY` value.

        Raises:
            SlotError: The value is malformed.
        """
        parts = value.split(":")
        if len(parts) != 3 or not _BLOCKS_RE.fullmatch(parts[2]):
            raise SlotError(f"malformed verity value {_show(value)} (want HASH:SALT:BLOCKS)")
        return cls(parts[0], parts[1], int(parts[2]))


@dataclass(frozen=True)
class SlotState:
    """Parsed state of one slot.

    Attributes:
        name: Slot name.
        tries: Tries left (0 if missing or malformed).
        verity: Parsed verity parameters, or None if empty, missing or malformed.
        verity_raw: The raw `BOOT_<slot>_VERITY` value ("" if missing).
        in_order: Whether the slot appears in the boot order.
        needs_verity: Whether the boot script needs a verity value to pick the slot
            (`BootConfig.env_verity_boots`: the `script` chain).
    """

    name: str
    tries: int
    verity: SlotVerity | None
    verity_raw: str
    in_order: bool
    needs_verity: bool = True

    @property
    def bootable(self) -> bool:
        """Whether the boot scripts would pick this slot when its turn comes."""
        has_verity = self.verity_raw != "" or not self.needs_verity
        return self.in_order and self.tries > 0 and has_verity


@dataclass(frozen=True)
class BootState:
    """Parsed slot state of a whole environment.

    Attributes:
        order: Known slots in boot order, as the boot scripts walk it (duplicates dropped).
        slots: State of every configured slot, in config order.
        problems: One line per malformed or suspicious value.
    """

    order: tuple[str, ...]
    slots: tuple[SlotState, ...]
    problems: tuple[str, ...]

    def slot(self, name: str) -> SlotState:
        """State of the slot called `name` (KeyError if unknown)."""
        for s in self.slots:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def primary(self) -> str | None:
        """First slot in the boot order, or None if the order names no known slot."""
        return self.order[0] if self.order else None


def _order_words(env: Mapping[str, str], slot_names: Sequence[str]) -> tuple[list[str], bool]:
    """The words the boot scripts loop over, and whether the board's default was used."""
    raw = env.get(ORDER_VAR)
    if raw is None or raw == "":
        return list(slot_names), True
    return raw.split(), False


def parse_state(
    env: Mapping[str, str], slot_names: Sequence[str], *, needs_verity: bool = True
) -> BootState:
    """Parse the slot variables of an environment without ever raising on their values.

    Args:
        env: Environment variables.
        slot_names: Configured slots in default order.
        needs_verity: Whether a slot needs a verity value to boot (`env_verity_boots`).

    Returns:
        The state, with malformed values reported in `problems`.
    """
    problems: list[str] = []
    words, defaulted = _order_words(env, slot_names)
    if defaulted:
        problems.append(f"{ORDER_VAR} is missing or empty; using {' '.join(slot_names)}")
    order: list[str] = []
    for word in words:
        if word not in slot_names:
            problems.append(f"{ORDER_VAR} names unknown slot {_show(word)} (ignored)")
        elif word in order:
            problems.append(f"{ORDER_VAR} names slot {word} twice")
        else:
            order.append(word)
    if not defaulted and env.get(ORDER_VAR, "") != " ".join(words):
        problems.append(f"{ORDER_VAR} has irregular whitespace: {_show(env[ORDER_VAR])}")
    slots: list[SlotState] = []
    for name in slot_names:
        raw_left = env.get(left_var(name))
        tries = 0
        if raw_left is None:
            problems.append(f"{left_var(name)} is missing (no tries left)")
        elif _DIGIT_RE.fullmatch(raw_left):
            tries = int(raw_left)
        else:
            problems.append(
                f"{left_var(name)}={_show(raw_left)} is not a digit 0-9 (no tries left)"
            )
        verity_raw = env.get(verity_var(name), "")
        verity = None
        if verity_raw:
            try:
                verity = SlotVerity.from_env(verity_raw)
            except SlotError as e:
                problems.append(f"{verity_var(name)}: {e} (the slot will fail to boot)")
        if name not in order:
            problems.append(f"slot {name} is not in {ORDER_VAR} (never booted)")
        slots.append(SlotState(name, tries, verity, verity_raw, name in order, needs_verity))
    return BootState(tuple(order), tuple(slots), tuple(problems))


def default_env(slot_names: Sequence[str], tries: int) -> dict[str, str]:
    """Variables of a fresh environment: default order, full tries, no verity values."""
    env = {ORDER_VAR: " ".join(slot_names)}
    env.update({left_var(s): str(tries) for s in slot_names})
    env.update({verity_var(s): "" for s in slot_names})
    return env


def _check_slot(slot: str, slot_names: Sequence[str]) -> None:
    if slot not in slot_names:
        raise SlotError(f"unknown slot {slot!r} (slots: {', '.join(slot_names)})")


def mark_good(
    env: Mapping[str, str], slot: str, slot_names: Sequence[str], tries: int
) -> dict[str, str]:
    """The booted slot is healthy: give it back its full tries.

    Raises:
        SlotError: Unknown slot.
    """
    _check_slot(slot, slot_names)
    return {**env, left_var(slot): str(tries)}


def mark_bad(env: Mapping[str, str], slot: str, slot_names: Sequence[str]) -> dict[str, str]:
    """Never boot the slot again until it is installed or marked good: no tries left.

    Raises:
        SlotError: Unknown slot.
    """
    _check_slot(slot, slot_names)
    return {**env, left_var(slot): "0"}


def set_verity(
    env: Mapping[str, str], slot: str, verity: SlotVerity | None, slot_names: Sequence[str]
) -> dict[str, str]:
    """Record (or, with None, clear) the slot's dm-verity parameters.

    Raises:
        SlotError: Unknown slot.
    """
    _check_slot(slot, slot_names)
    return {**env, verity_var(slot): "" if verity is None else verity.to_env()}


def set_primary(
    env: Mapping[str, str],
    slot: str,
    verity: SlotVerity,
    slot_names: Sequence[str],
    tries: int,
) -> dict[str, str]:
    """What an install does last: record verity, put the slot first with full tries.

    The other known slots keep their relative order; unknown names are dropped from the
    order and configured slots missing from it are appended.

    Raises:
        SlotError: Unknown slot.
    """
    _check_slot(slot, slot_names)
    words, _ = _order_words(env, slot_names)
    rest = [w for w in dict.fromkeys(words) if w in slot_names and w != slot]
    rest += [s for s in slot_names if s not in rest and s != slot]
    return {
        **env,
        ORDER_VAR: " ".join([slot, *rest]),
        left_var(slot): str(tries),
        verity_var(slot): verity.to_env(),
    }


def reset(env: Mapping[str, str], slot_names: Sequence[str], tries: int) -> dict[str, str]:
    """Default boot order and full tries for every slot; verity values are kept."""
    new = {**env, ORDER_VAR: " ".join(slot_names)}
    new.update({left_var(s): str(tries) for s in slot_names})
    return new


@dataclass(frozen=True)
class BootDecision:
    """Outcome of one pass of the boot script.

    Attributes:
        slot: The slot booted, or None for the all-exhausted outcome (counters reset, board
            reset, nothing booted).
        env: The environment the script saves before booting (or resetting).
    """

    slot: str | None
    env: dict[str, str]


def select_boot(
    env: Mapping[str, str], slot_names: Sequence[str], tries: int, *, needs_verity: bool = True
) -> BootDecision:
    """One boot, exactly as the generated U-Boot and GRUB scripts do it.

    Walk `BOOT_ORDER` (the board's order if missing or empty); take the first configured slot
    with a counter "1".."9" (and, where `needs_verity`, a non-empty verity value); decrement
    it. If none qualifies, set every counter to `tries` and boot nothing (the board resets).

    Args:
        env: Environment before the boot.
        slot_names: Configured slots.
        tries: The board's tries per slot.
        needs_verity: Whether a slot needs a verity value to boot (`env_verity_boots`).

    Returns:
        The slot booted (or None) and the saved environment.
    """
    words, defaulted = _order_words(env, slot_names)
    new = dict(env)
    if defaulted:
        new[ORDER_VAR] = " ".join(slot_names)
    for word in words:
        if word not in slot_names:
            continue
        left = env.get(left_var(word), "")
        has_verity = bool(env.get(verity_var(word), "")) or not needs_verity
        if has_verity and _DIGIT_RE.fullmatch(left) and int(left) > 0:
            new[left_var(word)] = str(int(left) - 1)
            return BootDecision(word, new)
    for s in slot_names:
        new[left_var(s)] = str(tries)
    return BootDecision(None, new)
