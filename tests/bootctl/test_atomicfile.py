"""`atomic_write` with other writers of the same file, and the temporary files it leaves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bootctl.atomicfile import STEPS, atomic_write
from tests.bootctl.envtools import Crash, CrashAt

REPO = Path(__file__).resolve().parent.parent.parent

#: A child process that replaces the file in argv[1] argv[2] times with argv[3], and
#: prints how many of its writes failed.
WRITER = """
import sys
from pathlib import Path
from bootctl.atomicfile import atomic_write
failed = 0
for _ in range(int(sys.argv[2])):
    try:
        atomic_write(Path(sys.argv[1]), sys.argv[3].encode())
    except OSError:
        failed += 1
print(failed)
"""


def test_two_processes_replacing_one_file_both_succeed_and_readers_see_it_whole(
    tmp_path: Path,
) -> None:
    path = tmp_path / "security-floor.json"
    data = '{\n  "security_floor": 3\n}'
    atomic_write(path, data.encode())
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), "400", data],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    seen = set()
    while any(w.poll() is None for w in writers):
        seen.add(path.read_text())
    failures = [int(w.communicate()[0]) for w in writers]
    assert failures == [0, 0]
    assert seen <= {data}
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.parametrize("at", range(1, len(STEPS) - 1))
def test_a_failed_write_removes_its_temporary_file(tmp_path: Path, at: int) -> None:
    path = tmp_path / "slots.json"
    atomic_write(path, b"old")
    with pytest.raises(Crash):
        atomic_write(path, b"new", fault=CrashAt(at))
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_crashed_writers_temporary_file_is_removed_by_the_next_write(tmp_path: Path) -> None:
    """A process that is gone (a power cut, a kill) left its temporary file."""
    path = tmp_path / "slots.json"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    left = [f".slots.json.{int(gone.stdout)}.0123abcd.tmp", ".slots.json.tmp"]
    kept = ["slots.json.bak", ".slots.json.bak.tmp", ".slots.json.1.0123abcd.tmp"]
    for name in left + kept:
        (tmp_path / name).write_bytes(b"torn")
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, *kept])


def test_a_failed_directory_flush_after_the_rename_says_the_file_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bootctl import atomicfile

    path = tmp_path / "env"
    path.write_bytes(b"old")

    def eio(directory: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomicfile, "_fsync_dir", eio)
    with pytest.raises(atomicfile.NotFlushedError) as e:
        atomic_write(path, b"new")
    assert e.value.strerror == "Input/output error" and e.value.filename == str(tmp_path)
    assert path.read_bytes() == b"new"  # readers see the new contents
    assert [p.name for p in tmp_path.iterdir()] == ["env"]  # no temporary left
