"""Pieces shared by the project's command lines (`bundle-tool`, `updater`, `abctl`)."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from typing import Any


def package_version() -> str:
    """The installed distribution's version ("unknown" when run from a bare tree)."""
    import importlib.metadata  # noqa: PLC0415 - slow to load; only --version needs it

    try:
        return importlib.metadata.version("abupdate")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class _Version(argparse.Action):
    """`--version`: looks the version up only when asked."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(f"{parser.prog} {package_version()}")
        parser.exit()


def make_parser(prog: str, description: str, epilog: str) -> tuple[argparse.ArgumentParser, Any]:
    """A top-level parser with `--version` and its subcommand collection."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=textwrap.dedent(description),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    return parser, sub


def add_command(
    sub: Any, name: str, help: str, description: str, epilog: str
) -> argparse.ArgumentParser:
    """A subcommand whose manual keeps the description's line breaks and the exit statuses."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=textwrap.dedent(description),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def exit_status(
    error: BaseException, table: Sequence[tuple[type[BaseException], int]], default: int
) -> int:
    """The exit status of the first class in `table` that `error` belongs to."""
    return next((code for cls, code in table if isinstance(error, cls)), default)
