"""Block digests computed in a forked child, and what happens when it cannot help."""

from __future__ import annotations

import errno
import os
import random
import signal
import time
from pathlib import Path

import pytest

from bundle_tool import forked, verity
from updater.hashing import SpanDigests

SALT = b"salt-1234"
SPAN = 16 * 4096


def wait_for_zombie(pid: int) -> None:
    """Wait until the killed child `pid` has ended (and closed its pipes), unreaped."""
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.parametrize("blocks", [0, 1, 15, 16, 17, 50])
def test_digests_match_hashing_here(blocks: int) -> None:
    data = random.Random(blocks).randbytes(blocks * 4096)
    with SpanDigests(SALT, SPAN) as digests:
        assert digests.digests(data) == verity.digest_blocks(SALT, data)
        assert digests.digests(memoryview(data)[4096:]) == verity.digest_blocks(SALT, data[4096:])


def test_without_a_child_the_digests_are_computed_here(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fork() -> int:
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    monkeypatch.setattr(os, "fork", no_fork)
    data = random.Random(2).randbytes(40 * 4096)
    with SpanDigests(SALT, SPAN) as digests:
        assert digests.digests(data) == verity.digest_blocks(SALT, data)


def test_a_child_that_dies_is_replaced_by_hashing_here() -> None:
    data = random.Random(3).randbytes(40 * 4096)
    with SpanDigests(SALT, SPAN) as digests:
        assert digests.digests(data[:4096]) == verity.digest_blocks(SALT, data[:4096])
        pid = digests.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert digests.digests(data) == verity.digest_blocks(SALT, data)
        assert digests.pid is None


def test_a_ring_of_slots_hashes_spans_in_the_order_submitted() -> None:
    rnd = random.Random(6)
    spans = [rnd.randbytes(rnd.randrange(0, 17) * 4096) for _ in range(12)]
    with SpanDigests(SALT, SPAN, slots=3) as ring:
        with pytest.raises(ValueError, match="at most"):
            ring.view(0, SPAN + 1)
        with pytest.raises(ValueError, match="no slot 3"):
            ring.submit(3, 4096)
        collected: list[bytes] = []
        for n, span in enumerate(spans):
            with ring.view(n % 3, len(span)) as slot:
                slot[:] = span
            ring.submit(n % 3, len(span))
            if n >= 2:  # three spans in flight, one per slot
                collected.append(ring.collect())
        collected += [ring.collect(), ring.collect()]
    assert collected == [verity.digest_blocks(SALT, span) for span in spans]


def test_a_ring_whose_child_dies_hashes_the_spans_in_flight_here() -> None:
    spans = [random.Random(n).randbytes(16 * 4096) for n in range(4)]
    with SpanDigests(SALT, SPAN, slots=3) as ring:
        pid = ring.pid
        assert pid is not None

        def fill(n: int) -> None:
            with ring.view(n % 3, len(spans[n])) as slot:
                slot[:] = spans[n]
            ring.submit(n % 3, len(spans[n]))

        fill(0)
        fill(1)
        assert ring.collect() == verity.digest_blocks(SALT, spans[0])
        os.kill(pid, signal.SIGKILL)
        wait_for_zombie(pid)
        fill(2)  # sent to a dead child
        fill(3)
        collected = [ring.collect(), ring.collect(), ring.collect()]
        assert ring.pid is None
    assert collected == [verity.digest_blocks(SALT, span) for span in spans[1:]]


def test_worker_answer_waits_for_the_next_one() -> None:
    with forked.Worker(lambda request: request[::-1]) as worker:
        with pytest.raises(ValueError, match="no answer is due"):
            worker.answer()
        worker.send(b"abc")
        worker.send(b"de")
        assert worker.answer() == b"cba"
        assert list(worker.finish()) == [b"ed"]


@pytest.mark.parametrize(
    ("got", "expected", "first"),
    [
        (b"a" * 64, b"a" * 64, None),
        (b"a" * 32 + b"b" * 32, b"a" * 64, 11),
        (b"a" * 32, b"a" * 64, 11),  # fewer digests than expected: the missing block
    ],
)
def test_first_mismatch(got: bytes, expected: bytes, first: int | None) -> None:
    assert verity.first_mismatch(10, got, expected) == first


def test_a_child_found_dead_when_sending_is_replaced_by_hashing_here() -> None:
    data = random.Random(5).randbytes(20 * 4096)
    with SpanDigests(SALT, SPAN) as digests:
        pid = digests.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for_zombie(pid)
        # The request now meets a broken pipe, and stopping the child must not fail on it.
        assert digests.digests(data) == verity.digest_blocks(SALT, data)
        assert digests.pid is None
