"""The `updater` command line as a user runs it: reboot, progress bar, status, exit statuses.

Every test runs `python -m updater.cli` in a child process against a device on
plain files (tests/updater/device.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import stat
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bootctl.state import SlotVerity
from bundle_tool import keygen, signing, verity
from tests.helpers.nginx import NginxServer, free_port
from tests.helpers.pipes import closed_pipe_run
from tests.helpers.tlsca import CertificateAuthority
from tests.updater.device import REPO, SALT, Device, image_bytes
from updater.statedir import StateDir

BLOCKS = 700  # 2.8 MiB: several 1 MiB spans, two tree levels
IMAGE_SIZE = BLOCKS * 4096


def environ(**changes: str | None) -> dict[str, str]:
    """This process's environment with `changes` (None removes a variable)."""
    env = dict(os.environ)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    """The reason of a failed run, checking that stderr holds exactly one error line."""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("updater: error: "), r.stderr
    return lines[0].removeprefix("updater: error: ")


def boot_order(device: Device) -> str:
    return device.control().env()["BOOT_ORDER"]


# --- --reboot ---------------------------------------------------------------------------


def fake_reboot(
    bindir: Path, device: Device, *, status: int = 0, says: str = "", kills: bool = False
) -> Path:
    """A `reboot` in `bindir` that logs each call and copies what the last install recorded.

    Returns the log, which holds one line per call.
    """
    bindir.mkdir(exist_ok=True)
    log = bindir / "calls.log"
    state = device.config().state_dir
    script = bindir / "reboot"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "reboot $*" >> "{log}"\n'
        f'cp "{state}/last-install.json" "{bindir}/at-reboot.json"\n'
        + (f'echo "{says}" >&2\n' if says else "")
        + ("kill -KILL $PPID\n" if kills else "")  # as a real reboot ends the updater
        + f"exit {status}\n"
    )
    script.chmod(0o755)
    return log


@pytest.mark.parametrize(
    ("bundle_ok", "reboot"),
    [
        pytest.param(True, True, id="installed-with-reboot"),
        pytest.param(True, False, id="installed-without-reboot"),
        pytest.param(False, True, id="refused-with-reboot"),
    ],
)
def test_reboot_runs_only_when_asked_and_after_a_successful_install(
    device: Device, tmp_path: Path, bundle_ok: bool, reboot: bool
) -> None:
    bindir = tmp_path / "bin"
    log = fake_reboot(bindir, device)
    env = environ(PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    compatible = "qemu-arm64-uboot" if bundle_ok else "another-board"
    bundle = device.bundle(image_bytes(BLOCKS, seed=2), compatible=compatible)
    args = ["install", str(bundle), "--json", *(["--reboot"] if reboot else [])]
    r = device.cli(*args, env=env)
    if not bundle_ok:
        assert r.returncode == 5, r.stderr
        assert not log.exists()  # a refused install never reboots
        return
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.splitlines()[-1])
    assert result["event"] == "result" and result["slot"] == "B"
    if not reboot:
        assert not log.exists() and "rebooting" not in result
        return
    assert log.read_text() == "reboot \n"  # once, without arguments
    assert result["rebooting"] is True
    # When reboot ran, the install was complete: switched and recorded.
    at_reboot = json.loads((bindir / "at-reboot.json").read_text())
    assert at_reboot["status"] == "installed" and at_reboot["version"] == "2.0.0"


def test_the_result_is_out_before_the_reboot_ends_the_updater(
    device: Device, tmp_path: Path
) -> None:
    bindir = tmp_path / "bin"
    log = fake_reboot(bindir, device, kills=True)
    env = environ(PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    bundle = device.bundle(image_bytes(BLOCKS, seed=2))
    r = device.cli("install", str(bundle), "--json", "--reboot", env=env)
    assert r.returncode == -9 and log.read_text() == "reboot \n", r.stderr
    result = json.loads(r.stdout.splitlines()[-1])
    assert result["event"] == "result" and result["rebooting"] is True


@pytest.mark.parametrize("problem", ["missing", "fails"])
def test_reboot_that_cannot_run_is_a_one_line_device_error(
    device: Device, tmp_path: Path, problem: str
) -> None:
    bindir = tmp_path / "bin"
    if problem == "missing":
        bindir.mkdir()  # PATH holds no reboot at all
    else:
        fake_reboot(bindir, device, status=1, says="Failed to talk to init daemon.")
    bundle = device.bundle(image_bytes(BLOCKS, seed=3))
    r = device.cli("install", str(bundle), "--reboot", env=environ(PATH=str(bindir)))
    assert r.returncode == 7, r.stderr
    reason = one_line_error(r)
    assert reason.startswith("installed 2.0.0 into slot B, which boots next, but ")
    if problem == "missing":
        assert reason.endswith("could not run reboot: No such file or directory")
    else:
        assert reason.endswith("reboot failed with status 1: Failed to talk to init daemon.")
    # The install itself stands.
    assert boot_order(device) == "B A"
    last = StateDir(device.config().state_dir).last_result()
    assert last is not None and last["status"] == "installed"


def test_a_result_not_recorded_after_the_switch_is_a_warning(device: Device) -> None:
    """Once the boot order is switched, the install stands: the updater warns, exits 0."""
    last = device.config().state_dir / "last-install.json"
    (last / "in-the-way").mkdir(parents=True)  # a folder where the file goes: it cannot be written
    bundle = device.bundle(image_bytes(BLOCKS, seed=4))
    r = device.cli("install", str(bundle), "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.splitlines()[-1])
    assert result["event"] == "result" and result["slot"] == "B"
    [warning] = result["warnings"]
    assert warning.startswith(
        f"the install stands, but its result was not recorded: cannot write state file {last}: "
    ), warning
    assert r.stderr.splitlines() == [f"updater: warning: {warning}"]
    assert boot_order(device) == "B A"


# --- no copy of the bundle ----------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (the updater forks hashing and read-back workers)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                # The command name may hold spaces; the fields after its ")" do not.
                parents[int(entry)] = int(f.read().rpartition(")")[2].split()[1])
    tree = [pid]
    for p in tree:
        tree += [child for child, parent in parents.items() if parent == p]
    return tree


def files_under(roots: list[Path]) -> dict[str, int]:
    """Sizes of the files below `roots`."""
    sizes: dict[str, int] = {}
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    sizes[os.path.join(folder, name)] = os.lstat(os.path.join(folder, name)).st_size
    return sizes


def open_files(pids: list[int], known: tuple[str, ...], since: float = 0.0) -> dict[str, int]:
    """Sizes of the regular files `pids` hold open, anywhere, but those starting with
    `known` and those unchanged since `since` (libraries and modules being loaded).
    An unlinked temporary file is visible only this way."""
    sizes: dict[str, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = f"/proc/{pid}/fd/{fd}"
                with contextlib.suppress(OSError):
                    target = os.readlink(link)
                    info = os.stat(link)
                    if os.readlink(link) != target:
                        continue  # closed and opened again meanwhile: `info` may be another's
                    if target.startswith(known) or info.st_ctime < since:
                        continue
                    if stat.S_ISREG(info.st_mode):
                        sizes[f"{target} (open in {pid})"] = info.st_size
    return sizes


def held_by_others(paths: set[str], pids: list[int]) -> set[str]:
    """Those of `paths` that belong to another user, or that a process outside `pids`
    holds open or has mapped: files of other programs, not made by `pids` (a POSIX
    semaphore of another test run in /dev/shm, say). Files are matched by inode: a
    semaphore is mapped under the name of the file it was made as, then renamed."""
    inodes: dict[tuple[int, int], str] = {}
    others: set[str] = set()
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            info = os.lstat(path)
            if info.st_uid != os.getuid():
                others.add(path)
            inodes[info.st_dev, info.st_ino] = path
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in pids or len(others) == len(inodes):
            continue
        held: set[tuple[int, int]] = set()
        with contextlib.suppress(OSError), open(f"/proc/{entry}/maps") as f:
            # address, permissions, offset, major:minor (hex), inode, then the path if any
            for line in f:
                _, _, _, device, inode, *_ = line.split()
                major, minor = (int(n, 16) for n in device.split(":"))
                held.add((os.makedev(major, minor), int(inode)))
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    info = os.stat(f"/proc/{entry}/fd/{fd}")
                    held.add((info.st_dev, info.st_ino))
        others.update(path for key, path in inodes.items() if key in held)
    return others


def test_stdin_install_keeps_no_copy_of_the_bundle(device: Device, tmp_path: Path) -> None:
    """Not in TMPDIR, the working folder, the state folder, /dev/shm, /var/tmp, nor
    in any other file the updater's processes hold open (the slots and env aside)."""
    bundle = device.bundle(image_bytes(BLOCKS, seed=4))
    size = bundle.stat().st_size
    tmpdir, cwd = tmp_path / "tmpdir", tmp_path / "cwd"
    tmpdir.mkdir()
    cwd.mkdir()
    state = device.config().state_dir
    roots = [tmpdir, cwd, state]
    shared = [Path("/dev/shm"), Path("/var/tmp")]  # watched for files the run adds
    there = set(files_under(shared))
    known = tuple(str(p) for p in [device.slot("A"), device.slot("B"), *device.env_files()])
    started = time.time() - 1  # ctime may lag the clock by a tick
    command = [sys.executable, "-m", "updater.cli", "install", "-"]
    proc = subprocess.Popen(
        [*command, "--config", str(device.config_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environ(TMPDIR=str(tmpdir), TEMP=None, TMP=None),
        cwd=cwd,
    )
    assert proc.stdin is not None

    def feed() -> None:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError), proc.stdin:
            proc.stdin.write(bundle.read_bytes())

    seen_open: set[str] = set()  # every regular file seen open, the known ones too

    def sample(pids: list[int]) -> dict[str, int]:
        added = {k: v for k, v in files_under(shared).items() if k not in there}
        for other in held_by_others(set(added), pids):  # another program's, not the run's
            del added[other]
        seen_open.update(k.partition(" (open in")[0] for k in open_files(pids, ()))
        return {**files_under(roots), **added, **open_files(pids, known, started)}

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    # Look while it runs ...
    samples: list[dict[str, int]] = []
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        samples.append(sample(process_tree(proc.pid)))
        time.sleep(0.002)
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    feeder.join(timeout=10)
    assert proc.stdout is not None and proc.stdout.read().startswith(b"installed 2.0.0 into slot B")
    # ... and afterwards.
    samples.append(sample([]))
    assert len(samples) >= 10, "the install ended before it could be watched"
    biggest = max(samples, key=lambda s: sum(s.values()))
    # State files are a few hundred bytes; the bundle is 2.8 MiB.
    assert sum(biggest.values()) < size // 100, biggest
    assert set(samples[-1]) <= {
        str(state / n) for n in ("last-install.json", "slots.json", "install.lock")
    }
    # The watch does see open files: the slot being written was one (left out above).
    assert str(device.slot("B")) in seen_open, seen_open


# --- progress bar -------------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_terminal(
    args: list[str], env: dict[str, str], columns: int, rows: int = 30, stdin: Path | None = None
) -> tuple[int, str]:
    """Run `args` with stdout and stderr on a new pseudo-terminal of the given size.

    Standard input is `stdin`, or nothing. Returns the exit status and everything
    written to the terminal.
    """
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    with (
        stdin.open("rb") if stdin else open(os.devnull, "rb") as source,
        subprocess.Popen(
            args, stdin=source, stdout=follower, stderr=follower, env=env, cwd=REPO
        ) as proc,
    ):
        os.close(follower)
        out = bytearray()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: every process closed the terminal
                break
            if not chunk:
                break
            out += chunk
        os.close(leader)
        status = proc.wait(timeout=10)
    return status, out.decode(errors="replace")


PHASES = ("tree", "index", "data", "read-back", "switch")


@pytest.mark.parametrize(
    ("source", "columns"), [("file", 100), ("stdin", 80), ("file", 60), ("file", 40)]
)
def test_progress_bar_on_a_terminal(device: Device, source: str, columns: int) -> None:
    """The bar fits the terminal at any width, and every size on it is in MiB."""
    bundle = device.bundle(image_bytes(BLOCKS, seed=5))
    cmd = [sys.executable, "-m", "updater.cli", "install", str(bundle) if source == "file" else "-"]
    stdin = bundle if source == "stdin" else None
    status, output = run_on_terminal(
        [*cmd, "--config", str(device.config_path)], environ(), columns, stdin=stdin
    )
    assert status == 0, output
    frames = [ANSI.sub("", f) for f in re.split(r"[\r\n]", output)]
    bars = [f for f in frames if re.match(rf"({'|'.join(PHASES)}) +\d+%", f)]
    assert {f.split()[0] for f in bars} >= {"tree", "data", "read-back"}, frames
    assert all(len(f) < columns for f in bars), "a bar is as wide as the terminal, or wider"
    # One unit family: MiB and MiB/s, nothing else.
    units = {u for f in bars for u in re.findall(r"[\d.]+ ([A-Za-z/]+)", f)}
    assert units <= {"MiB", "MiB/s"}, units
    # e.g. "data  73% |#####     | 2.0/2.7 MiB  1.1 MiB/s  fetched 2.0 MiB  reused 0.0 MiB"
    bar = re.compile(
        r"data +(?P<percent>\d+)% (?:\|[# ]+\| )?(?P<done>[\d.]+)/2\.7 MiB"
        r"(?:  [\d.]+ MiB/s)?(?:  fetched (?P<fetched>[\d.]+) MiB)?"
        r"(?:  reused (?P<reused>[\d.]+) MiB)?"
    )
    data = [f.rstrip() for f in bars if f.startswith("data ")]
    full = [bar.fullmatch(f) for f in data]
    assert data and all(full), data
    last = full[-1]
    assert last is not None and float(last["done"]) > 0
    if columns >= 80:  # room for what was fetched and reused
        assert last["fetched"] is not None and last["reused"] == "0.0", data
        # Nothing is written before it is read: fetched is never behind done.
        for m in full:
            assert m is not None
            assert float(m["fetched"]) >= float(m["done"]) - 0.06, m.group(0)
    shown = [f.strip() for f in frames if f.strip()]
    assert shown[-1].startswith("installed 2.0.0 into slot B")  # the bar was cleared first


# --- status -------------------------------------------------------------------------------


def test_status_after_install(device: Device, tmp_path: Path) -> None:
    ctl = device.control()
    before = ctl.env()
    ctl.store.save({**before, "BOOT_A_LEFT": "2"})  # A was booted with one try used
    a_verity = ctl.status().to_dict()["slots"]["A"]["verity"]
    new = image_bytes(BLOCKS, seed=6)
    image = tmp_path / "new.img"
    image.write_bytes(new)
    with verity.build_tree(str(image), BLOCKS, SALT) as tree:
        root = tree.root_hash.hex()
    bundle = device.bundle(new, version="2.1.0", security_version=3)

    r = device.cli("install", str(bundle))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no progress bar when stderr is not a terminal
    assert re.fullmatch(
        rf"installed 2\.1\.0 into slot B \({IMAGE_SIZE} bytes: \d+ fetched, 0 reused, "
        r"\d+ zero-filled\) in [\d.]+ s; it boots next\n",
        r.stdout,
    )

    r = device.cli("status", "--json")
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert status["board"] == "qemu-arm64-uboot"
    assert status["order"] == ["B", "A"]
    assert (status["primary"], status["next_boot"], status["booted"]) == ("B", "B", "A")
    assert status["security_floor"] == 0  # raised only once B is marked good
    assert status["problems"] == []
    a, b = status["slots"]["A"], status["slots"]["B"]
    assert (a["tries_left"], b["tries_left"]) == (2, 3)
    assert (a["booted"], b["booted"]) == (True, False)
    assert a["bootable"] and b["bootable"]
    assert a["verity"] == a_verity and a["verity_valid"]
    assert SlotVerity.from_env(b["verity"]) == SlotVerity(root, SALT.hex(), BLOCKS)
    assert b["verity_valid"]
    assert a["device"] == str(device.slot("A")) and b["device"] == str(device.slot("B"))
    assert a["installed"] is None
    installed = dict(b["installed"])
    assert isinstance(installed.pop("installed_at"), int)
    assert installed == {
        "version": "2.1.0",
        "security_version": 3,
        "compatible": "qemu-arm64-uboot",
        "root_hash": root,
    }
    last = status["last_install"]
    assert (last["status"], last["slot"], last["version"]) == ("installed", "B", "2.1.0")
    assert (last["root_hash"], last["image_size"], last["bytes_reused"]) == (root, IMAGE_SIZE, 0)
    assert last["bytes_fetched"] >= IMAGE_SIZE
    assert time.time() - 60 < last["at"] <= time.time()  # when it started

    r = device.cli("status")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "board qemu-arm64-uboot, booted A, next boot B, security floor 0",
        "  slot A: tries left 2, bootable, version unknown, booted",
        "  slot B: tries left 3, bootable, version 2.1.0",
        "  last install: installed 2.1.0",
    ]


def test_a_closed_output_neither_stops_an_install_nor_prints_a_traceback(device: Device) -> None:
    """`updater install --json ... | head -1`: the install goes on; its status is 0."""
    bundle = device.bundle(image_bytes(BLOCKS, seed=9))
    config = ("--config", str(device.config_path))
    r = closed_pipe_run("updater.cli", "install", str(bundle), "--json", *config)
    assert (r.returncode, r.stderr) == (0, "")
    assert boot_order(device) == "B A"
    r = closed_pipe_run("updater.cli", "status", *config)
    assert (r.returncode, r.stderr) == (0, "")


# --- exit statuses ------------------------------------------------------------------------

EXIT_CASES: dict[str, tuple[int, str]] = {
    "usage: http URL": (2, "only https:// URLs are supported"),
    "usage: booted slot": (2, "refusing to install into the booted slot A"),
    "usage: missing bundle": (2, "bundle not found: "),
    "usage: missing keyring": (2, "cannot read keyring "),
    "bundle: truncated": (3, "truncated"),
    "trust: unknown signer": (4, "0 of 1 required signatures trusted"),
    "policy: other board": (5, "this device is 'qemu-arm64-uboot'"),
    "transport: untrusted certificate": (6, "certificate verify failed"),
    "transport: unreachable server": (6, "giving up on https://127.0.0.1:"),
    "device: slot not writable": (7, "cannot open slot"),
    "device: booted slot unknown": (7, "name the target slot with --slot"),
}


def set_config(device: Device, old: str, new: str) -> None:
    text = device.config_path.read_text()
    assert old in text
    device.config_path.write_text(text.replace(old, new))


@pytest.mark.parametrize("case", list(EXIT_CASES))
def test_each_failure_class_has_its_exit_status_and_one_line(
    device: Device,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    case: str,
) -> None:
    bundle = device.bundle(image_bytes(BLOCKS, seed=7))
    args = ["install", str(bundle)]
    env = None
    if case == "usage: http URL":
        args = ["install", "http://127.0.0.1/u.bundle"]
    elif case == "usage: booted slot":
        args += ["--slot", "A"]
    elif case == "usage: missing bundle":
        args = ["install", str(tmp_path / "missing.bundle")]
    elif case == "bundle: truncated":
        short = tmp_path / "short.bundle"
        short.write_bytes(bundle.read_bytes()[:-4096])
        args = ["install", str(short)]
    elif case == "trust: unknown signer":
        other = keygen.make_dev_pki(tmp_path / "other-pki")
        signer = signing.load_signer(other.signer_key.read_bytes(), other.signer_cert.read_bytes())
        args = ["install", str(device.bundle(image_bytes(BLOCKS, 7), "o.bundle", signer=signer))]
    elif case == "policy: other board":
        args = ["install", str(device.bundle(image_bytes(BLOCKS, 7), "c.bundle", compatible="x"))]
    elif case == "transport: untrusted certificate":
        nginx: NginxServer = request.getfixturevalue("nginx_server")
        (nginx.root / "u.bundle").write_bytes(bundle.read_bytes())
        args = ["install", nginx.url("u.bundle")]
        # No ca_file: the "system store" is a CA that did not sign nginx's certificate.
        stranger = CertificateAuthority("stranger CA").write(tmp_path / "stranger.pem")
        (tmp_path / "no-certs").mkdir()
        env = environ(
            SSL_CERT_FILE=str(stranger),
            SSL_CERT_DIR=str(tmp_path / "no-certs"),
            REQUESTS_CA_BUNDLE=None,
            CURL_CA_BUNDLE=None,
        )
    elif case == "transport: unreachable server":
        with device.config_path.open("a") as f:
            f.write("[http]\nretries = 1\nbackoff_initial = 0.01\n")
        args = ["install", f"https://127.0.0.1:{free_port()}/u.bundle"]
    elif case == "usage: missing keyring":
        (device.root / "keyring.pem").unlink()
    elif case == "device: booted slot unknown":
        (device.root / "cmdline").write_text("console=ttyAMA0\n")
    elif case == "device: slot not writable":
        # Root may write anywhere but cannot create a file below a regular file.
        (device.root / "plain-file").write_text("")
        set_config(device, 'device = "slot-B.img"', 'device = "plain-file/slot-B.img"')
    status, message = EXIT_CASES[case]
    order = boot_order(device)
    r = device.cli(*args, env=env)
    assert r.returncode == status, r.stderr
    assert message in one_line_error(r)
    assert r.stdout == ""
    assert boot_order(device) == order


def test_json_errors_carry_the_exit_status(device: Device) -> None:
    with device.config_path.open("a") as f:
        f.write("[http]\nretries = 0\n")
    r = device.cli("install", f"https://127.0.0.1:{free_port()}/u.bundle", "--json")
    assert r.returncode == 6
    event: dict[str, Any] = json.loads(r.stdout.splitlines()[-1])
    assert event["event"] == "error" and event["exit_status"] == 6
    assert event["error"] == one_line_error(r)


def test_a_bundle_with_artifacts_installs_from_standard_input(
    artifact_device: Device, tmp_path: Path
) -> None:
    """`updater install -` reads the artifacts after the image through to the signed end."""
    device = artifact_device
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"release notes\n" * 300)
    bundle = device.bundle(image_bytes(300, seed=44), version="2.1.0", artifacts=[notes])
    with bundle.open("rb") as f:
        r = device.cli("install", "-", "--json", stdin=f)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.splitlines()[-1])
    assert (result["event"], result["version"]) == ("result", "2.1.0")
    assert result["bytes_fetched"] == bundle.stat().st_size


def test_install_help_names_every_kind_of_source() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "updater.cli", "install", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    text = " ".join(r.stdout.split())
    assert "a folder holding exactly one *.bundle file" in text
    assert "- for standard input" in text and "https:// URL" in text
