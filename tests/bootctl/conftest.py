"""Shared fixtures of the bootctl tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bootctl.paths import BOARD_FILES


@pytest.fixture(params=BOARD_FILES, ids=[p.stem for p in BOARD_FILES])
def board_file(request: pytest.FixtureRequest) -> Path:
    """Every shipped board config."""
    path: Path = request.param
    return path
