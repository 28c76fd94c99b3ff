"""`atomic_write` with other writers of the same file, and the temporary files it leaves."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bootctl import atomicfile
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

#: A child process that holds an exclusive flock on each file in argv[1:], as a writer
#: does on its temporary file, until its standard input closes.
HOLDER = """
import fcntl, sys
held = [open(name, "rb") for name in sys.argv[1:]]
for f in held:
    fcntl.flock(f, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def _age(path: Path, seconds: float) -> None:
    """Set the times of `path` to `seconds` ago (negative: ahead)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def _old(path: Path) -> None:
    _age(path, 2 * atomicfile._STALE_AFTER)


def _pid_nobody_has() -> int:
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def _temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


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
    """A writer that is gone (a power cut, a kill) left its temporary file, unlocked.

    It is removed once old, whether its pid is gone or now another live process's.
    """
    path = tmp_path / "slots.json"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    left = [
        f".slots.json.{int(gone.stdout)}.0123abcd.tmp",
        f".slots.json.{os.getpid()}.0123abcd.tmp",  # a pid reused: alive, not the writer
        ".slots.json.1.0123abcd.tmp",
        ".slots.json.tmp",
    ]
    kept = [
        "slots.json.bak",
        ".slots.json.bak.tmp",
        ".slots.json.1.0123.tmp",
        ".other.1.0123abcd.tmp",
    ]
    for name in left + kept:
        (tmp_path / name).write_bytes(b"torn")
        _old(tmp_path / name)
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, *kept])


def test_a_locked_temporary_file_is_kept_whatever_its_pid_and_age(tmp_path: Path) -> None:
    """A live writer's temporary file, its pid another namespace's (none here) or reused."""
    path = tmp_path / "slots.json"
    held = [
        tmp_path / f".slots.json.{_pid_nobody_has()}.0123abcd.tmp",
        tmp_path / f".slots.json.{os.getpid()}.4567cdef.tmp",
    ]
    for name in held:
        name.write_bytes(b"half")
        _old(name)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, *map(str, held)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        atomic_write(path, b"new")
        assert _temporaries(tmp_path) == sorted(p.name for p in held)
    finally:
        holder.communicate("")
    atomic_write(path, b"newer")  # its process ended: the locks went with it
    assert _temporaries(tmp_path) == []


@pytest.mark.parametrize("pid", ["gone", "ours"])
def test_a_fresh_unlocked_temporary_file_is_kept_until_it_is_old(tmp_path: Path, pid: str) -> None:
    """A writer may have created its file and not yet locked it."""
    path = tmp_path / "slots.json"
    number = _pid_nobody_has() if pid == "gone" else os.getpid()
    fresh = tmp_path / f".slots.json.{number}.0123abcd.tmp"
    fresh.write_bytes(b"")
    _age(fresh, atomicfile._STALE_AFTER / 2)
    atomic_write(path, b"new")
    assert _temporaries(tmp_path) == [fresh.name]
    _old(fresh)
    atomic_write(path, b"newer")
    assert _temporaries(tmp_path) == []


def test_a_temporary_file_from_ahead_of_the_clock_is_old(tmp_path: Path) -> None:
    """The clock was set back (a device without a clock battery, before NTP)."""
    path = tmp_path / "slots.json"
    ahead = tmp_path / f".slots.json.{os.getpid()}.0123abcd.tmp"
    ahead.write_bytes(b"torn")
    _age(ahead, -2 * atomicfile._STALE_AFTER)
    atomic_write(path, b"new")
    assert _temporaries(tmp_path) == []


#: A command's prefix that runs it in a new pid namespace, as in a container.
UNSHARE_PID = ["unshare", "--pid", "--fork", "--mount-proc"]


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run([*UNSHARE_PID, "true"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs unshare --pid (root or user namespaces)")
def test_a_writer_in_another_pid_namespace_keeps_a_live_writers_temporary_file(
    tmp_path: Path,
) -> None:
    """A container sharing the directory writes while this process is between fsync and rename.

    This process's pid is none in the container's namespace.
    """
    path = tmp_path / "state.json"
    atomic_write(path, b"old")
    at_rename, go_on = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    def pause(step: str) -> None:
        if step == "rename":
            at_rename.set()
            go_on.wait(30)

    def write() -> None:
        try:
            atomic_write(path, b"host", fault=pause)
        except BaseException as e:
            failed.append(e)

    host = threading.Thread(target=write)
    host.start()
    try:
        assert at_rename.wait(10)
        (ours,) = _temporaries(tmp_path)
        _old(tmp_path / ours)  # only the lock keeps it
        container = subprocess.run(
            [*UNSHARE_PID, sys.executable, "-c", WRITER, path, "1", "container"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        assert (container.returncode, container.stdout) == (0, "0\n"), container.stderr
        assert path.read_bytes() == b"container"
        assert _temporaries(tmp_path) == [ours]
    finally:
        go_on.set()
        host.join()
    assert failed == []
    assert path.read_bytes() == b"host"
    assert _temporaries(tmp_path) == []


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
