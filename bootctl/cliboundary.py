"""The boundary shared by the project's command lines (`bundle-tool`, `updater`, `abctl`).

`run_cli` parses the arguments, calls the command, and turns what escapes it into
one line on standard error and an exit status (see `bootctl.exitstatus`): the
one place of each tool that does so. The parser helpers give the three tools the
same `--version` and manual layout, and a rejected subcommand line the
subcommand's own usage. `signals_raised` turns SIGINT and SIGTERM into an exception,
so a command stopped by either cleans up and ends like any other failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import sys
import textwrap
import unicodedata
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType
from typing import Any

from bootctl import exitstatus

#: Exception classes and their exit statuses, first match wins.
ExitCodes = Sequence[tuple[type[BaseException], int]]


#: The signals that end a command through an exception (`signals_raised`).
SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: A Python signal handler.
SignalHandler = Callable[[int, FrameType | None], None]


class Interrupted(BaseException):
    """A signal (SIGINT, SIGTERM) ended the command.

    Like `KeyboardInterrupt`, it is not an `Exception`: the handler raises it wherever
    the main thread happens to be, and code that turns any `Exception` into its own
    error must not make it look like one.

    Attributes:
        signum: the signal's number.
        exit_status: 128 + `signum`, as a shell reports a command the signal ended
            (130 for SIGINT, 143 for SIGTERM; see `exit_status`).
    """

    def __init__(self, signum: int, message: str | None = None) -> None:
        self.signum = signum
        self.exit_status = 128 + signum
        super().__init__(message or f"interrupted by {signal.Signals(signum).name}")


def _interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_raised(handler: SignalHandler = _interrupted) -> Iterator[None]:
    """While the body runs, SIGINT and SIGTERM go to `handler` (in the main thread).

    The default handler raises `Interrupted`; list it in the tool's exit codes.
    """
    old = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, previous in old.items():
            signal.signal(s, previous)


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


class _Command(argparse.ArgumentParser):
    """A subcommand's parser: an argument it does not know is its error, shown with its usage.

    A plain subparser hands unknown arguments up to the top-level parser, whose error
    shows the top-level usage (`usage: updater [-h] [--version] COMMAND ...`), not the
    usage of the command the argument was given to.
    """

    # typeshed gives the base class overloads by namespace type; argparse calls this one.
    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def make_parser(prog: str, description: str, epilog: str) -> tuple[argparse.ArgumentParser, Any]:
    """A top-level parser with `--version` and its subcommand collection.

    The subcommands' parsers (and those of their own subcommands) reject an unknown
    argument with their own usage.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description=textwrap.dedent(description),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Command
    )
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


def exit_status(error: BaseException, table: ExitCodes, default: int) -> int:
    """The exit status of `error`: its own `exit_status` if it has one, else the table's.

    An error whose status depends on it (interrupted by signal N: 128 + N) carries it as
    an int attribute `exit_status`; otherwise the first class in `table` that `error`
    belongs to decides.
    """
    own = getattr(error, "exit_status", None)
    if isinstance(own, int):
        return own
    return next((code for cls, code in table if isinstance(error, cls)), default)


def one_line(text: str) -> str:
    """`text` as one line: control characters and line separators become spaces.

    Each run of white space then becomes one space (a server's CR LF is one space). A
    reason can carry text from outside (a server's message, a file's name, a terminal
    escape), and an error is one line on standard error.
    """
    spaced = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text)
    return " ".join(spaced.split())


def _bug(error: BaseException) -> str:
    """One line saying what escaped a command unexpectedly."""
    said = one_line(str(error)) or "no message"
    return f"internal error (a bug: please report it): {type(error).__name__}: {said}"


def _stdout_closed() -> bool:
    """Whether nobody reads standard output any more (a pipe whose reader exited)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError):  # no real descriptor (a test's captured stdout)
        return False


def _quiet_stdout() -> None:
    """Point standard output at /dev/null, so the flush at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real descriptor (a test's captured stdout)
        pass


def run_cli(
    parser: argparse.ArgumentParser | Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace], int | None],
    exit_codes: ExitCodes,
    argv: Sequence[str] | None = None,
    *,
    error_fields: Mapping[str, Any] | None = None,
    prog: str | None = None,
) -> int:
    """Parse `argv`, call `run` with the arguments, and return the exit status.

    `run` carries out the command and prints its result; it may return a status
    other than 0 for a result (`updater fleet poll`: nothing pending). An exception in
    `exit_codes` is one line, `PROG: error: REASON`, on standard error (with
    `--json`, then also a JSON object with `error` and `exit_status`, plus
    `error_fields`, on standard output) and its status; REASON is the exception's
    text on one line (`one_line`). Anything else is a bug: the same, with status 1
    and no traceback. A reader that closes the pipe early (`| head -1`) ends the
    output quietly: the command was carried out, and an error's line on standard
    error is still written. Another broken pipe (a helper's) is a failure, status 1.

    A signal (`Interrupted`) while the parser is built or parses is one line too,
    `PROG: error: interrupted by SIG...`, and its status (130, 143): no command ran.

    Args:
        parser: the tool's argument parser (its `prog` starts each error line), or
            the function that builds it (built here, where a signal is reported).
        run: the command, called with the parsed arguments.
        exit_codes: exception classes and their statuses, first match wins.
        argv: the arguments (default: the process's).
        error_fields: fields the JSON error object carries first (`{"event": "error"}`).
        prog: the tool's name for a signal's line before the parser exists (default:
            the name the program was started by).
    """
    try:
        if not isinstance(parser, argparse.ArgumentParser):
            parser = parser()
        args = parser.parse_args(argv)
    except Interrupted as e:
        name = prog or os.path.basename(sys.argv[0])
        print(f"{name}: error: {one_line(str(e))}", file=sys.stderr, flush=True)
        return e.exit_status
    status = exitstatus.OK
    try:
        try:
            with warnings.catch_warnings():
                # A library's warning (cryptography's about a certificate's odd name, say)
                # would break the one-line reason; what matters is said in that line.
                warnings.simplefilter("ignore")
                done = run(args)
            sys.stdout.flush()
            return status if done is None else done
        except BrokenPipeError as e:
            if _stdout_closed():
                raise
            status, reason = exitstatus.INTERNAL, _bug(e)  # another pipe: not the reader
        except tuple(cls for cls, _ in exit_codes) as e:
            status = exit_status(e, exit_codes, exitstatus.INTERNAL)
            reason = one_line(str(e))
        except KeyboardInterrupt:
            status, reason = exitstatus.INTERRUPTED, "interrupted"
        except Exception as e:  # the boundary: a bug is one line, not a traceback
            status, reason = exitstatus.INTERNAL, _bug(e)
        # Standard error first: a reader that closed standard output must not cost the line.
        print(f"{parser.prog}: error: {reason}", file=sys.stderr, flush=True)
        if getattr(args, "json", False):
            error = {**(error_fields or {}), "error": reason, "exit_status": status}
            print(json.dumps(error), flush=True)
        return status
    except BrokenPipeError:
        _quiet_stdout()
        return status
