"""`bundle-tool info`, `verify`, `extract` and `resign` on a FIFO (or a device node) refuse it
at once, as "not a regular file or block device" (status 2): they used to open it first, and
opening a FIFO nobody writes to waits for ever."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bootctl import exitstatus
from bundle_tool import keygen
from bundle_tool.errors import UsageError
from bundle_tool.filereader import FileReader
from updater.filesource import FileSource


def _tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bundle_tool.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=20,  # the bug: never returned
    )


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "update.bundle"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    "command",
    [
        lambda b, pki, out: ("info", b),
        lambda b, pki, out: ("info", "--json", b),
        lambda b, pki, out: ("verify", b, "--keyring", pki.ca_cert),
        lambda b, pki, out: ("extract", b, out),
        lambda b, pki, out: (
            "resign",
            b,
            "--key",
            pki.signer_key,
            "--cert",
            pki.signer_cert,
            "-o",
            out,
        ),
    ],
    ids=["info", "info-json", "verify", "extract", "resign"],
)
def test_a_fifo_is_refused_without_waiting_for_a_writer(
    fifo: Path, pki: keygen.DevPki, tmp_path: Path, command: Callable[..., tuple[object, ...]]
) -> None:
    run = _tool(*command(fifo, pki, tmp_path / "out"))  # type: ignore[arg-type]
    assert run.returncode == exitstatus.USAGE, run.stderr
    assert run.stderr.strip().splitlines() == [
        f"bundle-tool: error: not a regular file or block device: {fifo}"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("reader", [FileReader, FileSource])
def test_the_readers_refuse_a_fifo_and_a_character_device_before_opening_them(
    fifo: Path, reader: type[FileReader]
) -> None:
    """The updater's `FileSource` too (a path that `open_source` found a file, then a FIFO)."""
    for path in (fifo, Path("/dev/null")):
        with pytest.raises(UsageError, match="not a regular file or block device"):
            reader(path)


def test_a_regular_file_is_read_blocking(tmp_path: Path) -> None:
    """The descriptor opened without blocking is made blocking again once it is known."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    with FileReader(path) as src:
        assert os.get_blocking(src._open_fd())
        assert src.read_exact(10, 5) == b"xxxxx"
