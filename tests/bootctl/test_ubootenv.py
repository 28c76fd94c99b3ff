"""U-Boot environment codec and store: byte compatibility with libubootenv and mkenvimage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bootctl import ubootenv
from bootctl.envstore import UBootEnvStore
from bootctl.errors import (
    ConfigError,
    EnvCorruptError,
    EnvError,
    EnvOverflowError,
    EnvSizeError,
)
from bootctl.ubootenv import EnvCopy, EnvLocation, parse_fw_env_config, select_copy
from tests.bootctl.envtools import Crash, CrashAt, fw_printenv, fw_setenv, run, write_config

SIZE = 0x4000
VARS = {
    "BOOT_ORDER": "B A",
    "BOOT_A_LEFT": "3",
    "BOOT_B_LEFT": "0",
    "BOOT_A_VERITY": "ab" * 32 + ":" + "cd" * 32 + ":1234",
    "bootcmd": "run distro_bootcmd; echo ${x}",
    "empty": "",
}
DEFAULTS = {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3"}


def single(tmp_path: Path, size: int = SIZE) -> tuple[Path, Path, UBootEnvStore]:
    env = tmp_path / "uboot.env"
    cfg = write_config(tmp_path / "fw_env.config", f"{env} 0x0 {size:#x}")
    return env, cfg, UBootEnvStore.from_config(cfg.read_text().splitlines(), DEFAULTS)


def redundant(tmp_path: Path, size: int = SIZE) -> tuple[Path, Path, UBootEnvStore]:
    env = tmp_path / "env.img"
    cfg = write_config(
        tmp_path / "fw_env.config", f"{env} 0x0 {size:#x}", f"{env} {size:#x} {size:#x}"
    )
    return env, cfg, UBootEnvStore.from_config(cfg.read_text().splitlines(), DEFAULTS)


# --- fw_env.config ----------------------------------------------------------------------------


def test_parse_fw_env_config() -> None:
    locs = parse_fw_env_config(
        ["# comment", "", "/dev/mmcblk0 0x3f8000 0x4000 0x200 16", "/dev/mmcblk0 4177920 16384"]
    )
    assert locs == (
        EnvLocation("/dev/mmcblk0", 0x3F8000, 0x4000, 0x200, 16),
        EnvLocation("/dev/mmcblk0", 4177920, 16384),
    )


@pytest.mark.parametrize(
    "lines",
    [
        [],
        ["/dev/x 0"],
        ["/dev/x 0 zz"],
        ["/dev/x 0 0x4000", "/dev/x 0x4000 0x2000"],
        ["a 0 16"] * 3,
    ],
)
def test_parse_fw_env_config_errors(lines: list[str]) -> None:
    with pytest.raises(ConfigError):
        parse_fw_env_config(lines)


# --- pure codec -------------------------------------------------------------------------------


def test_single_roundtrip_and_crc_detects_corruption() -> None:
    blob = ubootenv.encode_single(VARS, 256)
    assert len(blob) == 256
    assert ubootenv.decode_single(blob) == VARS
    for i in (0, 4, 100, 255):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(EnvCorruptError):
            ubootenv.decode_single(bytes(bad))


def test_overflow_and_invalid_names() -> None:
    with pytest.raises(EnvOverflowError):
        ubootenv.encode_single({"x": "y" * 300}, 256)
    for name in ("", "a=b", "a b"):
        with pytest.raises(EnvError):
            ubootenv.encode_single({name: "1"}, 256)
    with pytest.raises(EnvError):
        ubootenv.encode_single({"a": "x\0y"}, 256)


def test_size_mismatch_in_codec() -> None:
    with pytest.raises(EnvSizeError):
        ubootenv.decode_single(ubootenv.encode_single(VARS, 512), 256)


@pytest.mark.parametrize(
    ("flags0", "flags1", "expected"),
    [(1, 2, 1), (2, 1, 0), (255, 0, 1), (0, 255, 0), (7, 7, 0), (254, 255, 1), (0, 1, 1)],
)
def test_select_copy_flags_and_wraparound(flags0: int, flags1: int, expected: int) -> None:
    assert select_copy(EnvCopy(flags0, {}), EnvCopy(flags1, {})) == expected


def test_select_copy_with_invalid_copies() -> None:
    assert select_copy(None, EnvCopy(0, {})) == 1
    assert select_copy(EnvCopy(0, {}), None) == 0
    assert select_copy(None, None) is None


# --- interop: single --------------------------------------------------------------------------


def test_single_we_write_fw_printenv_reads(tmp_path: Path) -> None:
    _, cfg, store = single(tmp_path)
    store.save(VARS, init=True)
    assert fw_printenv(cfg) == VARS


def test_single_fw_setenv_writes_we_read(tmp_path: Path) -> None:
    _env, cfg, store = single(tmp_path)
    store.save({"keep": "me"}, init=True)
    fw_setenv(cfg, "BOOT_ORDER", "B A")
    fw_setenv(cfg, "BOOT_B_LEFT", "2")
    assert store.load() == {"keep": "me", "BOOT_ORDER": "B A", "BOOT_B_LEFT": "2"}
    assert not store.defaulted


def test_mkenvimage_output_is_read(tmp_path: Path) -> None:
    env, _, store = single(tmp_path)
    text = tmp_path / "vars.txt"
    text.write_text("".join(f"{k}={v}\n" for k, v in VARS.items()))
    run("mkenvimage", "-s", hex(SIZE), "-o", env, text)
    assert store.load() == VARS
    # Redundant image: mkenvimage -r writes flags 1.
    run("mkenvimage", "-r", "-s", hex(SIZE), "-o", tmp_path / "r.bin", text)
    copy = ubootenv.decode_redundant((tmp_path / "r.bin").read_bytes(), SIZE)
    assert copy is not None
    assert copy.env == VARS
    assert copy.flags == 1


def test_single_size_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    env, _, store = single(tmp_path)
    env.write_bytes(ubootenv.encode_single(VARS, 0x2000))
    with pytest.raises(EnvSizeError, match=r"fw_env\.config"):
        store.load()
    with pytest.raises(EnvSizeError):
        store.save(VARS)
    assert env.read_bytes() == ubootenv.encode_single(VARS, 0x2000)


def test_single_corrupt_reads_defaults_and_refuses_write(tmp_path: Path) -> None:
    env, _, store = single(tmp_path)
    env.write_bytes(b"\xff" * SIZE)
    assert store.load() == DEFAULTS
    assert store.defaulted
    with pytest.raises(EnvCorruptError, match="abctl init"):
        store.save(VARS)
    assert env.read_bytes() == b"\xff" * SIZE
    store.save(VARS, init=True)
    assert store.load() == VARS
    assert not store.defaulted


def test_missing_file_reads_defaults(tmp_path: Path) -> None:
    env, _, store = single(tmp_path)
    assert store.load() == DEFAULTS
    assert store.defaulted
    with pytest.raises(EnvCorruptError):
        store.save(VARS)
    assert not env.exists()


# --- interop: redundant -----------------------------------------------------------------------


def test_redundant_we_write_fw_printenv_reads(tmp_path: Path) -> None:
    _env, cfg, store = redundant(tmp_path)
    store.save({"first": "1"}, init=True)
    assert fw_printenv(cfg) == {"first": "1"}
    for i in range(4):  # both copies in turn
        store.save({**VARS, "n": str(i)})
        assert fw_printenv(cfg) == {**VARS, "n": str(i)}


def test_redundant_fw_setenv_writes_we_read(tmp_path: Path) -> None:
    _env, cfg, store = redundant(tmp_path)
    store.save({"first": "1"}, init=True)
    expected = {"first": "1"}
    for i in range(4):
        fw_setenv(cfg, "n", str(i))
        expected["n"] = str(i)
        assert store.load() == expected
        expected["ours"] = str(i)
        store.save(expected)
        assert fw_printenv(cfg) == expected


def test_redundant_write_goes_to_the_older_copy_with_flags_plus_one(tmp_path: Path) -> None:
    env, _, store = redundant(tmp_path)
    store.save({"v": "0"}, init=True)
    before = env.read_bytes()
    cur = store.current_flags()
    assert cur is not None
    current_index = 0 if before[4] == cur else 1
    store.save({"v": "1"})
    after = env.read_bytes()
    older = slice((1 - current_index) * SIZE, (2 - current_index) * SIZE)
    newer = slice(current_index * SIZE, (current_index + 1) * SIZE)
    assert after[newer] == before[newer]
    assert after[older] != before[older]
    assert after[older][4] == (cur + 1) & 0xFF
    assert store.current_flags() == (cur + 1) & 0xFF


def _write_copy(env: Path, index: int, vars_: dict[str, str], flags: int, size: int) -> None:
    with open(env, "r+b") as f:
        f.seek(index * size)
        f.write(ubootenv.encode_redundant(vars_, size, flags))


def test_flags_wraparound_read_and_write(tmp_path: Path) -> None:
    env, cfg, store = redundant(tmp_path)
    env.write_bytes(bytes(2 * SIZE))
    _write_copy(env, 0, {"v": "old"}, 254, SIZE)
    _write_copy(env, 1, {"v": "new"}, 255, SIZE)
    assert store.load() == {"v": "new"}
    assert fw_printenv(cfg) == {"v": "new"}
    store.save({"v": "wrapped"})
    assert env.read_bytes()[4] == 0  # copy 0 rewritten with 255 + 1 = 0
    assert store.load() == {"v": "wrapped"}
    assert fw_printenv(cfg) == {"v": "wrapped"}
    store.save({"v": "after"})
    assert env.read_bytes()[SIZE + 4] == 1
    assert store.load() == {"v": "after"}
    assert fw_printenv(cfg) == {"v": "after"}


def test_equal_flags_pick_the_first_copy(tmp_path: Path) -> None:
    env, cfg, store = redundant(tmp_path)
    env.write_bytes(bytes(2 * SIZE))
    _write_copy(env, 0, {"v": "first"}, 5, SIZE)
    _write_copy(env, 1, {"v": "second"}, 5, SIZE)
    assert store.load() == {"v": "first"}
    assert fw_printenv(cfg) == {"v": "first"}


def test_redundant_one_bad_copy_uses_the_other(tmp_path: Path) -> None:
    env, cfg, store = redundant(tmp_path)
    env.write_bytes(bytes(2 * SIZE))
    _write_copy(env, 0, {"v": "newer"}, 9, SIZE)
    _write_copy(env, 1, {"v": "older"}, 8, SIZE)
    with open(env, "r+b") as f:
        f.seek(100)
        f.write(b"garbage")
    assert store.load() == {"v": "older"}
    assert fw_printenv(cfg) == {"v": "older"}
    store.save({"v": "next"})  # goes over the bad copy 0 with flags 9
    assert env.read_bytes()[4] == 9
    assert store.load() == {"v": "next"}


def test_redundant_both_bad(tmp_path: Path) -> None:
    env, cfg, store = redundant(tmp_path)
    env.write_bytes(b"\xa5" * (2 * SIZE))
    assert store.load() == DEFAULTS
    assert store.defaulted
    with pytest.raises(EnvCorruptError, match="abctl init"):
        store.save(VARS)
    assert env.read_bytes() == b"\xa5" * (2 * SIZE)
    store.save(VARS, init=True)
    assert store.load() == VARS
    assert fw_printenv(cfg) == VARS


def test_redundant_size_mismatch(tmp_path: Path) -> None:
    env, _, store = redundant(tmp_path)
    env.write_bytes(bytes(SIZE + 10))
    with pytest.raises(EnvSizeError, match="too small"):
        store.load()


# --- torn writes ------------------------------------------------------------------------------

TORN_SIZE = 0x100


@pytest.mark.parametrize("garble", [False, True], ids=["torn-old-tail", "torn-garbage-tail"])
def test_torn_redundant_write_at_every_offset_keeps_the_previous_state(
    tmp_path: Path, garble: bool
) -> None:
    env, cfg, store = redundant(tmp_path, TORN_SIZE)
    store.save({"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3"}, init=True)
    store.save({"BOOT_ORDER": "A B", "BOOT_A_LEFT": "2"})
    old_image = env.read_bytes()
    old_state = store.load()
    new_state = {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_VERITY": "x" * 40}
    store.save(new_state)
    new_image = env.read_bytes()
    changed = [i for i in range(2 * TORN_SIZE) if old_image[i] != new_image[i]]
    start = (changed[0] // TORN_SIZE) * TORN_SIZE  # the copy that was written
    assert all(start <= i < start + TORN_SIZE for i in changed)
    seen_old = 0
    for cut in range(TORN_SIZE):
        torn = bytearray(old_image)
        torn[start : start + cut] = new_image[start : start + cut]
        if garble:
            torn[start + cut : start + TORN_SIZE] = os.urandom(TORN_SIZE - cut)
        env.write_bytes(bytes(torn))
        # Once the rest of the copy already equals the new bytes, the write is complete.
        complete = torn == new_image
        expected = new_state if complete else old_state
        got = store.load()
        assert got == expected, f"cut at byte {cut}"
        seen_old += not complete
        if cut % 32 == 0:  # the real tool agrees (a sample: one process per check)
            assert fw_printenv(cfg) == expected, f"cut at byte {cut}"
    env.write_bytes(new_image)
    assert store.load() == new_state
    assert seen_old >= changed[-1] - start  # every cut before the last changed byte


def test_single_file_crash_at_every_step_leaves_old_or_new(tmp_path: Path) -> None:
    _env, cfg, _ = single(tmp_path)
    old = {"v": "old"}
    new = {"v": "new", "w": "x" * 2000}  # several write chunks
    steps_seen: list[str] = []

    probe = UBootEnvStore.from_config(cfg.read_text().splitlines(), DEFAULTS)
    probe.save(old, init=True)
    UBootEnvStore(probe.locations, DEFAULTS, fault=steps_seen.append).save(new)
    assert len(steps_seen) > 5

    for crash_at in range(len(steps_seen)):
        probe.save(old, init=True)
        with pytest.raises(Crash):
            UBootEnvStore(probe.locations, DEFAULTS, fault=CrashAt(crash_at)).save(new)
        got = probe.load()
        assert got in (old, new), f"crash before step {crash_at} ({steps_seen[crash_at]})"
        assert not probe.defaulted
        assert fw_printenv(cfg) == got
        # Only after the rename does the file hold the new state.
        assert (got == new) == (crash_at > steps_seen.index("rename"))
