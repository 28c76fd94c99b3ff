"""Whether a trusted bundle may be installed on a device (pure checks)."""

from __future__ import annotations

from datetime import UTC, datetime

from .errors import PolicyError
from .manifest import Manifest


def _when(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def check_policy(
    manifest: Manifest,
    *,
    compatible: str | None,
    at: datetime,
    security_floor: int = 0,
    architecture: str | None = None,
) -> None:
    """Refuse a bundle this device must not install.

    Args:
        manifest: the verified manifest.
        compatible: the device's board family; None skips the check (host inspection).
        at: the current time.
        security_floor: the device's anti-rollback floor.
        architecture: the device's architecture; None skips the check.

    Raises:
        PolicyError: with the reason.
    """
    if compatible is not None and manifest.compatible != compatible:
        raise PolicyError(f"bundle is for '{manifest.compatible}', this device is '{compatible}'")
    if manifest.expires is not None and at.timestamp() >= manifest.expires:
        raise PolicyError(f"bundle expired on {_when(manifest.expires)}")
    if manifest.security_version < security_floor:
        raise PolicyError(
            f"bundle security version {manifest.security_version} is below this device's "
            f"anti-rollback floor {security_floor} (downgrade refused)"
        )
    if architecture is not None:
        for image in manifest.images:
            if image.architecture not in (None, architecture):
                raise PolicyError(
                    f"image is built for {image.architecture}, this device is {architecture}"
                )
        if manifest.architecture not in (None, architecture):
            raise PolicyError(
                f"bundle is built for {manifest.architecture}, this device is {architecture}"
            )
