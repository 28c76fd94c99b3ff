"""`abctl`, the command line of `bootctl`; the only place that prints and sets exit codes.

The exit statuses are the rule the three tools share (`bootctl.exitstatus`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path

from bootctl import exitstatus, handover
from bootctl.board import BoardConfig, load_board
from bootctl.bootscript import compile_uboot_script, render_boot_script
from bootctl.cliboundary import ExitCodes, add_command, make_parser, run_cli
from bootctl.control import SlotControl, SlotStatus
from bootctl.errors import (
    BootctlError,
    BootedSlotError,
    BusyError,
    ConfigError,
    EnvError,
    OutputError,
    SlotError,
    SlotRefusedError,
    StorageError,
    UnsetVariableError,
)
from bootctl.state import SlotVerity

__all__ = ["EXIT_CODES", "main"]

DEFAULT_BOARD = "/etc/abupdate/board.toml"

#: Each class's exit status (docs/exit-status.md), first match wins.
EXIT_CODES: ExitCodes = (
    (ConfigError, exitstatus.USAGE),
    (BusyError, exitstatus.BUSY),
    (UnsetVariableError, exitstatus.USAGE),
    (SlotRefusedError, exitstatus.REFUSED),
    (BootedSlotError, exitstatus.DEVICE),
    (SlotError, exitstatus.USAGE),
    (OutputError, exitstatus.TRANSPORT),
    (EnvError, exitstatus.DEVICE),
    (StorageError, exitstatus.DEVICE),
    (BootctlError, exitstatus.DEVICE),
)

_EPILOG = """\
exit status:
  0  success
  1  internal error (a bug: please report it)
  2  usage or configuration: bad arguments (an unknown slot, a malformed verity
     value, a variable that is not set, set-primary without a verity value given
     or recorded), or the board config or fw_env.config missing or invalid, or
     naming a device that does not exist (init), or a device config that cannot
     be read or whose state_dir is no path ("'state_dir' must be a path ...")
  5  refused: the booted slot without --force
  6  boot-script: the script cannot be compiled (mkimage) or written
  7  device: the environment has no valid copy, does not match its size, or the
     variables do not fit; its file or device cannot be read, written or
     flushed; the booted slot cannot be told; the install lock's file cannot
     be created or locked ("cannot open the lock file ...")
  8  busy: an install or mark-good of the updater runs (a verb that changes
     the environment, where the device runs the updater); nothing was done
  130  interrupted by SIGINT (Ctrl-C)
The same kind of fault has the same status in abctl, updater and bundle-tool
(docs/exit-status.md).
"""


_LOCKED = """\
Where the device runs the updater (its device config exists), this holds the
updater's install lock for its write: while an install or mark-good runs, it is
refused (status 8) and changes nothing, since a change made between an install's
first write and its switch could make a half-written slot bootable."""


def _device_config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device-config",
        type=Path,
        default=Path(handover.DEFAULT_DEVICE_CONFIG),
        metavar="FILE",
        help=f"the updater's device config (default {handover.DEFAULT_DEVICE_CONFIG})",
    )


def _locked(args: argparse.Namespace, what: str) -> contextlib.AbstractContextManager[None]:
    return handover.install_lock(args.device_config, what)


def _control(args: argparse.Namespace, board: BoardConfig) -> SlotControl:
    override: list[str] | Path | None = None
    if args.env_config is not None:
        if board.bootloader == "u-boot":
            try:
                override = args.env_config.read_text(encoding="utf-8").splitlines()
            except OSError as e:
                raise ConfigError(f"cannot read {args.env_config}: {e.strerror}") from e
        else:
            override = args.env_config
    return SlotControl.open(board, env_override=override, cmdline_path=args.cmdline)


def _format_status(st: SlotStatus) -> str:
    lines = [
        f"board:     {st.board} ({st.bootloader})",
        f"env:       {st.env_location}" + ("" if st.env_valid else " (NOT VALID: defaults shown)"),
        f"booted:    {st.booted or '-'}",
        f"primary:   {st.primary or '-'}",
        f"next boot: {st.next_boot or '- (all exhausted: counters are reset, board resets)'}",
        f"order:     {' '.join(st.order) or '-'}",
        "",
        f"{'slot':<6}{'device':<20}{'tries':<7}{'bootable':<10}verity",
    ]
    for s in st.slots:
        verity = s.verity or "-"
        if s.verity and not s.verity_valid:
            verity += " (malformed)"
        name = s.name + ("*" if s.booted else "")
        bootable = "yes" if s.bootable else "no"
        lines.append(f"{name:<6}{s.device:<20}{s.tries_left:<7}{bootable:<10}{verity}")
    lines += [f"warning: {p}" for p in st.problems]
    return "\n".join(lines) + "\n"


def _cmd_status(args: argparse.Namespace, board: BoardConfig) -> None:
    st = _control(args, board).status()
    if args.json:
        sys.stdout.write(json.dumps(st.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(_format_status(st))


def _cmd_mark_good(args: argparse.Namespace, board: BoardConfig) -> int | None:
    updater = handover.updater_mark_good(args.device_config)
    if updater is not None:  # the updater's mark-good also stores the anti-rollback floor
        sys.stdout.flush()
        try:
            return subprocess.run(updater, check=False).returncode
        except OSError as e:
            raise ConfigError(f"cannot run {updater[0]}: {e.strerror}") from e
    with _locked(args, "mark the booted slot good"):
        slot = _control(args, board).mark_good()
    print(f"marked slot {slot} good ({board.tries} tries)")
    return None


def _cmd_mark_bad(args: argparse.Namespace, board: BoardConfig) -> None:
    ctl = _control(args, board)
    slot = args.slot
    if slot is None:
        slot = ctl.booted_slot()
        if slot is None:
            raise BootedSlotError("no SLOT given and the booted slot is unknown")
    with _locked(args, f"mark slot {slot} bad"):
        ctl.mark_bad(slot, force=args.force)
    print(f"marked slot {slot} bad")


def _parse_verity(text: str) -> SlotVerity:
    return SlotVerity.from_env(text)


def _cmd_set_primary(args: argparse.Namespace, board: BoardConfig) -> None:
    verity = _parse_verity(args.verity) if args.verity is not None else None
    with _locked(args, f"make slot {args.slot} primary"):
        # Without --verity, the recorded value is read in the same locked write.
        _control(args, board).set_primary(args.slot, verity, force=args.force)
    print(f"slot {args.slot} is primary ({board.tries} tries)")


def _cmd_set_verity(args: argparse.Namespace, board: BoardConfig) -> None:
    verity = _parse_verity(args.value) if args.value else None
    with _locked(args, f"set the verity value of slot {args.slot}"):
        _control(args, board).set_verity(args.slot, verity, force=args.force)
    if verity is None:
        print(f"cleared the verity value of slot {args.slot}")
    else:
        print(f"recorded the verity value of slot {args.slot}")


def _cmd_print_env(args: argparse.Namespace, board: BoardConfig) -> None:
    ctl = _control(args, board)
    env = ctl.env()
    if ctl.store.defaulted:
        print(f"abctl: warning: no valid environment in {ctl.store.describe()}", file=sys.stderr)
    names = args.names or list(env)
    missing = [n for n in names if n not in env]
    for name in names:
        if name in env:
            sys.stdout.write(f"{name}={env[name]}\n")
    if missing:
        raise UnsetVariableError(f"not set: {', '.join(missing)}")


def _cmd_init(args: argparse.Namespace, board: BoardConfig) -> None:
    verity: dict[str, SlotVerity] = {}
    for item in args.verity:
        slot, sep, value = item.partition("=")
        if not sep:
            raise SlotError(f"--verity wants SLOT=HASH:SALT:BLOCKS, got {item!r}")
        verity[slot] = _parse_verity(value)
    ctl = _control(args, board)
    with _locked(args, "initialise the environment"):
        ctl.init(verity)
    print(f"initialised {ctl.store.describe()}")


def _cmd_reset(args: argparse.Namespace, board: BoardConfig) -> None:
    with _locked(args, "reset the boot state"):
        _control(args, board).reset()


def _cmd_boot_script(args: argparse.Namespace, board: BoardConfig) -> None:
    text = render_boot_script(board)
    out: Path = args.output
    to_stdout = str(out) == "-"
    if args.mkimage:
        if board.bootloader != "u-boot":
            raise ConfigError("--mkimage applies to U-Boot boards only")
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "boot.cmd"
            source.write_text(text, encoding="utf-8")
            # mkimage writes only to a named file; for '-' it goes through a temporary one.
            target = Path(tmp) / "boot.scr" if to_stdout else out
            try:
                compile_uboot_script(source, target, board.architecture)
            except StorageError as e:  # mkimage: a file made here, not the device's storage
                raise OutputError(str(e)) from e
            if to_stdout:
                sys.stdout.flush()
                sys.stdout.buffer.write(target.read_bytes())
                sys.stdout.buffer.flush()
    elif to_stdout:
        sys.stdout.write(text)
    else:
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as e:
            raise OutputError(f"cannot write {out}: {e.strerror}") from e


_DESCRIPTION = """\
Inspect and change the A/B slot state kept in the U-Boot environment or the GRUB
environment block: the boot order (BOOT_ORDER), the boot attempts left per slot
(BOOT_<slot>_LEFT) and the dm-verity parameters the boot script passes to the
kernel (BOOT_<slot>_VERITY). See docs/abctl.md and docs/boot-protocol.md.

Every change is one atomic environment write. The running slot is read from
abupdate.slot= (or rauc.slot=) on the kernel command line.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `abctl` (exposed for documentation and tests)."""
    parser, sub = make_parser("abctl", _DESCRIPTION, _EPILOG)
    parser.add_argument(
        "--board",
        type=Path,
        default=Path(DEFAULT_BOARD),
        metavar="FILE",
        help=f"board config (TOML; default {DEFAULT_BOARD})",
    )
    parser.add_argument(
        "--env-config",
        type=Path,
        metavar="FILE",
        help="use this environment instead of the board's: an fw_env.config file (U-Boot) "
        "or a grubenv file (GRUB)",
    )
    parser.add_argument(
        "--cmdline",
        type=Path,
        default=Path("/proc/cmdline"),
        metavar="FILE",
        help="kernel command line to find the booted slot in (default /proc/cmdline)",
    )

    def add(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        return add_command(sub, name, help_, description, _EPILOG)

    def add_change(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        """A verb that writes the environment: it waits for no install (see _LOCKED)."""
        p = add(name, help_, textwrap.dedent(description) + "\n\n" + _LOCKED)
        _device_config_option(p)
        return p

    p = add(
        "status",
        "show boot order, tries left, verity values and the booted slot",
        """\
        Show the slot state. Malformed values are reported as warnings, never fatal.""",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_cmd_status)

    p = add_change(
        "mark-good",
        "give the booted slot its full tries back (after boot-complete.target)",
        """\
        Mark the running slot good: its tries-left counter goes back to the board's
        tries. Run it only once the system is healthy; the shipped
        abctl-mark-good.service does so after boot-complete.target.

        On a device that runs the updater (its device config exists and the updater
        command is installed), this runs `updater mark-good --config FILE` instead,
        which also stores the anti-rollback floor the slot brings; the device config
        then names the board and the environment, and the status is the updater's.""",
    )
    p.set_defaults(func=_cmd_mark_good)

    p = add_change(
        "mark-bad",
        "set a slot's tries to 0 so the bootloader skips it",
        """\
        Mark SLOT (default: the booted slot) bad: it gets no more boot attempts until
        it is installed again or marked good. The booted slot needs --force.""",
    )
    p.add_argument("slot", nargs="?", metavar="SLOT", help="slot name (default: booted slot)")
    p.add_argument("--force", action="store_true", help="allow marking the booted slot bad")
    p.set_defaults(func=_cmd_mark_bad)

    p = add_change(
        "set-primary",
        "boot SLOT next, with full tries",
        """\
        Put SLOT first in BOOT_ORDER with full tries and record its verity value, in
        one environment write. This is what an install does last. The booted slot
        needs --force.""",
    )
    p.add_argument("slot", metavar="SLOT")
    p.add_argument(
        "--verity",
        metavar="HASH:SALT:BLOCKS",
        help="dm-verity parameters of the slot's image (default: keep the recorded value)",
    )
    p.add_argument("--force", action="store_true", help="allow the booted slot")
    p.set_defaults(func=_cmd_set_primary)

    p = add_change(
        "set-verity",
        "record (or clear) a slot's dm-verity parameters",
        """\
        Record VALUE (HASH:SALT:BLOCKS; an empty string clears it) as the slot's
        verity parameters. A slot without them is never booted. The booted slot needs
        --force.""",
    )
    p.add_argument("slot", metavar="SLOT")
    p.add_argument("value", metavar="VALUE")
    p.add_argument("--force", action="store_true", help="allow the booted slot")
    p.set_defaults(func=_cmd_set_verity)

    p = add(
        "print-env",
        "print environment variables as NAME=VALUE",
        """\
        Print all variables of the environment (or only NAMEs), one NAME=VALUE per
        line.""",
    )
    p.add_argument("names", nargs="*", metavar="NAME")
    p.set_defaults(func=_cmd_print_env)

    p = add_change(
        "init",
        "create the environment (also over a corrupt one)",
        """\
        Write a fresh environment: default boot order and full tries. Variables of a
        valid environment are kept; a corrupt or missing one is replaced. This is the
        only command that writes when no valid copy exists.""",
    )
    p.add_argument(
        "--verity",
        action="append",
        default=[],
        metavar="SLOT=HASH:SALT:BLOCKS",
        help="record a slot's verity parameters (repeatable)",
    )
    p.set_defaults(func=_cmd_init)

    p = add_change(
        "reset",
        "default boot order and full tries for every slot",
        """\
        Reset BOOT_ORDER to the board's order and every slot's tries; verity values
        stay.""",
    )
    p.set_defaults(func=_cmd_reset)

    p = add(
        "boot-script",
        "write the board's boot script (U-Boot boot.cmd/boot.scr or GRUB grub.cfg)",
        """\
        Generate the boot script that implements the slot selection for this board:
        U-Boot boot.cmd source (or, with --mkimage, the compiled boot.scr) or GRUB
        grub.cfg.""",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="OUT",
        help="file to write; '-' for stdout",
    )
    p.add_argument(
        "--mkimage",
        action="store_true",
        help="compile with 'mkimage -T script -C none' into a boot.scr image (U-Boot only)",
    )
    p.set_defaults(func=_cmd_boot_script)
    return parser


def _run(args: argparse.Namespace) -> int | None:
    status: int | None = args.func(args, load_board(args.board))
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run `abctl`; returns the exit status."""
    return run_cli(build_parser(), _run, EXIT_CODES, argv)


if __name__ == "__main__":
    sys.exit(main())
