"""The installer's tuning knobs, in one value passed to it (tests pass smaller ones).

None of them changes what is written or checked, only how the work is cut up:
the sizes of the spans hashed and written, how often progress is made durable,
and how the delta path batches its requests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bundle_tool import leafsummary

from .blockindex import MAX_CELLS


@dataclass(frozen=True)
class InstallTuning:
    """How an install cuts up its work.

    Attributes:
        span_blocks: data blocks checked and written per step (256: 1 MiB).
        ring_slots: spans in the stream path's hashing ring: being read, hashed,
            checked, written.
        flush_every: bytes written between two flushes, each making progress
            durable (a power cut then resumes) and letting that region be read back.
        batch_groups: leaf groups (128 blocks each) planned together in the delta
            path (16: 8 MiB of data).
        cold_groups: groups in a row in which the running slot held no wanted block
            after which it counts as cold: probed only every `cold_groups` groups.
        cold_batches: batches planned as one while the running slot is cold (fewer,
            longer requests).
        pipeline_depth: chunks of the delta path's downloads read ahead.
        index_cells: cells of the moved-block index at most (8 bytes each).
        summary_window: leaf-summary bytes fetched at a time (the entries of 1024 leaf
            blocks: 512 MiB of image); whole entries, so that none straddles two windows.
    """

    span_blocks: int = 256
    ring_slots: int = 8
    flush_every: int = 64 << 20
    batch_groups: int = 16
    cold_groups: int = 32
    cold_batches: int = 8
    pipeline_depth: int = 4
    index_cells: int = MAX_CELLS
    summary_window: int = 1024 * leafsummary.ENTRY_SIZE

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 1:
                raise ValueError(f"install tuning {f.name} must be a positive integer: {value!r}")
        if self.summary_window % leafsummary.ENTRY_SIZE:
            raise ValueError(
                f"install tuning summary_window must hold whole entries of "
                f"{leafsummary.ENTRY_SIZE} bytes: {self.summary_window}"
            )
