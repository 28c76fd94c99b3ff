"""`updater fleet poll --once | run | status`: the fleet client's commands.

Registered by `updater.cli`, which prints the result and maps errors to exit
statuses; here the arguments are declared and the agent is called.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from bootctl import exitstatus
from bootctl.cliboundary import add_command, one_line

from ..config import DEFAULT_CONFIG, load_config

if TYPE_CHECKING:
    from .agent import CycleResult

EXIT_NOTHING_PENDING = exitstatus.NOTHING_PENDING

EPILOG = """\
exit status of `fleet poll --once`:
  0  an action was worked on (installed, reported, canceled)
  1  internal error (a bug: please report it)
  2-7  as for `updater install`: the cycle failed (a failed install is reported
     to the server first, as closed/failure)
  8  another install or mark-good is running on this device (nothing was done:
     an install or a cancel waits for a later poll)
  9  no action was pending
  130  interrupted by SIGINT (Ctrl-C)
  143  stopped by SIGTERM (an install under way records it, as for `updater
     install`)
`fleet run` exits only on bad usage (2); `fleet status` exits 0, or 2 or 7.
"""


def add_parser(sub: Any) -> None:
    """Add `fleet` and its commands to the `updater` parser."""
    fleet = add_command(
        sub,
        "fleet",
        "poll a hawkBit DDI server (goosebit, Eclipse hawkBit) and install what it assigns",
        """\
        The fleet client: polls the [fleet] server of the device configuration,
        installs the deployment it assigns, and reports what happened after the
        reboot, from the boot state (docs/fleet.md).""",
        EPILOG,
    )
    actions = fleet.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    poll = add_command(actions, "poll", "run one poll cycle", "Run exactly one poll cycle.", EPILOG)
    poll.add_argument("--once", action="store_true", required=True, help="one cycle (required)")
    add_command(
        actions, "run", "poll for ever", "Poll for ever (the systemd unit runs this).", EPILOG
    )
    add_command(
        actions,
        "status",
        "show server, last poll, pending action and queued feedback",
        "Show the server, the controller id, the last poll and its answer, the pending "
        "action and the feedback not yet acknowledged.",
        EPILOG,
    )
    for parser in actions.choices.values():
        parser.add_argument(
            "--config",
            default=DEFAULT_CONFIG,
            metavar="DEVICE.toml",
            help=f"device configuration (default {DEFAULT_CONFIG})",
        )
        parser.add_argument("--json", action="store_true", help="JSON output")


def _line(result: CycleResult) -> dict[str, Any]:
    return {"result": result.kind, "detail": result.detail, "next_poll_in": round(result.wait, 1)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the `fleet` command named in `args`; its result for `updater.cli` to print."""
    from .agent import FleetAgent  # noqa: PLC0415 - the HTTP client loads only for fleet commands

    config = load_config(args.config)
    agent = FleetAgent(config)
    if args.fleet_command == "status":
        out = agent.status()
        last = out["last_poll"] or {}
        pending = out["pending"]
        out["text"] = "\n".join(
            [
                f"server {out['server']}, tenant {out['tenant']}, "
                f"controller {out['controller_id']}",
                f"  last poll: {last.get('answer', 'never')}",
                "  pending: "
                + (
                    f"{pending['action_id']} {pending['version']} ({pending['phase']})"
                    if pending
                    else "none"
                ),
                f"  queued feedback: {len(out['queued_feedback'])}",
            ]
        )
        return out
    if args.fleet_command == "poll":
        result = agent.poll_once()
        if result.error is not None:
            raise result.error
        out = _line(result)
        out["text"] = f"{result.kind}: {one_line(result.detail)}"
        if result.kind == "none":
            out["exit_status"] = EXIT_NOTHING_PENDING
        return out

    def show(result: CycleResult) -> None:
        line = _line(result)
        text = f"{result.kind}: {one_line(result.detail)}"
        print(json.dumps(line) if args.json else text, flush=True)
        if result.error is not None:
            print(f"updater: fleet: {one_line(str(result.error))}", file=sys.stderr, flush=True)

    agent.run(on_cycle=show)
    return {"text": "stopped"}  # pragma: no cover - run() returns only in tests
