"""`bundle-tool verify` refuses a bundle file whose size changed while it was verified.

It compared the file's size with the signed total only when it opened the file, so a file
that grew meanwhile (a copy still being written, bytes appended) was called valid, though
it is no longer the bundle that was checked and the updater refuses it (trailing bytes).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bootctl import exitstatus
from bundle_tool import cli, keygen, reader


def _change_after_payload(
    monkeypatch: pytest.MonkeyPatch, bundle: Path, change: Callable[[Path], None]
) -> None:
    real = reader.check_payload

    def check_then_change(*args: object, **kw: object) -> None:
        real(*args, **kw)  # type: ignore[arg-type]
        change(bundle)

    monkeypatch.setattr(reader, "check_payload", check_then_change)


def _append(path: Path) -> None:
    with path.open("ab") as f:
        f.write(b"more")


def _cut(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 1)


def _grown(bundle: Path, total: int) -> str:
    return (
        f"bundle changed while it was read: {bundle} has {total + 4} bytes, "
        f"its signed size is {total}"
    )


def _shrunk(bundle: Path, total: int) -> str:
    return (
        f"bundle ends early: {bundle} has {total - 1} bytes, {total} needed (the file is truncated)"
    )


Change = tuple[Callable[[Path], None], Callable[[Path, int], str]]


@pytest.mark.parametrize("case", [(_append, _grown), (_cut, _shrunk)], ids=["grown", "shrunk"])
def test_a_bundle_that_changes_size_while_verified_is_refused(
    make_bundle: Callable[..., Path],
    pki: keygen.DevPki,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: Change,
) -> None:
    """With the updater's reasons (one check, `FileReader.check_end`, for both)."""
    bundle = make_bundle()
    total = bundle.stat().st_size
    change, reason = case
    _change_after_payload(monkeypatch, bundle, change)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["verify", str(bundle), "--keyring", str(pki.ca_cert)])
    err = capsys.readouterr().err
    assert exit_.value.code == exitstatus.BAD_BUNDLE, err
    assert err.splitlines() == [f"bundle-tool: error: {reason(bundle, total)}"]


def test_an_unchanged_bundle_still_verifies(
    make_bundle: Callable[..., Path], pki: keygen.DevPki, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["verify", str(make_bundle()), "--keyring", str(pki.ca_cert)])
    assert exit_.value.code == exitstatus.OK, capsys.readouterr().err
