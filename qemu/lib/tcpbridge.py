"""Connect standard input/output to 127.0.0.1:PORT (one guest connection per process).

QEMU's user-mode networking starts this for every connection the guest opens to a forwarded
address (`guestfwd=...-cmd:`), so several connections work one after another and at once.
"""

from __future__ import annotations

import os
import select
import socket
import sys


def main() -> int:
    """Copy bytes both ways until either side closes."""
    port = int(sys.argv[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        fds = [0, sock.fileno()]
        while fds:
            ready, _, _ = select.select(fds, [], [])
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    sock.sendall(data)
                else:
                    sock.shutdown(socket.SHUT_WR)
                    fds.remove(0)
            if sock.fileno() in ready:
                data = sock.recv(65536)
                if not data:
                    return 0
                view = memoryview(data)
                while view:
                    view = view[os.write(1, view) :]
    return 0


if __name__ == "__main__":
    sys.exit(main())
