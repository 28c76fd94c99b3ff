"""The anti-rollback floor in force: a pure rule over the stored floor, slot records and boot state.

The floor rises to the security version of a slot once that slot is good: it is
booted, first in the boot order and has its full tries back (what mark-good
restores). Its security version comes from the slot's record, which counts only
while the environment gives the slot the recorded root hash: the record is
written just before the switch, so a power cut between the two leaves a record
that the environment does not confirm (nor boots).
"""

from __future__ import annotations

from collections.abc import Mapping

from bootctl.state import BootState

from .statedir import SlotRecord


def confirmed(records: Mapping[str, SlotRecord], st: BootState) -> dict[str, SlotRecord]:
    """The records whose slot the environment gives the recorded root hash."""
    roots = {s.name: s.verity.root_hash for s in st.slots if s.verity is not None}
    return {name: r for name, r in records.items() if roots.get(name) == r.root_hash}


def floor_in_force(
    stored: int,
    records: Mapping[str, SlotRecord],
    st: BootState,
    booted: str | None,
    full_tries: int,
) -> int:
    """The floor an install must respect.

    Args:
        stored: the floor in the state directory.
        records: what the updater installed into each slot (confirmed or not).
        st: the slot state of the boot environment.
        booted: the running slot (None: unknown, so none is good).
        full_tries: the board's tries, which mark-good restores.
    """
    if booted is None:
        return stored
    record = confirmed(records, st).get(booted)
    if record and st.primary == booted and st.slot(booted).tries >= full_tries:
        return max(stored, record.security_version)
    return stored
