"""Finding blocks the running slot holds at another offset (a moved file, shifted data).

With `find_moved_blocks`, the delta path looks each block it would otherwise
fetch up in the index of the running slot (`blockindex`). A block found anchors
guesses for its neighbours; every guess is only a candidate, which the caller
reads, hashes and compares with the signed leaf entry before writing it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .blockindex import BlockIndex

#: Copies the (block, running slot's block) pairs whose running block matches its
#: signed digest; returns the blocks copied.
CopyGuesses = Callable[[list[tuple[int, int]]], set[int]]


def copy_moved(
    fetch: Sequence[int],
    expected: Callable[[int, int], bytes],
    index: BlockIndex,
    copy: CopyGuesses,
) -> list[int]:
    """Copy the blocks of `fetch` the running slot holds elsewhere; return the rest.

    A block the index finds anchors a guess for its neighbours in `fetch`, up to
    `stride - 1` blocks away: a moved file is a run of blocks, and the index
    may hold only every `stride`-th block. Every guess goes to `copy`, which
    writes only blocks that match, from the bytes checked. In the next round a
    guess that failed is looked up itself, or guessed again from a neighbour
    copied meanwhile (where two moved runs meet), until no new guess is left.

    Args:
        fetch: the blocks to be fetched, sorted.
        expected: the signed digests of `count` blocks from `first`.
        index: the running slot's blocks by digest.
        copy: tries the guesses (see `CopyGuesses`).
    """
    wanted = set(fetch)
    looked: set[int] = set()  # blocks looked up in the index
    tried: set[tuple[int, int]] = set()  # (block, active block) guesses made
    source: dict[int, int] = {}  # block -> the active block it was copied from
    pending = fetch
    while pending:
        guesses: dict[int, int] = {}  # block -> where the active slot may hold it
        for b in pending:
            if b in guesses:
                continue
            if b not in looked:
                looked.add(b)
                c = index.find(expected(b, 1))
                if c is not None:
                    guess_run(b, c, index.stride - 1, wanted, guesses)
                    continue
            for c in (source.get(b - 1, -2) + 1, source.get(b + 1, 0) - 1):
                if c >= 0 and (b, c) not in tried:
                    guesses[b] = c
                    break
        guesses = {b: c for b, c in guesses.items() if (b, c) not in tried}
        if not guesses:
            break
        tried.update(guesses.items())
        copied = copy(sorted(guesses.items()))
        source.update((b, guesses[b]) for b in copied)
        wanted -= copied
        near = {n for b in copied for n in (b - 1, b + 1)}
        pending = sorted(wanted & (near | guesses.keys()))
    return [b for b in fetch if b in wanted]


def guess_run(b: int, c: int, reach: int, wanted: set[int], guesses: dict[int, int]) -> None:
    """Guess that the wanted blocks around b, as far as `reach` away, moved with it to c.

    Each block of a moved run of `stride` or more blocks lies within stride - 1 of
    one the index holds: `reach` is stride - 1.
    """
    lo = b
    while lo > b - reach and lo - 1 in wanted and lo - 1 not in guesses and c > b - lo:
        lo -= 1
    hi = b
    while hi < b + reach and hi + 1 in wanted:
        hi += 1
    guesses.update((x, c + x - b) for x in range(lo, hi + 1))
