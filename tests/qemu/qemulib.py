"""The QEMU image tools' modules (qemu/lib) for the flows: one settings module for both."""

from __future__ import annotations

import sys
from pathlib import Path

LIB = Path(__file__).resolve().parents[2] / "qemu" / "lib"
if str(LIB) not in sys.path:
    sys.path.insert(0, str(LIB))

import cache  # noqa: E402
import settings  # noqa: E402
import vm  # noqa: E402

__all__ = ["cache", "settings", "vm"]
