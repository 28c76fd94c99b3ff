"""The exit statuses of the project's command lines (`bundle-tool`, `updater`, `abctl`).

One rule for the three tools: the same kind of fault has the same status in each.
docs/exit-status.md is the table (a test checks that it matches these constants);
each tool's manual lists the statuses it can return.
"""

from __future__ import annotations

#: The command did what was asked.
OK = 0
#: An unexpected error: a bug in the tool. One line on standard error, no traceback.
INTERNAL = 1
#: Bad arguments, or an input or configuration file that is missing or invalid.
USAGE = 2
#: The bundle is invalid, corrupt, truncated or overlong.
BAD_BUNDLE = 3
#: A signature or certificate does not establish trust in the bundle.
TRUST = 4
#: Refused: a valid request this device or bundle must not carry out.
REFUSED = 5
#: The bundle or another file could not be read, fetched or written.
TRANSPORT = 6
#: A slot, the boot environment or the state directory failed.
DEVICE = 7
#: Another install or mark-good holds the device's install lock: nothing was done.
BUSY = 8
#: `updater fleet poll --once`: the server has no action for this device (not a fault).
NOTHING_PENDING = 9
#: Interrupted by SIGINT (Ctrl-C): 128 + 2, as a shell reports it.
INTERRUPTED = 130
#: Stopped by SIGTERM: 128 + 15.
TERMINATED = 143
