"""Forked workers: results in order, errors carried back, children stopped early."""

from __future__ import annotations

import faulthandler
import functools
import hashlib
import os
import time
from pathlib import Path

import pytest

from bundle_tool import forked, verity
from bundle_tool.errors import BundleIOError
from tests.bundle.bundles import write_image


def tagged(n: int) -> bytes:
    # Results of varying size, some larger than a pipe's buffer, tagged with the
    # worker's pid so the test can see that more than one process did the work.
    return n.to_bytes(4, "little") * (n * 997 % 40_000) + os.getpid().to_bytes(8, "little")


def test_results_come_back_in_order_from_several_processes() -> None:
    got = list(forked.ordered_map(tagged, list(range(50)), workers=3))
    assert [r[:-8] for r in got] == [tagged(n)[:-8] for n in range(50)]
    pids = {r[-8:] for r in got}
    assert len(pids) == 3
    assert os.getpid().to_bytes(8, "little") not in pids


def fail_at_seven(n: int) -> bytes:
    if n == 7:
        raise OSError(5, "Input/output error")
    return bytes([n])


def test_an_error_in_a_worker_comes_back_with_its_message() -> None:
    got: list[bytes] = []
    with pytest.raises(BundleIOError, match="Input/output error"):
        got.extend(forked.ordered_map(fail_at_seven, list(range(20)), workers=2))
    assert got == [bytes([n]) for n in range(7)]


def die_at_three(n: int) -> bytes:
    if n == 3:
        os._exit(9)  # a worker killed (e.g. SIGBUS on a shrinking file)
    return bytes([n])


def test_a_worker_that_dies_is_an_error_not_a_hang() -> None:
    before = children_of_this_process()
    with pytest.raises(BundleIOError, match=r"ended before its work was done \(exit status 9\)"):
        list(forked.ordered_map(die_at_three, list(range(10)), workers=2))
    assert children_of_this_process() - before == set()


class ShrinkOnFirstBlock:
    """Stands in for sha256(salt): the file loses its second block once mapped."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def copy(self) -> hashlib._Hash:
        os.ftruncate(self.fd, verity.BLOCK_SIZE)
        return hashlib.sha256()


def hash_mapped_blocks(path: str, request: bytes) -> bytes:
    """Hash the file's two blocks where they are mapped; b"shrink" loses one meanwhile."""
    faulthandler.disable()  # pytest's, inherited: the SIGBUS expected here is not a crash to trace
    with open(path, "rb+") as f:
        fd = f.fileno()
        base = ShrinkOnFirstBlock(fd) if request == b"shrink" else hashlib.sha256()
        return verity.hash_mapped(fd, base, (0, 2))  # type: ignore[arg-type]


def test_a_worker_killed_by_a_failed_mapped_read_says_so(tmp_path: Path) -> None:
    image = write_image(tmp_path / "img", 2, seed=3)
    with forked.Worker(functools.partial(hash_mapped_blocks, str(image))) as w:
        w.send(b"whole")
        assert w.answer() == verity.digest_blocks(b"", image.read_bytes())
        w.send(b"shrink")
        with pytest.raises(BundleIOError, match="killed by SIGBUS: a file it had mapped"):
            w.answer()


def slow(n: int) -> bytes:
    time.sleep(0.05)
    return bytes([n])


def children_of_this_process() -> set[int]:
    """Pids whose parent is this process (from /proc/PID/stat)."""
    me = os.getpid()
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # ended meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                found.add(int(entry.name))
    return found


def test_closing_early_stops_and_reaps_the_children() -> None:
    before = children_of_this_process()
    gen = forked.ordered_map(slow, list(range(1000)), workers=2)
    assert next(gen) == b"\x00"
    assert len(children_of_this_process() - before) == 2
    gen.close()
    assert children_of_this_process() - before == set()


def test_leaf_digests_refuse_a_short_image(tmp_path: Path) -> None:
    image = write_image(tmp_path / "img", 5 * 1024, seed=1)
    with pytest.raises(BundleIOError, match="fewer than 5121 blocks"):
        list(verity.file_leaf_digests(str(image), b"salt", 5 * 1024 + 1))


def test_leaf_digests_are_the_same_in_one_process_and_in_several(tmp_path: Path) -> None:
    blocks = 5 * 1024 + 3
    image = write_image(tmp_path / "img", blocks, seed=2)
    seen = bytearray()
    one = b"".join(verity.file_leaf_digests(str(image), b"s", blocks, workers=1))
    many = b"".join(verity.file_leaf_digests(str(image), b"s", blocks, 2, observe=seen.extend))
    assert one == many == verity.digest_blocks(b"s", image.read_bytes())
    assert seen == image.read_bytes()


def echo_pid(request: bytes) -> bytes:
    if request == b"fail":
        raise ValueError("asked to fail")
    return request[::-1] + os.getpid().to_bytes(8, "little")


def test_worker_answers_in_order_in_another_process() -> None:
    with forked.Worker(echo_pid) as w:
        for n in range(100):
            w.send(b"req%d" % n)
        answers = [*w.ready(), *w.finish()]
        assert [a[:-8] for a in answers] == [(b"req%d" % n)[::-1] for n in range(100)]
        assert {a[-8:] for a in answers} != {os.getpid().to_bytes(8, "little")}
        assert list(w.finish()) == []


def niceness(request: bytes) -> bytes:
    return str(os.getpriority(os.PRIO_PROCESS, 0)).encode()


def test_a_worker_can_yield_the_cpu() -> None:
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    with forked.Worker(niceness) as plain, forked.Worker(niceness, nice=5) as yielding:
        plain.send(b"")
        yielding.send(b"")
        assert int(plain.answer()) == ours
        assert int(yielding.answer()) == min(ours + 5, 19)


def slow_echo(request: bytes) -> bytes:
    time.sleep(0.3)
    return request


def test_worker_ready_does_not_wait() -> None:
    with forked.Worker(slow_echo) as w:
        w.send(b"\x01")
        assert list(w.ready()) == []  # the child is still sleeping
        assert list(w.finish()) == [b"\x01"]


def test_worker_error_comes_back_and_ends_the_child() -> None:
    before = children_of_this_process()
    with forked.Worker(echo_pid) as w:
        w.send(b"ok")
        w.send(b"fail")
        answers = w.finish()
        assert next(answers)[:-8] == b"ko"
        with pytest.raises(BundleIOError, match="asked to fail"):
            next(answers)
    assert children_of_this_process() - before == set()


def test_children_let_go_of_inherited_sockets() -> None:
    import socket
    import stat

    def kind(request: bytes) -> bytes:
        mode = os.fstat(int(request)).st_mode
        return b"socket" if stat.S_ISSOCK(mode) else b"other"

    a, b = socket.socketpair()
    with a, b, forked.Worker(kind) as worker:
        worker.send(str(a.fileno()).encode())
        assert worker.answer() == b"other"  # the child holds no copy of the connection
        a.sendall(b"still here")  # the parent's socket is untouched
        assert b.recv(100) == b"still here"
        a.close()
        assert b.recv(100) == b""  # closed here, closed for good
