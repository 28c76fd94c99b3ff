"""Run a function over a list of work items in forked processes, results in order.

Hashing holds the GIL between blocks, so threads do not scale and worker
processes do. A process pool pays for pickling, a feeder thread and a queue on
every task; for work items of equal cost a static split is enough: child k takes
items k, k + n, k + 2n, ... and writes each result to its own pipe, and the
parent reads the pipes in turn. The pipe's buffer bounds how far a child runs
ahead, so memory stays flat however many items there are.

Each record on a pipe is one status byte, an 8-byte little-endian length and
that many bytes: the result (status 0) or an error message (status 1).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO, TypeVar

from .errors import BundleIOError

T = TypeVar("T")

_OK = b"\x00"
_FAILED = b"\x01"
_LENGTH = 8


def _child(fn: Callable[[T], bytes], items: Sequence[T], out: BinaryIO) -> int:
    """Body of a worker process: run `fn` over `items`, one record each."""
    try:
        for item in items:
            try:
                result = fn(item)
            except (OSError, ValueError, BundleIOError) as e:
                message = str(e).encode("utf-8", "replace")
                out.write(_FAILED + len(message).to_bytes(_LENGTH, "little") + message)
                return 1
            out.write(_OK + len(result).to_bytes(_LENGTH, "little") + result)
            out.flush()
        return 0
    except BaseException:  # a child must never return into the parent's code
        return 2


def _receive(pipe: BinaryIO) -> bytes:
    head = pipe.read(1 + _LENGTH)
    if len(head) != 1 + _LENGTH:
        raise BundleIOError("a hashing process ended before its work was done")
    body = pipe.read(int.from_bytes(head[1:], "little"))
    if head[:1] == _FAILED:
        raise BundleIOError(body.decode("utf-8", "replace"))
    return body


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
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child, which leaves by _exit
                code = 2
                try:
                    os.close(r)
                    for p in pipes:
                        p.close()
                    with os.fdopen(w, "wb") as out:
                        code = _child(fn, items[k::workers], out)
                finally:
                    os._exit(code)
            os.close(w)
            pids.append(pid)
            pipes.append(os.fdopen(r, "rb"))
        for i in range(len(items)):
            yield _receive(pipes[i % workers])
    finally:
        for p in pipes:
            p.close()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
