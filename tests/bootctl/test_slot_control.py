"""SlotControl over plain-file environments (U-Boot single/redundant, GRUB)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from bootctl import state
from bootctl.board import BoardConfig, load_board
from bootctl.control import SlotControl, booted_slot_from_cmdline
from bootctl.envstore import GrubEnvStore
from bootctl.errors import ConfigError, EnvCorruptError, SlotError
from bootctl.state import SlotVerity
from tests.bootctl.envtools import fw_printenv, grub_editenv_list
from tests.bootctl.paths import BOARD_DIR

V1 = SlotVerity("ab" * 32, "cd" * 32, 100)
V2 = SlotVerity("12" * 32, "34" * 16, 7)


def uboot_board() -> BoardConfig:
    return load_board(BOARD_DIR / "qemu-arm64-uboot.toml")


def grub_board() -> BoardConfig:
    return load_board(BOARD_DIR / "qemu-x86_64-grub.toml")


@pytest.fixture(params=["uboot-single", "uboot-redundant", "grub"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[BoardConfig, object, Path]:
    """(board, env override, file the real tool reads) for each kind of environment."""
    kind: str = request.param
    if kind == "grub":
        path = tmp_path / "grubenv"
        return grub_board(), path, path
    cfg = tmp_path / "fw_env.config"
    if kind == "uboot-single":
        lines = [f"{tmp_path / 'uboot.env'} 0x0 0x4000"]
    else:
        lines = [f"{tmp_path / 'env.img'} 0x0 0x4000", f"{tmp_path / 'env.img'} 0x4000 0x4000"]
    cfg.write_text("\n".join(lines) + "\n")
    return uboot_board(), lines, cfg


def _open(
    setup: tuple[BoardConfig, object, Path], tmp_path: Path, booted: str | None
) -> SlotControl:
    board, override, _ = setup
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("" if booted is None else f"console=ttyS0 abupdate.slot={booted} quiet\n")
    return SlotControl.open(board, env_override=override, cmdline_path=cmdline)  # type: ignore[arg-type]


def _tool_env(setup: tuple[BoardConfig, object, Path]) -> dict[str, str]:
    board, _, path = setup
    return fw_printenv(path) if board.bootloader == "u-boot" else grub_editenv_list(path)


def test_lifecycle_of_an_update(setup: tuple[BoardConfig, object, Path], tmp_path: Path) -> None:
    ctl = _open(setup, tmp_path, booted="A")
    assert not ctl.status().env_valid
    with pytest.raises(EnvCorruptError):
        ctl.mark_good()
    ctl.init({"A": V1})
    st = ctl.status()
    assert st.env_valid
    assert (st.booted, st.primary, st.next_boot, st.order) == ("A", "A", "A", ("A", "B"))
    assert _tool_env(setup) == {
        "BOOT_ORDER": "A B",
        "BOOT_A_LEFT": "3",
        "BOOT_B_LEFT": "3",
        "BOOT_A_VERITY": V1.to_env(),
        "BOOT_B_VERITY": "",
    }
    # Install into B: one write makes it primary with full tries and its verity value.
    with pytest.raises(SlotError, match="booted slot A"):
        ctl.set_primary("A", V2)
    ctl.mark_bad("B")
    assert ctl.status().slots[1].tries_left == 0
    ctl.set_primary("B", V2)
    env = _tool_env(setup)
    assert env["BOOT_ORDER"] == "B A"
    assert env["BOOT_B_LEFT"] == "3"
    assert env["BOOT_B_VERITY"] == V2.to_env()
    # Reboot into B (the boot script decrements), then mark it good.
    ctl_b = _open(setup, tmp_path, booted="B")
    ctl_b.store.save({**ctl_b.env(), "BOOT_B_LEFT": "2"})
    assert ctl_b.mark_good() == "B"
    assert _tool_env(setup)["BOOT_B_LEFT"] == "3"
    st = ctl_b.status()
    assert st.booted == "B"
    assert [s.booted for s in st.slots] == [False, True]
    with pytest.raises(SlotError, match="booted slot B"):
        ctl_b.mark_bad("B")
    ctl_b.mark_bad("B", force=True)
    assert ctl_b.status().next_boot == "A"
    ctl_b.reset()
    assert _tool_env(setup)["BOOT_ORDER"] == "A B"
    ctl_b.set_verity("A", None)
    assert _tool_env(setup)["BOOT_A_VERITY"] == ""


def test_invalidate_clears_tries_and_verity_in_one_write_or_none(
    setup: tuple[BoardConfig, object, Path], tmp_path: Path
) -> None:
    ctl = _open(setup, tmp_path, booted="A")
    ctl.init({"A": V1, "B": V2})
    saves: list[dict[str, str]] = []
    save = ctl.store.save

    def counted(env: dict[str, str], **kw: bool) -> None:
        saves.append(env)
        save(env, **kw)

    ctl.store.save = counted  # type: ignore[method-assign]
    with pytest.raises(SlotError, match="booted slot A"):
        ctl.invalidate("A")
    ctl.invalidate("B")
    assert len(saves) == 1
    env = _tool_env(setup)
    assert (env["BOOT_B_LEFT"], env["BOOT_B_VERITY"]) == ("0", "")
    assert (env["BOOT_A_LEFT"], env["BOOT_A_VERITY"]) == ("3", V1.to_env())
    before = setup[2].read_bytes()
    ctl.invalidate("B")  # already unbootable: nothing written
    assert len(saves) == 1 and setup[2].read_bytes() == before
    st = ctl.boot_state()
    assert (st.primary, st.slot("B").tries, st.slot("B").verity) == ("A", 0, None)
    assert st.slot("A").verity == V1


def test_other_variables_are_preserved(
    setup: tuple[BoardConfig, object, Path], tmp_path: Path
) -> None:
    ctl = _open(setup, tmp_path, booted="A")
    ctl.init({"A": V1})
    ctl.store.save({**ctl.env(), "saved_entry": "x", "bootdelay": "0"})
    ctl.mark_good()
    ctl.set_primary("B", V2)
    env = _tool_env(setup)
    assert env["saved_entry"] == "x"
    assert env["bootdelay"] == "0"


def test_unknown_slots_and_no_booted_slot(
    setup: tuple[BoardConfig, object, Path], tmp_path: Path
) -> None:
    ctl = _open(setup, tmp_path, booted=None)
    ctl.init()
    assert ctl.booted_slot() is None
    with pytest.raises(SlotError, match="booted slot"):
        ctl.mark_good()
    with pytest.raises(SlotError, match="unknown slot"):
        ctl.mark_bad("C")
    with pytest.raises(SlotError, match="unknown slot"):
        ctl.set_primary("C", V1)
    weird = _open(setup, tmp_path, booted="Z")
    with pytest.raises(SlotError, match="'Z'"):
        weird.booted_slot()
    st = weird.status()  # reported, not fatal
    assert st.booted is None
    assert any("'Z'" in p for p in st.problems)


def test_malformed_env_is_reported_in_status(
    setup: tuple[BoardConfig, object, Path], tmp_path: Path
) -> None:
    ctl = _open(setup, tmp_path, booted="A")
    ctl.init({"A": V1})
    ctl.store.save(
        {
            **ctl.env(),
            "BOOT_A_LEFT": "12345678901234567890",
            "BOOT_ORDER": "A  Q",
            "BOOT_B_VERITY": "x",
        }
    )
    st = ctl.status()
    assert st.slots[0].tries_left == 0
    assert not st.slots[1].verity_valid
    assert st.next_boot is None
    text = " | ".join(st.problems)
    for needle in ("BOOT_A_LEFT", "'Q'", "whitespace", "BOOT_B_VERITY"):
        assert needle in text
    ctl.mark_good()  # repairs the booted slot's counter
    assert ctl.status().slots[0].tries_left == 3


def test_cmdline_parsing() -> None:
    assert booted_slot_from_cmdline("root=/dev/x abupdate.slot=B") == "B"
    assert booted_slot_from_cmdline("rauc.slot=A") == "A"
    assert booted_slot_from_cmdline("rauc.slot=A abupdate.slot=B") == "B"
    assert booted_slot_from_cmdline("abupdate.slot=A abupdate.slot=B") == "B"
    assert booted_slot_from_cmdline("abupdate.slotx=A abupdate.slot=") is None
    assert booted_slot_from_cmdline("") is None


def test_missing_cmdline_file_means_not_booted(tmp_path: Path) -> None:
    ctl = SlotControl.open(
        grub_board(), env_override=tmp_path / "grubenv", cmdline_path=tmp_path / "none"
    )
    assert ctl.booted_slot() is None


def test_override_must_fit_the_bootloader(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        SlotControl.open(uboot_board(), env_override=str(tmp_path / "x"))
    with pytest.raises(ConfigError):
        SlotControl.open(grub_board(), env_override=["/x 0 0x4000"])
    with pytest.raises(ConfigError, match="uboot_size"):
        SlotControl.open(uboot_board(), env_override=[f"{tmp_path}/e 0 0x2000"])


def test_changes_hold_the_store_lock(tmp_path: Path) -> None:
    """Each load-modify-save runs under an exclusive lock other processes also take."""
    board = grub_board()
    held: list[bool] = []

    def probe(step: str) -> None:
        if step != "rename":
            return
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(True)
        else:
            held.append(False)
        finally:
            os.close(fd)

    defaults = state.default_env(board.slot_names, board.tries)
    store = GrubEnvStore(tmp_path / "grubenv", defaults, fault=probe)
    ctl = SlotControl(board, store, "abupdate.slot=A")
    ctl.init({"A": V1})
    ctl.mark_bad("B")
    ctl.set_primary("B", V2)
    assert held == [True, True, True]
    # Outside an operation the lock is free.
    probe("rename")
    assert held[-1] is False


def test_unchanged_state_is_not_rewritten(tmp_path: Path) -> None:
    board = grub_board()
    path = tmp_path / "grubenv"
    ctl = SlotControl.open(board, env_override=path, cmdline_path=tmp_path / "none")
    ctl.init({"A": V1})
    ctl.cmdline_text = "abupdate.slot=A"
    before = path.stat().st_ino
    ctl.mark_good()  # already at full tries
    assert path.stat().st_ino == before
    ctl.mark_bad("B")
    assert path.stat().st_ino != before


def _image_id(path: str) -> bytes:
    """An efivarfs file as systemd-stub leaves it: attributes, then UTF-16LE with a NUL."""
    return b"\x06\x00\x00\x00" + (path + "\0").encode("utf-16-le")


def test_a_uki_board_knows_the_booted_slot_from_the_image_the_stub_started(
    tmp_path: Path,
) -> None:
    board = load_board(BOARD_DIR / "qemu-x86_64-uki.toml")
    assert board.boot.chain == "uki"
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0\n")
    image_id = tmp_path / "LoaderImageIdentifier"
    cases = {
        r"\slot-B\boot.efi": "B",
        r"\slot-A\boot.efi": "A",
        r"\EFI\BOOT\BOOTX64.EFI": None,
        r"\slot-B\other.efi": None,
        r"\slot-C\boot.efi": None,
        "": None,
    }
    for path, slot in cases.items():
        image_id.write_bytes(_image_id(path))
        ctl = SlotControl.open(
            board, env_override=tmp_path / "grubenv", cmdline_path=cmdline, image_id_path=image_id
        )
        assert ctl.booted_slot() == slot, path
    # The command line, where it names a slot, wins; a missing variable is no slot.
    cmdline.write_text("console=ttyS0 abupdate.slot=A\n")
    image_id.write_bytes(_image_id(r"\slot-B\boot.efi"))
    ctl = SlotControl.open(
        board, env_override=tmp_path / "grubenv", cmdline_path=cmdline, image_id_path=image_id
    )
    assert ctl.booted_slot() == "A"
    cmdline.write_text("console=ttyS0\n")
    ctl = SlotControl.open(
        board,
        env_override=tmp_path / "grubenv",
        cmdline_path=cmdline,
        image_id_path=tmp_path / "missing",
    )
    assert ctl.booted_slot() is None


def test_a_u_boot_board_ignores_the_image_identifier(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyAMA0\n")
    image_id = tmp_path / "LoaderImageIdentifier"
    image_id.write_bytes(_image_id(r"\slot-B\boot.itb"))
    cfg = [f"{tmp_path / 'uboot.env'} 0x0 0x4000"]
    ctl = SlotControl.open(
        uboot_board(), env_override=cfg, cmdline_path=cmdline, image_id_path=image_id
    )
    assert ctl.booted_slot() is None
