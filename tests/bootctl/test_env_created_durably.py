"""`abctl init` that creates the environment's files makes their names durable.

A file's name lasts a power cut only once its directory was fsynced. A single
copy replaced by rename had that; a redundant U-Boot environment written in
place (two files, or one device) created each missing file and fsynced its data
but not the directory, so a power cut after `abctl init` could leave no
environment at all: the boot script's defaults, with no root hash.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bootctl.envstore import GrubEnvStore, UBootEnvStore
from bootctl.ubootenv import parse_fw_env_config
from tests.updater.faults import DirectoryEntries

ENV = {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3"}


def _stores(root: Path) -> dict[str, UBootEnvStore | GrubEnvStore]:
    return {
        "uboot-single": UBootEnvStore(parse_fw_env_config([f"{root}/uboot.env 0x0 0x4000"]), {}),
        "uboot-single-at-offset": UBootEnvStore(
            parse_fw_env_config([f"{root}/uboot.env 0x1000 0x4000"]), {}
        ),
        "uboot-redundant": UBootEnvStore(
            parse_fw_env_config([f"{root}/env0 0x0 0x4000", f"{root}/env1 0x0 0x4000"]), {}
        ),
        "uboot-redundant-one-file": UBootEnvStore(
            parse_fw_env_config([f"{root}/env 0x0 0x4000", f"{root}/env 0x4000 0x4000"]), {}
        ),
        "grub": GrubEnvStore(root / "grubenv", {}),
    }


def assert_survives_a_power_cut(tmp_path: Path, kind: str, entries: DirectoryEntries) -> None:
    """The power goes (what was not made durable is lost): `ENV` is still read, as stored."""
    entries.lose_unsynced()
    again = _stores(tmp_path)[kind]
    assert again.load() == ENV
    assert not again.defaulted


@pytest.mark.parametrize("kind", list(_stores(Path("/x"))))
def test_an_environment_created_by_init_survives_a_power_cut(tmp_path: Path, kind: str) -> None:
    store = _stores(tmp_path)[kind]
    entries = DirectoryEntries(tmp_path)
    with entries.watching(), store.locked():
        store.save(ENV, init=True)
    assert_survives_a_power_cut(tmp_path, kind, entries)


@pytest.mark.parametrize(
    "kind", ["uboot-single-at-offset", "uboot-redundant", "uboot-redundant-one-file"]
)
def test_an_environment_file_left_by_a_killed_init_is_made_durable(
    tmp_path: Path, kind: str
) -> None:
    """`abctl init` killed before fsyncing the directory of a file it created leaves a file
    whose name a cut may take back; the next `abctl init` finds it and writes into it."""
    store = _stores(tmp_path)[kind]
    entries = DirectoryEntries(tmp_path)
    with entries.watching():
        for path in store.paths():
            # The killed run's create, and its writes, flushed (but not the file's name).
            end = max(c.offset + c.size for c in store.locations if Path(c.device) == path)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            os.write(fd, bytes(end))
            os.fsync(fd)
            os.close(fd)
        with store.locked():
            store.save(ENV, init=True)
    assert_survives_a_power_cut(tmp_path, kind, entries)


@pytest.mark.parametrize(
    "kind", ["uboot-single-at-offset", "uboot-redundant", "uboot-redundant-one-file"]
)
def test_an_empty_file_left_by_a_killed_init_is_initialized(tmp_path: Path, kind: str) -> None:
    """`abctl init` killed between creating a file and writing into it leaves it empty: it
    holds no environment (as a missing file), so the next `abctl init` writes one. It was
    refused as of the wrong size, with "fix the size in fw_env.config" (it is right)."""
    store = _stores(tmp_path)[kind]
    for path in store.paths():
        path.touch()
    with store.locked():
        store.save(ENV, init=True)
    again = _stores(tmp_path)[kind]
    assert again.load() == ENV
    assert not again.defaulted


def test_init_killed_between_the_two_files_of_a_redundant_environment_is_completed(
    tmp_path: Path,
) -> None:
    """`abctl init` writes the second copy first, then creates the first: killed in between,
    it leaves one valid copy and no first file. The next `abctl init` creates that file (it
    said "No such file or directory" at every try), and its name survives a power cut."""
    store = _stores(tmp_path)["uboot-redundant"]
    with store.locked():
        store.save(ENV, init=True)
    (tmp_path / "env0").unlink()  # as if killed before creating it
    store = _stores(tmp_path)["uboot-redundant"]
    entries = DirectoryEntries(tmp_path)
    with entries.watching(), store.locked():
        store.save({**ENV, "BOOT_B_LEFT": "2"}, init=True)
    entries.lose_unsynced()  # the power goes
    assert (tmp_path / "env0").exists()
    assert _stores(tmp_path)["uboot-redundant"].load() == {**ENV, "BOOT_B_LEFT": "2"}
