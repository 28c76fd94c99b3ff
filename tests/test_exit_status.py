"""One exit-status rule for the three tools: docs/exit-status.md matches the code's constants."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bootctl import exitstatus
from bootctl.cliboundary import ExitCodes

DOC = Path(__file__).resolve().parent.parent / "docs" / "exit-status.md"


def constants() -> dict[str, int]:
    return {
        name: value
        for name, value in vars(exitstatus).items()
        if name.isupper() and isinstance(value, int)
    }


def documented() -> dict[str, int]:
    rows = re.findall(r"^\| (\d+) \| `([A-Z_]+)` \|", DOC.read_text(encoding="utf-8"), re.M)
    return {name: int(status) for status, name in rows}


def test_the_table_matches_the_constants() -> None:
    assert documented() == constants()


def test_statuses_are_distinct() -> None:
    values = list(constants().values())
    assert len(values) == len(set(values))


def tool_tables() -> dict[str, tuple[ExitCodes, str]]:
    from bootctl import cli as abctl
    from bundle_tool import cli as bundle_tool
    from updater import cli as updater

    return {
        "abctl": (abctl.EXIT_CODES, abctl.build_parser().epilog or ""),
        "bundle-tool": (bundle_tool.EXIT_CODES, bundle_tool.build_parser().epilog or ""),
        "updater": (updater.EXIT_CODES, updater.build_parser().epilog or ""),
    }


@pytest.mark.parametrize("tool", ["abctl", "bundle-tool", "updater"])
def test_each_tool_uses_the_shared_statuses_and_lists_them_in_its_manual(tool: str) -> None:
    table, epilog = tool_tables()[tool]
    used = {status for _, status in table} | {exitstatus.OK, exitstatus.INTERNAL}
    assert used <= set(constants().values())
    listed = {int(n) for n in re.findall(r"^  (\d+)  ", epilog, re.M)}
    assert used <= listed, f"{tool} --help does not list {sorted(used - listed)}"
