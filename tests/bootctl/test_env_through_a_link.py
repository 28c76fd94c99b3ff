"""An environment file named through a symbolic link: the file it points to is written.

The device config or `fw_env.config` may name a link (in /etc, say) to the file the
bootloader reads (on the boot partition). A single copy replaced by rename replaced
the link with a regular file beside it, and the bootloader's file kept the old
environment; a file created through a dangling link had the link's directory
flushed, not its own. The link stays, and the file it points to is written, made
durable in its own directory; the real tools read it through the link.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from bootctl.atomicfile import atomic_write
from bootctl.cli import main
from bootctl.envstore import GrubEnvStore, UBootEnvStore
from bootctl.ubootenv import parse_fw_env_config
from tests.bootctl.envtools import fw_printenv, grub_editenv_list, write_config
from tests.bootctl.paths import BOARD_DIR
from tests.updater.faults import DirectoryEntries

ENV = {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3"}
CHANGED = {**ENV, "BOOT_ORDER": "B A", "BOOT_B_LEFT": "2"}
VERITY = "ab" * 32 + ":" + "cd" * 32 + ":100"

#: The files of each kind of environment, as named in its configuration.
FILES = {
    "uboot-single": ["uboot.env"],
    "uboot-redundant": ["env0", "env1"],
    "grub": ["grubenv"],
}


def _linked(root: Path, kind: str) -> tuple[Path, Path]:
    """`root/etc` with a relative link to `root/boot/NAME` for each file (none made yet)."""
    etc, boot = root / "etc", root / "boot"
    etc.mkdir()
    boot.mkdir()
    for name in FILES[kind]:
        (etc / name).symlink_to(Path("..") / "boot" / name)
    return etc, boot


def _config(etc: Path, kind: str) -> list[str]:
    if kind == "uboot-single":
        return [f"{etc}/uboot.env 0x0 0x4000"]
    return [f"{etc}/env0 0x0 0x4000", f"{etc}/env1 0x0 0x4000"]


def _store(etc: Path, kind: str) -> UBootEnvStore | GrubEnvStore:
    if kind == "grub":
        return GrubEnvStore(etc / "grubenv", {})
    return UBootEnvStore(parse_fw_env_config(_config(etc, kind)), {})


def _read_by_the_tool(etc: Path, kind: str) -> dict[str, str]:
    """The environment as `fw_printenv` or `grub-editenv` reads it through the links."""
    if kind == "grub":
        return grub_editenv_list(etc / "grubenv")
    return fw_printenv(write_config(etc.parent / "fw_env.config", *_config(etc, kind)))


def _assert_links_kept(etc: Path, boot: Path, kind: str) -> None:
    assert sorted(os.listdir(etc)) == sorted(FILES[kind])  # no file beside a link
    for name in FILES[kind]:
        assert (etc / name).is_symlink(), f"{name} is no longer a link"
        assert os.readlink(etc / name) == str(Path("..") / "boot" / name)
        assert (boot / name).is_file() and not (boot / name).is_symlink()
    assert sorted(os.listdir(boot)) == sorted(FILES[kind])  # no temporary file left


@pytest.mark.parametrize("kind", list(FILES))
def test_an_environment_written_through_links_writes_the_files_they_point_to(
    tmp_path: Path, kind: str
) -> None:
    etc, boot = _linked(tmp_path, kind)
    store = _store(etc, kind)
    entries = DirectoryEntries(tmp_path)
    with entries.watching(), store.locked():
        store.save(ENV, init=True)  # through links to files not made yet
    entries.lose_unsynced()  # the power goes: the new files' names were flushed
    _assert_links_kept(etc, boot, kind)
    assert _store(etc, kind).load() == ENV
    with store.locked():
        store.save({**store.load(), **CHANGED})
    _assert_links_kept(etc, boot, kind)
    env = _read_by_the_tool(etc, kind)
    assert {name: env[name] for name in CHANGED} == CHANGED


@pytest.mark.parametrize("kind", ["uboot-single", "grub"])
def test_abctl_init_and_set_primary_through_a_link(tmp_path: Path, kind: str) -> None:
    etc, boot = _linked(tmp_path, kind)
    if kind == "grub":
        board, env_config = BOARD_DIR / "qemu-x86_64-grub.toml", etc / "grubenv"
    else:
        board = BOARD_DIR / "qemu-arm64-uboot.toml"
        env_config = write_config(tmp_path / "fw_env.config", *_config(etc, kind))
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("abupdate.slot=A\n")
    options = ["--board", str(board), "--env-config", str(env_config), "--cmdline", str(cmdline)]
    assert main([*options, "init", "--verity", f"A={VERITY}", "--verity", f"B={VERITY}"]) == 0
    assert main([*options, "set-primary", "B"]) == 0
    _assert_links_kept(etc, boot, kind)
    assert _read_by_the_tool(etc, kind)["BOOT_ORDER"] == "B A"


def test_a_link_that_loops_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(OSError) as raised:
        atomic_write(tmp_path / "a", b"new")
    assert raised.value.errno == errno.ELOOP
    assert os.readlink(tmp_path / "a") == "b" and os.readlink(tmp_path / "b") == "a"
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]
