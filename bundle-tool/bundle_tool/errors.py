"""The exceptions of bundle handling, split by who is at fault.

The command-line front end is the only place that turns them into exit statuses.
"""


class BundleToolError(Exception):
    """Root of every error this package raises on purpose."""


class UsageError(BundleToolError):
    """The caller asked for something impossible (bad argument or input file)."""


class BundleError(BundleToolError):
    """The bundle is malformed, corrupt, truncated or has extra bytes."""


class TrustError(BundleToolError):
    """A signature or certificate does not establish trust in the bundle."""


class PolicyError(BundleToolError):
    """A valid, trusted bundle that this device must not install.

    Wrong `compatible`, a security version below the anti-rollback floor, or an
    expired bundle.
    """


class BundleIOError(BundleToolError):
    """Reading or writing a file failed."""
