"""Paths the bootctl tests share."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BOARD_DIR = REPO / "board-configs"
BOARD_FILES = sorted(BOARD_DIR.glob("*.toml"))
