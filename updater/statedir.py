"""What the updater remembers outside the slots: anti-rollback floor, slot records, last result.

Each file is small JSON, replaced crash-safely; the directory is created durably
(its parent fsynced), so a file written into it survives a power cut. The floor lives here, not in a
slot, so installing an old image cannot lower it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, get_type_hints

from bootctl.atomicfile import atomic_write, make_dirs, sync_file

from .errors import DeviceError

FLOOR_FILE = "security-floor.json"
SLOTS_FILE = "slots.json"
LAST_FILE = "last-install.json"


@dataclass(frozen=True)
class SlotRecord:
    """What was installed into a slot."""

    version: str
    security_version: int
    compatible: str
    root_hash: str
    installed_at: int


#: What to do about each state file when it is damaged.
_REPAIR = {
    FLOOR_FILE: "restore it from a copy, or write the device's floor into it as"
    ' {"security_floor": N} (a floor is never guessed)',
    SLOTS_FILE: "remove it to forget what each slot holds; the next install into a slot"
    " records it again",
    LAST_FILE: "remove it to forget the last install's result",
}


def _is_record(value: Any) -> bool:
    """Whether `value` (parsed JSON) is a `SlotRecord`: its fields, each of its type."""
    wanted = get_type_hints(SlotRecord)
    return (
        isinstance(value, dict)
        and value.keys() == wanted.keys()
        and all(type(value[name]) is kind for name, kind in wanted.items())
    )


class StateDir:
    """The updater's state directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self, name: str, default: Any) -> Any:
        path = self.path / name
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            return default
        except OSError as e:
            raise DeviceError(f"cannot read state file {path}: {e.strerror or e}") from e
        except ValueError as e:  # torn or empty (a power cut on a file system without journal)
            raise self._damaged(name, f"is not JSON ({e})") from e
        except RecursionError as e:  # arrays or objects nested deeper than the parser goes
            raise self._damaged(name, "is nested too deeply to be read") from e

    def _damaged(self, name: str, what: str) -> DeviceError:
        """The error for a state file that holds what it should not, and what to do."""
        repair = _REPAIR.get(name, "restore it from a copy, or remove it")
        return DeviceError(f"state file {self.path / name} {what}: {repair}")

    def _save(self, name: str, value: Any) -> None:
        try:
            make_dirs(self.path)
            atomic_write(self.path / name, json.dumps(value, indent=2, sort_keys=True).encode())
        except OSError as e:
            reason = e.strerror or e
            raise DeviceError(f"cannot write state file {self.path / name}: {reason}") from e

    def security_floor(self) -> int:
        """The lowest security version this device accepts (0 while no floor was stored).

        Raises:
            DeviceError: the floor file is there but unreadable, or holds no floor (a
                JSON object whose `security_floor` is an integer of 0 or more): a floor
                is never guessed, not even as 0.
        """
        raw = self._load(FLOOR_FILE, {"security_floor": 0})
        value = raw.get("security_floor") if isinstance(raw, dict) else None
        if type(value) is not int or value < 0:
            raise self._damaged(FLOOR_FILE, "holds no anti-rollback floor")
        return value

    def _flush(self, name: str) -> None:
        """Make a state file durable as it reads now (the file, and its folder for its name).

        A replacement killed between its rename and the folder's fsync reads as done
        but may not survive a power cut; a caller that finds nothing to change relies
        on what it read.
        """
        path = self.path / name
        try:
            sync_file(path)
        except FileNotFoundError:
            return  # nothing stored: nothing to make durable
        except OSError as e:
            raise DeviceError(f"cannot flush state file {path}: {e.strerror or e}") from e

    def raise_floor(self, value: int) -> bool:
        """Raise the floor to `value` (never lowers it). Returns whether it changed.

        Unchanged, the floor is flushed as it reads: it may be a raise whose process
        was killed before making it durable (see `_flush`).
        """
        if value <= self.security_floor():
            self._flush(FLOOR_FILE)
            return False
        self._save(FLOOR_FILE, {"security_floor": value})
        return True

    def slot_records(self) -> dict[str, SlotRecord]:
        """What was installed into each slot, by slot name (empty while nothing was).

        Raises:
            DeviceError: the records file is there but unreadable, or is not a JSON
                object of records with exactly `SlotRecord`'s fields and types.
        """
        raw = self._load(SLOTS_FILE, {})
        if isinstance(raw, dict) and all(_is_record(rec) for rec in raw.values()):
            return {name: SlotRecord(**rec) for name, rec in raw.items()}
        raise self._damaged(SLOTS_FILE, "holds no slot records")

    def record_slot(self, name: str, record: SlotRecord | None) -> None:
        """Remember what a slot holds (None: the slot is being rewritten)."""
        records = {k: asdict(v) for k, v in self.slot_records().items()}
        if record is None:
            records.pop(name, None)
        else:
            records[name] = asdict(record)
        self._save(SLOTS_FILE, records)

    def last_result(self) -> dict[str, Any] | None:
        value = self._load(LAST_FILE, None)
        return value if isinstance(value, dict) else None

    def record_result(self, result: dict[str, Any]) -> None:
        self._save(LAST_FILE, result)
