"""Pure slot state model: parsing of malformed values, operations, and boot-selection properties."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootctl import state
from bootctl.errors import SlotError
from bootctl.state import SlotVerity, parse_state, select_boot

SLOTS = ("A", "B")
TRIES = 3
V1 = SlotVerity("ab" * 32, "cd" * 32, 100)
V2 = SlotVerity("12" * 32, "34" * 16, 7)


def fresh() -> dict[str, str]:
    env = state.default_env(SLOTS, TRIES)
    return state.set_verity(env, "A", V1, SLOTS)


# --- SlotVerity -------------------------------------------------------------------------------


def test_verity_roundtrip() -> None:
    assert SlotVerity.from_env(V1.to_env()) == V1
    assert V1.to_env() == "ab" * 32 + ":" + "cd" * 32 + ":100"
    assert V1.hash_offset == 409600


@pytest.mark.parametrize(
    "value",
    [
        "",
        "abc",
        "ab" * 32 + ":cd:0",
        "ab" * 32 + ":cd:-1",
        "ab" * 32 + ":cd:1.5",
        "ab" * 32 + "::10",
        "ab" * 32 + ":c:10",
        "AB" * 32 + ":cd:10",
        "ab" * 31 + ":cd:10",
        "ab" * 32 + ":cd:10:extra",
        "ab" * 32 + ":cd: 10",
        "ab" * 32 + ":cd:" + "9" * 40,
    ],
)
def test_malformed_verity_is_refused(value: str) -> None:
    with pytest.raises(SlotError):
        SlotVerity.from_env(value)


# --- parsing ----------------------------------------------------------------------------------


def test_parse_fresh_state() -> None:
    parsed = parse_state(fresh(), SLOTS)
    assert parsed.order == ("A", "B")
    assert parsed.primary == "A"
    assert parsed.slot("A").tries == 3
    assert parsed.slot("A").verity == V1
    assert parsed.slot("A").bootable
    assert not parsed.slot("B").bootable  # no verity value
    assert parsed.problems == ()


@pytest.mark.parametrize(
    ("changes", "problem", "tries_a", "order"),
    [
        ({"BOOT_A_LEFT": "x"}, "BOOT_A_LEFT", 0, ("A", "B")),
        ({"BOOT_A_LEFT": "99999999999999999999999"}, "BOOT_A_LEFT", 0, ("A", "B")),
        ({"BOOT_A_LEFT": " 3"}, "BOOT_A_LEFT", 0, ("A", "B")),
        ({"BOOT_A_LEFT": "-1"}, "BOOT_A_LEFT", 0, ("A", "B")),
        ({"BOOT_A_LEFT": "03"}, "BOOT_A_LEFT", 0, ("A", "B")),
        ({"BOOT_ORDER": "A C B"}, "unknown slot 'C'", 3, ("A", "B")),
        ({"BOOT_ORDER": "B  A "}, "whitespace", 3, ("B", "A")),
        ({"BOOT_ORDER": "A A"}, "twice", 3, ("A",)),
        ({"BOOT_ORDER": ""}, "missing or empty", 3, ("A", "B")),
        ({"BOOT_ORDER": "   "}, "not in BOOT_ORDER", 3, ()),
        ({"BOOT_A_VERITY": "nonsense"}, "malformed verity", 3, ("A", "B")),
        ({"BOOT_ORDER": "\x00\xff\u2603"}, "unknown slot", 3, ()),
    ],
)
def test_malformed_values_are_reported_not_fatal(
    changes: dict[str, str], problem: str, tries_a: int, order: tuple[str, ...]
) -> None:
    parsed = parse_state({**fresh(), **changes}, SLOTS)
    assert any(problem in p for p in parsed.problems), parsed.problems
    assert parsed.slot("A").tries == tries_a
    assert parsed.order == order


def test_missing_counter_is_reported() -> None:
    env = fresh()
    del env["BOOT_B_LEFT"]
    parsed = parse_state(env, SLOTS)
    assert parsed.slot("B").tries == 0
    assert any("BOOT_B_LEFT is missing" in p for p in parsed.problems)


@given(st.dictionaries(st.text(max_size=20), st.text(max_size=80), max_size=12))
def test_parse_and_select_never_crash_on_arbitrary_envs(env: dict[str, str]) -> None:
    parsed = parse_state(env, SLOTS)
    assert set(parsed.order) <= set(SLOTS)
    decision = select_boot(env, SLOTS, TRIES)
    if decision.slot is not None:
        assert parsed.slot(decision.slot).bootable
        assert int(env[state.left_var(decision.slot)]) >= 1
    else:
        assert not any(s.bootable for s in parsed.slots)


# --- operations -------------------------------------------------------------------------------


def test_set_primary_is_one_change_with_full_tries() -> None:
    env = {**fresh(), "BOOT_B_LEFT": "0", "other": "kept"}
    new = state.set_primary(env, "B", V2, SLOTS, TRIES)
    assert new == {**env, "BOOT_ORDER": "B A", "BOOT_B_LEFT": "3", "BOOT_B_VERITY": V2.to_env()}
    # Unknown names are dropped from the order, missing slots appended.
    env["BOOT_ORDER"] = "X B"
    assert state.set_primary(env, "B", V2, SLOTS, TRIES)["BOOT_ORDER"] == "B A"


def test_mark_good_bad_reset() -> None:
    env = {**fresh(), "BOOT_A_LEFT": "1", "BOOT_ORDER": "B A"}
    assert state.mark_good(env, "A", SLOTS, TRIES)["BOOT_A_LEFT"] == "3"
    assert state.mark_bad(env, "A", SLOTS)["BOOT_A_LEFT"] == "0"
    reset = state.reset(env, SLOTS, TRIES)
    assert reset["BOOT_ORDER"] == "A B"
    assert reset["BOOT_A_LEFT"] == reset["BOOT_B_LEFT"] == "3"
    assert reset["BOOT_A_VERITY"] == V1.to_env()
    for op in (
        lambda: state.mark_good(env, "C", SLOTS, TRIES),
        lambda: state.mark_bad(env, "C", SLOTS),
        lambda: state.set_primary(env, "C", V1, SLOTS, TRIES),
        lambda: state.set_verity(env, "C", V1, SLOTS),
    ):
        with pytest.raises(SlotError, match="unknown slot"):
            op()


def test_select_boot_walks_the_order_and_decrements() -> None:
    env = state.set_primary(fresh(), "B", V2, SLOTS, TRIES)
    d = select_boot(env, SLOTS, TRIES)
    assert d.slot == "B"
    assert d.env["BOOT_B_LEFT"] == "2"
    assert d.env["BOOT_A_LEFT"] == "3"
    env = {**env, "BOOT_B_LEFT": "0"}
    d = select_boot(env, SLOTS, TRIES)
    assert d.slot == "A"
    assert d.env["BOOT_A_LEFT"] == "2"


def test_all_exhausted_resets_every_counter_and_boots_nothing() -> None:
    env = {**fresh(), "BOOT_A_LEFT": "0", "BOOT_B_LEFT": "0"}
    d = select_boot(env, SLOTS, TRIES)
    assert d.slot is None
    assert d.env["BOOT_A_LEFT"] == d.env["BOOT_B_LEFT"] == "3"
    assert select_boot(d.env, SLOTS, TRIES).slot == "A"


def test_on_a_signed_chain_a_slot_boots_on_its_tries_alone() -> None:
    """fit and uki boards: the root hash is in the signed boot image, so the defaults of a
    lost environment (no verity values) still boot a slot; the script chain needs one."""
    lost = state.default_env(SLOTS, TRIES)
    assert select_boot(lost, SLOTS, TRIES).slot is None  # script chain: reset, boot nothing
    d = select_boot(lost, SLOTS, TRIES, needs_verity=False)
    assert (d.slot, d.env["BOOT_A_LEFT"]) == ("A", "2")
    assert not state.parse_state(lost, SLOTS).slot("A").bootable
    assert state.parse_state(lost, SLOTS, needs_verity=False).slot("A").bootable
    installed = state.set_primary(fresh(), "B", V2, SLOTS, TRIES)
    being_written = state.set_verity(state.mark_bad(installed, "B", SLOTS), "B", None, SLOTS)
    assert not state.parse_state(being_written, SLOTS, needs_verity=False).slot("B").bootable
    assert select_boot(being_written, SLOTS, TRIES, needs_verity=False).slot == "A"


def test_missing_order_defaults_like_the_scripts() -> None:
    env = fresh()
    del env["BOOT_ORDER"]
    d = select_boot(env, SLOTS, TRIES)
    assert d.slot == "A"
    assert d.env["BOOT_ORDER"] == "A B"


# --- property tests of the boot logic ---------------------------------------------------------


@dataclass
class Device:
    """A simulated device: the environment plus the truth about each slot's image."""

    env: dict[str, str]
    works: dict[str, bool]
    running: str | None = None
    #: Slots marked good while running, not reinstalled or marked bad since.
    trusted: set[str] = field(default_factory=set)
    #: Boots of each slot since it was last marked good or installed.
    boots_since_good: dict[str, int] = field(default_factory=dict)
    exhausted: int = 0

    def boot(self) -> str | None:
        before = self.env
        decision = select_boot(before, SLOTS, TRIES)
        parsed = parse_state(before, SLOTS)
        if decision.slot is None:
            # The documented all-exhausted outcome: nothing qualified, every counter reset.
            assert not any(s.bootable for s in parsed.slots)
            assert all(decision.env[state.left_var(s)] == str(TRIES) for s in SLOTS)
            self.exhausted += 1
            self.running = None
        else:
            chosen = decision.slot
            # The selected slot had tries left and a verity value.
            assert parsed.slot(chosen).tries >= 1
            assert parsed.slot(chosen).verity is not None
            assert decision.env[state.left_var(chosen)] == str(parsed.slot(chosen).tries - 1)
            # Booting one slot never touches another slot's counter.
            for other in SLOTS:
                if other != chosen:
                    assert decision.env[state.left_var(other)] == before[state.left_var(other)]
            self.boots_since_good[chosen] = self.boots_since_good.get(chosen, 0) + 1
            self.running = chosen if self.works[chosen] else None
        self.env = decision.env
        self.check_trusted()
        return decision.slot

    def mark_good(self) -> None:
        if self.running is None:
            return
        self.env = state.mark_good(self.env, self.running, SLOTS, TRIES)
        self.trusted.add(self.running)
        self.boots_since_good[self.running] = 0
        self.check_trusted()

    def install(self, works: bool, verity: SlotVerity) -> None:
        if self.running is None:
            return
        target = next(s for s in SLOTS if s != self.running)
        self.env = state.set_primary(self.env, target, verity, SLOTS, TRIES)
        self.works[target] = works
        self.trusted.discard(target)
        self.boots_since_good[target] = 0
        self.check_trusted()

    def check_trusted(self) -> None:
        """A good slot loses tries only by being booted itself, never by another's failure."""
        parsed = parse_state(self.env, SLOTS)
        for g in self.trusted:
            assert g in parsed.order
            assert parsed.slot(g).verity is not None
            floor = TRIES - self.boots_since_good.get(g, 0)
            assert parsed.slot(g).tries >= floor or self.exhausted, (g, self.env)


ACTIONS = st.lists(
    st.one_of(
        st.just(("boot",)),
        st.just(("mark_good",)),
        st.tuples(st.just("install"), st.booleans(), st.sampled_from([V1, V2])),
    ),
    max_size=60,
)


def _run(actions: list[tuple[object, ...]], a_works: bool = True) -> Device:
    dev = Device(env=fresh(), works={"A": a_works, "B": False})
    for action in actions:
        if action[0] == "boot":
            dev.boot()
        elif action[0] == "mark_good":
            dev.mark_good()
        else:
            works, verity = action[1], action[2]
            assert isinstance(works, bool)
            assert isinstance(verity, SlotVerity)
            dev.install(works, verity)
    return dev


@settings(max_examples=300)
@given(ACTIONS)
def test_selected_slot_has_tries_or_all_exhausted_applies(
    actions: list[tuple[object, ...]],
) -> None:
    _run(actions)


@settings(max_examples=300)
@given(ACTIONS)
def test_a_good_slot_is_never_abandoned(actions: list[tuple[object, ...]]) -> None:
    """From any reachable state with a working slot, a healthy device gets back to one.

    Booting repeatedly, marking good whenever a working slot runs, reaches a working slot
    within one pass over every slot's tries plus, at worst, one all-exhausted reset.
    """
    dev = _run(actions)
    if not any(dev.works[s] and s in parse_state(dev.env, SLOTS).order for s in SLOTS):
        return
    if not any(
        dev.works[s] and parse_state(dev.env, SLOTS).slot(s).verity is not None for s in SLOTS
    ):
        return
    bound = 2 * len(SLOTS) * TRIES + 1
    for _ in range(bound):
        dev.boot()
        if dev.running is not None:
            dev.mark_good()
            assert parse_state(dev.env, SLOTS).slot(dev.running).tries == TRIES
            break
    else:
        pytest.fail(f"no working slot booted within {bound} boots: {dev.env}")
    # Once marked good, the working slot keeps being selected on every later boot
    # unless a preferred slot still has tries.
    good = dev.running
    for _ in range(bound):
        booted = dev.boot()
        assert booted is not None
        if booted == good:
            dev.mark_good()
    assert dev.running == good


def test_failed_update_falls_back_and_stays() -> None:
    """Install a broken B: it burns its tries, A takes over, and A is not abandoned."""
    dev = Device(env=fresh(), works={"A": True, "B": False})
    assert dev.boot() == "A"
    dev.mark_good()
    dev.install(False, V2)
    assert [dev.boot() for _ in range(4)] == ["B", "B", "B", "A"]
    dev.mark_good()
    assert parse_state(dev.env, SLOTS).slot("A").tries == TRIES
    assert [dev.boot() for _ in range(3)] == ["A", "A", "A"]
    assert dev.exhausted == 0


def test_good_update_switches_for_good() -> None:
    dev = Device(env=fresh(), works={"A": True, "B": False})
    dev.boot()
    dev.mark_good()
    dev.install(True, V2)
    assert dev.boot() == "B"
    dev.mark_good()
    assert [dev.boot() for _ in range(2)] == ["B", "B"]
    assert parse_state(dev.env, SLOTS).primary == "B"
