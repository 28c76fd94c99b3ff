"""Pick the bundle source that a SOURCE argument names."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from .errors import UsageError
from .filesource import FileSource, StdinSource
from .httpsettings import HttpSettings
from .source import BundleSource

BUNDLE_SUFFIX = ".bundle"


def _bundle_in_directory(directory: Path) -> Path:
    """The one `*.bundle` file in a directory, such as a USB stick's mount point."""
    try:
        found = sorted(p for p in directory.glob(f"*{BUNDLE_SUFFIX}") if p.is_file())
    except OSError as e:
        raise UsageError(f"cannot list {directory}: {e.strerror}") from e
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise UsageError(
            f"{directory} holds {what} *{BUNDLE_SUFFIX} files; name the bundle file to install"
        )
    return found[0]


def open_source(spec: str, http: HttpSettings | None = None) -> BundleSource:
    """Open the bundle source named by `spec`.

    Args:
        spec: `-` for standard input, an `https://` URL, a file or block device,
            a pipe, or a directory holding exactly one `*.bundle` file (a USB
            stick's mount point).
        http: Settings for HTTPS sources; defaults apply when None.

    Returns:
        A source; close it (or use it as a context manager) when done.

    Raises:
        UsageError: The URL is not HTTPS, the path does not name a bundle, or `spec`
            is `-` and standard input is closed.
    """
    if spec == "-":
        stdin = getattr(sys.stdin, "buffer", None)  # sys.stdin is None when fd 0 was closed
        if stdin is None:
            raise UsageError(
                "standard input is closed: give the bundle on it (SOURCE -), or name its file"
            )
        return StdinSource(stdin)
    scheme = spec.partition("://")[0].lower() if "://" in spec else ""
    if scheme:
        if scheme != "https":
            raise UsageError(f"only https:// URLs are supported, not {scheme}://: {spec}")
        from .httpsource import HttpSource  # noqa: PLC0415 - the HTTP client loads only for URLs

        return HttpSource(spec, http)
    path = Path(spec)
    if path.is_dir():
        path = _bundle_in_directory(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as e:
        raise UsageError(f"bundle not found: {path}") from e
    except OSError as e:
        raise UsageError(f"cannot open bundle {path}: {e.strerror}") from e
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        try:
            stream = path.open("rb")
        except OSError as e:
            raise UsageError(f"cannot open bundle {path}: {e.strerror}") from e
        return StdinSource(stream, name=str(path), close_stream=True)
    return FileSource(path)
