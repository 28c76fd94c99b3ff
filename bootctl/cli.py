"""`abctl`, the command line of `bootctl`; the only place that prints and sets exit codes."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bootctl.board import BoardConfig, load_board
from bootctl.bootscript import compile_uboot_script, render_boot_script
from bootctl.errors import (
    BootctlError,
    ConfigError,
    EnvError,
    SlotError,
    StorageError,
)

__all__ = ["EXIT_CODES", "main"]

DEFAULT_BOARD = "/etc/abupdate/board.toml"

#: Exit status of each outcome (documented in docs/abctl.md and `abctl --help`).
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_ENV = 4
EXIT_SLOT = 5
EXIT_STORAGE = 6
EXIT_CODES: dict[type[BootctlError], int] = {
    ConfigError: EXIT_CONFIG,
    EnvError: EXIT_ENV,
    SlotError: EXIT_SLOT,
    StorageError: EXIT_STORAGE,
}

_EPILOG = """\
exit status:
  0  success
  1  internal error (a bug: please report it)
  2  usage error (bad arguments)
  3  configuration error (board config or fw_env.config missing or invalid)
  4  environment error (no valid copy, size mismatch, variables do not fit)
  5  slot error (unknown slot, or refused: e.g. marking the booted slot bad without --force)
  6  storage error (the environment file or device cannot be read, written or flushed)
"""


def _cmd_boot_script(args: argparse.Namespace, board: BoardConfig) -> int:
    text = render_boot_script(board)
    out: Path = args.output
    if args.mkimage:
        if board.bootloader != "u-boot":
            raise ConfigError("--mkimage applies to U-Boot boards only")
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "boot.cmd"
            source.write_text(text, encoding="utf-8")
            compile_uboot_script(source, out, board.architecture)
    elif str(out) == "-":
        sys.stdout.write(text)
    else:
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as e:
            raise StorageError(f"cannot write {out}: {e.strerror}") from e
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `abctl` (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="abctl",
        description=(
            "Inspect and change the A/B slot state kept in the U-Boot or GRUB environment: "
            "boot order, tries left per slot and the dm-verity parameters the boot script "
            "passes to the kernel."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--board",
        type=Path,
        default=Path(DEFAULT_BOARD),
        metavar="FILE",
        help=f"board config (TOML; default {DEFAULT_BOARD})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "boot-script",
        help="write the board's boot script (U-Boot boot.cmd/boot.scr or GRUB grub.cfg)",
        description=(
            "Generate the boot script that implements the slot selection for this board: "
            "U-Boot boot.cmd source (or, with --mkimage, the compiled boot.scr) or GRUB grub.cfg."
        ),
    )
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="'-' for stdout")
    p.add_argument(
        "--mkimage",
        action="store_true",
        help="compile with 'mkimage -T script -C none' into a boot.scr image (U-Boot only)",
    )
    p.set_defaults(func=_cmd_boot_script)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `abctl`; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        board = load_board(args.board)
        status: int = args.func(args, board)
    except BootctlError as e:
        print(f"abctl: error: {e}", file=sys.stderr)
        for cls, code in EXIT_CODES.items():
            if isinstance(e, cls):
                return code
        return EXIT_INTERNAL
    return status


if __name__ == "__main__":
    sys.exit(main())
