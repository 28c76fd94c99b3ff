"""GRUB environment block codec and store: compatibility with grub-editenv."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootctl import grubenv
from bootctl.envstore import GrubEnvStore
from bootctl.errors import EnvCorruptError, EnvError, EnvOverflowError, EnvSizeError
from tests.bootctl.envtools import Crash, CrashAt, grub_editenv_list, run

VARS = {
    "BOOT_ORDER": "A B",
    "BOOT_A_LEFT": "3",
    "BOOT_B_LEFT": "0",
    "BOOT_A_VERITY": "ab" * 32 + ":" + "cd" * 32 + ":1234",
    "back": "x\\y",
    "empty": "",
}
DEFAULTS = {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3"}


def test_codec_roundtrip_with_escapes() -> None:
    env = {**VARS, "multi": "line1\nline2\\\n"}
    blob = grubenv.encode_grubenv(env)
    assert len(blob) == 1024
    assert blob.startswith(b"# GRUB Environment Block\n")
    assert blob.endswith(b"#")
    assert b"back=x\\\\y\n" in blob
    assert grubenv.decode_grubenv(blob) == env


def test_codec_errors() -> None:
    with pytest.raises(EnvOverflowError):
        grubenv.encode_grubenv({"big": "x" * 1000})
    for name in ("", "a=b", "a\nb", "#x"):
        with pytest.raises(EnvError):
            grubenv.encode_grubenv({name: "1"})
    with pytest.raises(EnvSizeError):
        grubenv.decode_grubenv(grubenv.encode_grubenv(VARS)[:1000])
    with pytest.raises(EnvCorruptError):
        grubenv.decode_grubenv(b"#" * 1024)


def test_we_write_grub_editenv_reads(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    store = GrubEnvStore(path, DEFAULTS)
    store.save(VARS, init=True)
    assert grub_editenv_list(path) == VARS
    assert path.stat().st_size == 1024


def test_grub_editenv_writes_we_read(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    run("grub-editenv", path, "create")
    store = GrubEnvStore(path, DEFAULTS)
    assert store.load() == {}
    assert not store.defaulted
    run("grub-editenv", path, "set", *(f"{k}={v}" for k, v in VARS.items()))
    run("grub-editenv", path, "set", "multi=line1\nline2")
    assert store.load() == {**VARS, "multi": "line1\nline2"}
    store.save({**store.load(), "BOOT_B_LEFT": "3"})
    run("grub-editenv", path, "unset", "multi")
    assert store.load() == {**VARS, "BOOT_B_LEFT": "3"}


def test_overflow_is_an_error_and_leaves_the_file_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    store = GrubEnvStore(path, DEFAULTS)
    store.save(VARS, init=True)
    before = path.read_bytes()
    with pytest.raises(EnvOverflowError):
        store.save({**VARS, "big": "x" * 900})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grubenv"]
    assert grub_editenv_list(path) == VARS


def test_missing_or_corrupt_reads_defaults_and_refuses_write(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    store = GrubEnvStore(path, DEFAULTS)
    assert store.load() == DEFAULTS
    assert store.defaulted
    with pytest.raises(EnvCorruptError, match="abctl init"):
        store.save(VARS)
    assert not path.exists()
    path.write_bytes(b"\0" * 1024)
    assert store.load() == DEFAULTS
    with pytest.raises(EnvCorruptError):
        store.save(VARS)
    assert path.read_bytes() == b"\0" * 1024


def test_wrong_size_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    path.write_bytes(grubenv.encode_grubenv(VARS) + b"#" * 1024)
    with pytest.raises(EnvSizeError, match="1024"):
        GrubEnvStore(path, DEFAULTS).load()


def test_crash_at_every_step_leaves_old_or_new(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    old = {"v": "old"}
    new = {"v": "new", "w": "y" * 600}
    steps: list[str] = []
    GrubEnvStore(path, DEFAULTS).save(old, init=True)
    GrubEnvStore(path, DEFAULTS, fault=steps.append).save(new)
    assert "rename" in steps

    for crash_at in range(len(steps)):
        GrubEnvStore(path, DEFAULTS).save(old, init=True)
        with pytest.raises(Crash):
            GrubEnvStore(path, DEFAULTS, fault=CrashAt(crash_at)).save(new)
        reader = GrubEnvStore(path, DEFAULTS)
        got = reader.load()
        assert got == (new if crash_at > steps.index("rename") else old), f"step {crash_at}"
        assert grub_editenv_list(path) == got
