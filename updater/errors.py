"""The updater's exceptions, split by who is at fault.

Errors about the bundle itself (corrupt, untrusted) come from `bundle_tool.errors`
and are reused as they are; the command-line front end maps both hierarchies to
exit statuses.
"""


class UpdaterError(Exception):
    """Root of every error this package raises on purpose."""


class UsageError(UpdaterError):
    """Bad arguments or a bad device configuration file."""


class PolicyError(UpdaterError):
    """A valid, trusted bundle that this device must not install.

    Wrong `compatible`, a security version below the anti-rollback floor, or an
    expired bundle.
    """


class TransportError(UpdaterError):
    """The bundle could not be fetched: network, TLS, HTTP or medium errors."""


class DeviceError(UpdaterError):
    """Reading or writing a slot, the boot environment or the state directory failed."""
