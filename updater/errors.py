"""The updater's exceptions, split by who is at fault.

Errors about the bundle itself (corrupt, untrusted, refused by policy) and the one
`UsageError` come from `bundle_tool.errors` and are reused as they are; the
command-line front end maps both hierarchies to exit statuses.
"""

from bootctl.cliboundary import Interrupted  # a signal ended the command (one class for all tools)
from bundle_tool.errors import PolicyError, UsageError

__all__ = [
    "BusyError",
    "ContentChanged",
    "DeviceError",
    "Interrupted",
    "PolicyError",
    "RefusedError",
    "ServerRefused",
    "TransportError",
    "UpdaterError",
    "UsageError",
]


class UpdaterError(Exception):
    """Root of every error this package raises on purpose."""


class TransportError(UpdaterError):
    """The bundle could not be fetched: network, TLS, HTTP or medium errors."""


class ServerRefused(TransportError):
    """The server refused a request for good: an HTTP 4xx other than 408 and 429.

    Attributes:
        status: The HTTP status.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ContentChanged(TransportError):
    """The file at a URL changed while it was downloaded (its ETag did)."""


class DeviceError(UpdaterError):
    """Reading or writing a slot, the boot environment or the state directory failed."""


class BusyError(UpdaterError):
    """Another install or mark-good holds the device's lock: nothing was done."""


class RefusedError(UpdaterError):
    """A valid, trusted bundle this device cannot take.

    The board has no slot of an image's class, an image or artifact has no place
    among the board's boot files, or the bundle lacks a file of the slot group.
    (A refusal by the bundle's own policy, such as a
    wrong `compatible`, is `PolicyError`.)
    """
