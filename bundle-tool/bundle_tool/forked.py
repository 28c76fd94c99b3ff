"""Work in forked processes: a function over a list of items, or a server of requests.

Hashing holds the GIL between blocks, so threads do not scale and worker
processes do. A process pool pays for pickling, a feeder thread and a queue on
every task; for work items of equal cost a static split is enough: child k takes
items k, k + n, k + 2n, ... and writes each result to its own pipe, and the
parent reads the pipes in turn. The pipe's buffer bounds how far a child runs
ahead, so memory stays flat however many items there are.

`Worker` is one child that answers requests sent while the parent goes on with
other work (e.g. reading a slot back while the next part of it is written).

Each record on a pipe is one status byte, an 8-byte little-endian length and
that many bytes: the request or result (status 0) or an error message (status 1).
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
import stat
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO, TypeVar

from .errors import BundleIOError

T = TypeVar("T")

_OK = b"\x00"
_FAILED = b"\x01"
_LENGTH = 8


def _record(status: bytes, body: bytes) -> bytes:
    return status + len(body).to_bytes(_LENGTH, "little") + body


def _read_exact(pipe: BinaryIO, n: int) -> bytes:
    """Up to `n` bytes, fewer only at the end of the stream."""
    parts: list[bytes] = []
    while n:
        data = pipe.read(n)
        if not data:
            break
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


def _answer(fn: Callable[[T], bytes], item: T, out: BinaryIO) -> bool:
    """Write the record of `fn(item)`; False (and an error record) if it failed."""
    try:
        result = fn(item)
    except (OSError, ValueError, BundleIOError) as e:
        out.write(_record(_FAILED, str(e).encode("utf-8", "replace")))
        out.flush()
        return False
    out.write(_record(_OK, result))
    out.flush()
    return True


def _fork(body: Callable[[], int], close: Sequence[int]) -> int:
    """Fork, and return the child's pid.

    The child closes `close` (the parent's ends of its pipes), runs `body`, and
    leaves with its status (2 if it raised): it never returns into the parent's code.
    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which leaves by _exit
        code = 2
        try:
            for fd in close:
                os.close(fd)
            _release_sockets()
            code = body()
        finally:
            os._exit(code)
    return pid


def _release_sockets() -> None:
    """In a child: let go of the sockets inherited from the parent.

    Otherwise a connection the parent closes (say, an HTTP answer it will not
    read) stays open here, and the server goes on sending into it. Each socket's
    descriptor is pointed at /dev/null rather than closed, so that its number is
    not reused while the parent's socket object, copied into the child, still
    names it.
    """
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_RDWR)
        try:
            for name in os.listdir("/proc/self/fd"):
                with contextlib.suppress(OSError, ValueError):
                    fd = int(name)
                    if stat.S_ISSOCK(os.fstat(fd).st_mode):
                        os.dup2(null, fd)
        finally:
            os.close(null)


def _child(fn: Callable[[T], bytes], items: Sequence[T], out_fd: int) -> int:
    """Body of an `ordered_map` process: run `fn` over `items`, one record each."""
    with os.fdopen(out_fd, "wb") as out:
        return 0 if all(_answer(fn, item, out) for item in items) else 1


def _serve(fn: Callable[[bytes], bytes], requests_fd: int, out_fd: int, nice: int) -> int:
    """Body of a `Worker` process: answer each request until the parent stops sending."""
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
    with os.fdopen(requests_fd, "rb") as requests, os.fdopen(out_fd, "wb") as out:
        while True:
            head = _read_exact(requests, 1 + _LENGTH)
            if len(head) < 1 + _LENGTH:
                return 0
            request = _read_exact(requests, int.from_bytes(head[1:], "little"))
            if not _answer(fn, request, out):
                return 1


def _receive(pipe: BinaryIO, reap: Callable[[], str]) -> bytes:
    """The next record from a child; `reap` says how the child ended if it is gone."""
    head = _read_exact(pipe, 1 + _LENGTH)
    if len(head) != 1 + _LENGTH:
        raise BundleIOError(f"a worker process ended before its work was done ({reap()})")
    body = _read_exact(pipe, int.from_bytes(head[1:], "little"))
    if head[:1] == _FAILED:
        raise BundleIOError(body.decode("utf-8", "replace"))
    return body


def _reap(pid: int) -> str:
    """Wait for the child `pid`, which has closed its end of the pipe; how it ended."""
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status))
        if sig == signal.SIGBUS:
            return "killed by SIGBUS: a file it had mapped could not be read"
        return f"killed by {sig.name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _stop(pid: int) -> None:
    """Kill and reap the child `pid`, unless it was reaped already (0)."""
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def ordered_map(fn: Callable[[T], bytes], items: Sequence[T], workers: int) -> Iterator[bytes]:
    """Yield `fn(item)` for each item, in order, computed by `workers` forked children.

    `fn` runs in the children, so it should only read (files, its arguments) and
    return bytes. An OSError, ValueError or BundleIOError it raises comes back as a
    BundleIOError from this generator with the same message. Closing the
    generator early stops the children.
    """
    pipes: list[BinaryIO] = []
    pids: list[int] = []
    try:
        for k in range(workers):
            r, w = os.pipe()
            pid = _fork(
                functools.partial(_child, fn, items[k::workers], w),
                close=[r, *(p.fileno() for p in pipes)],
            )
            os.close(w)
            pids.append(pid)
            pipes.append(os.fdopen(r, "rb"))

        def reap(k: int) -> str:
            pid, pids[k] = pids[k], 0
            return _reap(pid)

        for i in range(len(items)):
            k = i % workers
            yield _receive(pipes[k], functools.partial(reap, k))
    finally:
        for p in pipes:
            p.close()
        for pid in pids:
            _stop(pid)


class Worker:
    """One forked child answering requests in order: `fn(request) -> answer`.

    The parent `send`s requests without waiting for the answers, takes those
    that have arrived with `ready`, and the rest with `finish`. Requests and
    answers should be small (they travel through pipes); the work is in the
    child. An error raised by `fn` (OSError, ValueError, BundleIOError) ends
    the child and comes back as a BundleIOError in its turn. A child given a
    `nice` increment yields the CPU to the parent (for work that may lag).
    Use as a context manager: leaving it stops the child.
    """

    def __init__(self, fn: Callable[[bytes], bytes], nice: int = 0) -> None:
        req_r, req_w = os.pipe()
        ans_r, ans_w = os.pipe()
        pid = _fork(functools.partial(_serve, fn, req_r, ans_w, nice), close=[req_w, ans_r])
        os.close(req_r)
        os.close(ans_w)
        self._pid = pid
        self._ended = ""  # how the child ended, once reaped
        self._requests: BinaryIO = os.fdopen(req_w, "wb")
        self._answers: BinaryIO = os.fdopen(ans_r, "rb", buffering=0)
        self._due = 0

    @property
    def pid(self) -> int:
        """The child's process id; 0 once it was reaped or stopped."""
        return self._pid

    def send(self, request: bytes) -> None:
        """Queue one request (the child takes them in order)."""
        try:
            self._requests.write(_record(_OK, request))
            self._requests.flush()
        except BrokenPipeError:
            raise BundleIOError(
                f"a worker process ended before its work was done ({self._reap()})"
            ) from None
        self._due += 1

    def ready(self) -> Iterator[bytes]:
        """The answers that have arrived, without waiting for more."""
        while self._due and select.select([self._answers], [], [], 0)[0]:
            self._due -= 1
            yield _receive(self._answers, self._reap)

    def answer(self) -> bytes:
        """The next answer due, waiting for it."""
        if not self._due:
            raise ValueError("no answer is due")
        self._due -= 1
        return _receive(self._answers, self._reap)

    def finish(self) -> Iterator[bytes]:
        """Every answer still due, waiting for each."""
        while self._due:
            yield self.answer()

    def _reap(self) -> str:
        """Wait for the child, which has ended, once; how it ended."""
        if self._pid:
            pid, self._pid = self._pid, 0
            self._ended = _reap(pid)
        return self._ended

    def close(self) -> None:
        """Stop the child (whether or not it is done) and release the pipes."""
        if not self._answers.closed:
            with contextlib.suppress(OSError):  # a child that died leaves a broken pipe
                self._requests.close()
            self._answers.close()
            _stop(self._pid)
            self._pid = 0

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
