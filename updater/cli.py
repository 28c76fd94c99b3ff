"""`updater`: install signed bundles into the inactive slot, show and mark slot state.

The only place that prints and that turns exceptions into exit statuses.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, NoReturn

from bootctl import exitstatus
from bootctl.cliboundary import ExitCodes, add_command, make_parser, one_line, run_cli
from bundle_tool.errors import BundleError, TrustError
from bundle_tool.progress import ProgressDisplay

from . import errors, interrupts
from .bootenv import boot_errors, open_control
from .bootfiles import boot_image_info
from .config import DEFAULT_CONFIG, load_config
from .fleet import cli as fleet_cli
from .install import Installer
from .sources import open_source

#: Each class's exit status (docs/exit-status.md), first match wins. An
#: `Interrupted` carries its own: 128 + the signal's number (130, 143).
EXIT_CODES: ExitCodes = (
    (errors.UsageError, exitstatus.USAGE),
    (BundleError, exitstatus.BAD_BUNDLE),
    (TrustError, exitstatus.TRUST),
    (errors.PolicyError, exitstatus.REFUSED),
    (errors.RefusedError, exitstatus.REFUSED),
    (errors.TransportError, exitstatus.TRANSPORT),
    (errors.DeviceError, exitstatus.DEVICE),
    (errors.BusyError, exitstatus.BUSY),
    (errors.Interrupted, exitstatus.INTERRUPTED),
)

EPILOG = """\
exit status:
  0  success
  1  internal error (a bug: please report it)
  2  bad usage or device configuration (the device config, the board config, the
     keyring, an [http] TLS file missing or invalid; the booted slot as target)
  3  invalid, corrupt, truncated or overlong bundle
  4  signature or certificate does not establish trust
  5  bundle refused: by policy (wrong compatible, expired, or a downgrade below
     the anti-rollback floor) or by the board (no slot of its class)
  6  transport: the bundle could not be fetched (network, TLS, HTTP, medium)
  7  device: a slot, the boot environment or the state directory failed, the
     booted slot cannot be told, or the reboot asked for with --reboot (the
     install itself succeeded)
  8  another install or mark-good is running on this device (nothing was done)
  130  interrupted by SIGINT (Ctrl-C)
  143  stopped by SIGTERM (either: an install records it; its target slot is
     left unbootable, as after any failure once writing began)
The same kind of fault has the same status in updater, bundle-tool and abctl
(docs/exit-status.md).
In every failure case the booted slot and the boot order are left as they were,
except a failed --reboot (status 7 after the result): the install stands. A
result that cannot be recorded after the switch is a warning on stderr (and in
the --json result): the install stands, and the status is 0.

environment:
  HTTPS_PROXY, NO_PROXY  honoured for https:// sources
"""


def cmd_install(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(args.config)
    display = ProgressDisplay(json_lines=args.json)
    installer = Installer(config, progress=display)
    try:
        with open_source(args.source, config.http) as source:
            result = installer.install(source, slot=args.slot, delta=args.delta)
    finally:
        display.close()
    out = result.to_dict()
    if installer.warnings:
        out["warnings"] = installer.warnings
    if args.reboot:
        out["rebooting"] = True  # main() reboots once this result is printed
    return out


def reboot(result: dict[str, Any]) -> None:
    """Reboot after a successful install (its result is printed already).

    The install is done and the new slot boots next whatever happens here, so a
    reboot that cannot be run is reported as a device error, in one line.

    Raises:
        DeviceError: `reboot` could not be run, or exited with an error.
    """
    done = f"installed {result['version']} into slot {result['slot']}, which boots next, but"
    try:
        r = subprocess.run(["reboot"], capture_output=True, text=True, check=False)
    except OSError as e:
        raise errors.DeviceError(f"{done} could not run reboot: {e.strerror}") from e
    if r.returncode != 0:
        said = (r.stderr.strip() or r.stdout.strip()).splitlines()
        reason = f": {said[-1].strip()}" if said else ""
        raise errors.DeviceError(f"{done} reboot failed with status {r.returncode}{reason}")


def cmd_status(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(args.config)
    control = open_control(config)
    installer = Installer(config, control=control)
    with boot_errors():
        out = control.status().to_dict()
    records = installer.installed()
    for name, slot in out["slots"].items():
        record = records.get(name)
        slot["device"] = config.slot_device(name)
        slot["installed"] = asdict(record) if record else None
        if config.board.boot.image:
            image = config.boot_dir(name) / config.board.boot.image
            info = boot_image_info(image)
            slot["boot_image"] = {"path": str(image), **asdict(info)}
    out["security_floor"] = installer.security_floor()
    out["last_install"] = installer.state.last_result()
    return out


def cmd_mark_good(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(args.config)
    control = open_control(config)
    installer = Installer(config, control=control)
    slot = installer.mark_good()
    return {"marked_good": slot, "security_floor": installer.state.security_floor()}


def _print_text(command: str, result: dict[str, Any]) -> None:
    if "text" in result:  # fleet commands say it themselves
        print(result["text"])
    elif command == "install":
        print(
            f"installed {result['version']} into slot {result['slot']} "
            f"({result['image_size']} bytes: {result['bytes_fetched']} fetched, "
            f"{result['bytes_reused']} reused, {result['bytes_zero']} zero-filled) "
            f"in {result['seconds']} s; "
            "it boots next"
        )
    elif command == "mark-good":
        print(f"slot {result['marked_good']} marked good")
    else:
        print(
            f"board {result.get('board')}, booted {result.get('booted') or '-'}, "
            f"next boot {result.get('next_boot') or '-'}, "
            f"security floor {result['security_floor']}"
        )
        for name, slot in result["slots"].items():
            inst = slot.get("installed")
            version = inst["version"] if inst else "unknown"
            boot = slot.get("boot_image")
            kernel = ""
            if boot:
                release, linux = boot["version"] or "unknown", boot["kernel"] or "unknown"
                kernel = f", boot image {release} (kernel {linux})"
            print(
                f"  slot {name}: tries left {slot['tries_left']}, "
                f"{'bootable' if slot['bootable'] else 'not bootable'}, version {version}"
                f"{kernel}{', booted' if slot['booted'] else ''}"
            )
        for problem in result.get("problems", []):
            print(f"  problem: {problem}")
        last = result.get("last_install")
        if last:
            print(
                f"  last install: {last.get('status')} {last.get('error', last.get('version', ''))}"
            )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also renders the manual)."""
    p, sub = make_parser(
        "updater",
        """\
        Install signed A/B update bundles into the inactive slot. Every 4096-byte
        block is checked against the signed dm-verity tree before it is written;
        the boot order changes only after the whole slot was read back and checked.""",
        EPILOG,
    )

    def command(name: str, help: str, description: str, prints: str) -> argparse.ArgumentParser:
        """A command with --config and --json; `prints`: what --json makes it print."""
        c = add_command(sub, name, help, description, EPILOG)
        c.add_argument(
            "--config",
            default=DEFAULT_CONFIG,
            metavar="DEVICE.toml",
            help=f"device configuration (default {DEFAULT_CONFIG})",
        )
        c.add_argument(
            "--json",
            action="store_true",
            help=f"JSON output: {prints}",
        )
        return c

    i = command(
        "install",
        "install a bundle into the inactive slot",
        """\
        Install the bundle at SOURCE: a file (e.g. on a USB stick), a folder holding
        exactly one *.bundle file (a USB stick's mount point), - for standard input,
        or an https:// URL. Over HTTPS, blocks the target or the running slot
        already hold at the same offset are not downloaded; with find_moved_blocks =
        true in the device configuration, neither are those the running slot holds
        elsewhere. An interrupted install resumes when run again, from a URL or a
        file alike.""",
        "one JSON object per line, the progress lines then the result (or an error)",
    )
    i.add_argument(
        "source", metavar="SOURCE", help="bundle file, folder with one *.bundle, - or https:// URL"
    )
    i.add_argument("--slot", help="target slot (default: the one not booted)")
    i.add_argument("--reboot", action="store_true", help="reboot when the install succeeded")
    d = i.add_mutually_exclusive_group()
    d.add_argument(
        "--delta",
        dest="delta",
        action="store_true",
        default=None,
        help="reuse blocks of the target and running slots (default for https://, and"
        " for a file whose install into the target was interrupted)",
    )
    d.add_argument(
        "--no-delta", dest="delta", action="store_false", help="fetch every block from SOURCE"
    )

    command(
        "status",
        "show slots, versions and the last install",
        "Show the boot order, tries left, installed versions and the last install result.",
        "the status as one JSON object on one line (or an error)",
    )
    command(
        "mark-good",
        "mark the booted slot good",
        """\
            Restore the booted slot's tries and raise the anti-rollback floor to its
            security version. Run it once the system is healthy: the shipped
            abctl-mark-good.service runs it where the updater is installed.""",
        "the slot marked good and the floor in force as one JSON object (or an error)",
    )
    fleet_cli.add_parser(sub)
    return p


COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "install": cmd_install,
    "status": cmd_status,
    "mark-good": cmd_mark_good,
    "fleet": fleet_cli.run,
}


def _run(args: argparse.Namespace) -> int:
    result = COMMANDS[args.command](args)
    if args.json:
        install = args.command == "install"
        shown = {k: v for k, v in result.items() if k != "text"}
        print(json.dumps({"event": "result", **shown} if install else shown), flush=True)
    else:
        _print_text(args.command, result)
        sys.stdout.flush()
    for warning in result.get("warnings", ()):
        print(f"updater: warning: {one_line(warning)}", file=sys.stderr)
    if result.get("rebooting"):  # printed first: a reboot may end this process at once
        reboot(result)
    status: int = result.get("exit_status", exitstatus.OK)
    return status


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the command line; exits with the documented status."""
    with interrupts.raised():
        status = run_cli(
            build_parser, _run, EXIT_CODES, argv, error_fields={"event": "error"}, prog="updater"
        )
    sys.exit(status)


if __name__ == "__main__":
    main()
