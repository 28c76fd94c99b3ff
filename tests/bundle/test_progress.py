"""The progress bar both tools show: it fits any width, in one unit family."""

from __future__ import annotations

import io
import json
import re

import pytest

from bundle_tool.progress import MiB, Progress, ProgressDisplay, render_bar

REPORT = Progress("data", 3 * MiB // 2, 4 * MiB, fetched=2 * MiB, reused=MiB // 2)


@pytest.mark.parametrize("width", [20, 40, 60, 79, 80, 100, 200])
def test_the_bar_fits_the_width_and_keeps_what_matters_most(width: int) -> None:
    line = render_bar(REPORT, width, rate=12.5 * MiB)
    assert len(line) < width
    if width >= 40:
        assert line.startswith("data  37% ") and "1.5/4.0 MiB" in line
    units = set(re.findall(r"[\d.]+ ([A-Za-z/]+)", line))
    assert units <= {"MiB", "MiB/s"}


def test_parts_give_way_in_order() -> None:
    wide = render_bar(REPORT, 200, rate=12.5 * MiB)
    assert wide.endswith("| 1.5/4.0 MiB  12.5 MiB/s  fetched 2.0 MiB  reused 0.5 MiB")
    assert "|" + "#" * 10 in wide
    # Without room for everything, the bar goes first, then the rate, then the rest.
    assert render_bar(REPORT, 80, rate=12.5 * MiB) == wide.replace(
        wide[10 : wide.index("| ") + 2], ""
    )
    medium = render_bar(REPORT, 60, rate=12.5 * MiB)
    assert medium == "data  37% 1.5/4.0 MiB  fetched 2.0 MiB  reused 0.5 MiB"
    assert render_bar(REPORT, 40) == "data  37% 1.5/4.0 MiB  fetched 2.0 MiB"


def test_json_lines_at_most_one_per_percent_and_none_after_a_closed_pipe(
    capsys: pytest.CaptureFixture[str],
) -> None:
    display = ProgressDisplay(json_lines=True)
    for done in range(0, 4 * MiB + 1, 4096):
        display(Progress("data", done, 4 * MiB, fetched=done, reused=0))
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["done"] * 100 // line["total"] for line in lines] == list(range(101))
    assert lines[0] == {
        "event": "progress",
        "phase": "data",
        "done": 0,
        "total": 4 * MiB,
        "fetched": 0,
        "reused": 0,
    }


class ClosedPipe(io.StringIO):
    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise BrokenPipeError


def test_a_closed_output_stops_the_display_not_the_work() -> None:
    display = ProgressDisplay(stream=ClosedPipe())
    display(REPORT)  # no exception: the install it shows goes on
    assert display.closed
    display(Progress("data", 4 * MiB, 4 * MiB))
    display.close()


def test_no_bar_where_no_terminal() -> None:
    stream = io.StringIO()
    display = ProgressDisplay(stream=stream)
    display(REPORT)
    display.close()
    assert stream.getvalue() == ""


class SizelessTerminal(io.StringIO):
    """A terminal that does not tell its size (as under `script`): the bar takes 80 columns."""

    def isatty(self) -> bool:
        return True


def test_a_terminal_without_a_size_gets_80_columns() -> None:
    stream = SizelessTerminal()
    display = ProgressDisplay(stream=stream)
    display(REPORT)
    display.close()
    drawn = stream.getvalue().split("\r")[1].removesuffix("\x1b[K")
    assert drawn == render_bar(REPORT, 80)
    assert stream.getvalue().endswith("\r\x1b[K")  # cleared at the end


def test_phases_not_counted_in_bytes_show_their_own_unit() -> None:
    files = render_bar(Progress("boot-files", 1, 2, fetched=2 * MiB, reused=0), 100, rate=5.0)
    assert files.startswith("boot-files  50% |") and files.endswith(
        "| 1/2 files  fetched 2.0 MiB  reused 0.0 MiB"
    )
    switch = render_bar(Progress("switch", 0, 1, fetched=2 * MiB, reused=0), 100)
    assert switch == "switch fetched 2.0 MiB  reused 0.0 MiB"
