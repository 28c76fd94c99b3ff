"""Pieces shared by the project's command lines (`bundle-tool`, `updater`)."""

from __future__ import annotations

import argparse
import importlib.metadata
import textwrap
from collections.abc import Sequence
from typing import Any


def package_version() -> str:
    """The installed distribution's version ("unknown" when run from a bare tree)."""
    try:
        return importlib.metadata.version("abupdate")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def make_parser(prog: str, description: str, epilog: str) -> tuple[argparse.ArgumentParser, Any]:
    """A top-level parser with `--version` and its subcommand collection."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=textwrap.dedent(description),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
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
