"""`bundle-tool info` of a file whose size is not the one its header states, and --help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bundle_tool import container
from tests.bundle.bundles import run_tool as run
from tests.bundle.bundles import write_image


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("info")
    assert run("keygen", "-o", out / "keys").returncode == 0
    image = write_image(out / "rootfs.img", 64)
    r = run(
        "create", "--image", image, "--version", "1.0.0", "--compatible", "board",
        "--key", out / "keys/signer.key", "--cert", out / "keys/signer.pem",
        "-o", out / "u.bundle",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return out / "u.bundle"


@pytest.mark.parametrize("change", [-5000, 6])
def test_info_warns_of_a_file_shorter_or_longer_than_its_header_says(
    bundle: Path, tmp_path: Path, change: int
) -> None:
    data = bundle.read_bytes()
    odd = tmp_path / "odd.bundle"
    odd.write_bytes(data[:change] if change < 0 else data + bytes(change))
    text = run("info", odd)
    assert text.returncode == 0, text.stderr
    said = "shorter than the" if change < 0 else f"{change} more than"
    (line,) = text.stderr.splitlines()
    assert line.startswith(f"bundle-tool: warning: {odd} is {len(data) + change} bytes, {said}")
    shown = run("info", odd, "--json")
    assert json.loads(shown.stdout)["warning"] == line.removeprefix("bundle-tool: warning: ")
    assert run("extract", odd, tmp_path / "x").returncode == 3  # as the warning says


def test_the_warning_is_one_line_whatever_the_file_is_named(bundle: Path, tmp_path: Path) -> None:
    """A line feed in the name cannot forge a second `bundle-tool: error:` line."""
    odd = tmp_path / "evil\nbundle-tool: error: forged.bundle"
    odd.write_bytes(bundle.read_bytes() + bytes(6))
    r = run("info", odd, "--json")
    assert r.returncode == 0, r.stderr
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"bundle-tool: warning: {tmp_path}/evil bundle-tool: error: forged")
    assert json.loads(r.stdout)["warning"] == line.removeprefix("bundle-tool: warning: ")


def test_info_of_a_whole_bundle_warns_of_nothing(bundle: Path) -> None:
    r = run("info", bundle, "--json")
    assert (r.returncode, r.stderr) == (0, "")
    assert "warning" not in json.loads(r.stdout)


def test_help_lists_the_signal_statuses() -> None:
    out = run("info", "--help").stdout
    assert "  130  interrupted by SIGINT" in out and "  143  stopped by SIGTERM" in out


def test_info_warns_of_a_header_whose_payload_size_is_not_the_manifests(
    bundle: Path, tmp_path: Path
) -> None:
    """The file is the size its header says, but the header and the manifest disagree: verify
    and extract refused it (exit 3), and info said nothing of it."""
    data = bundle.read_bytes()
    h = container.parse_header(data)
    short = container.Header(h.manifest_size, h.signatures_size, h.payload_size - 100)
    odd = tmp_path / "odd.bundle"
    odd.write_bytes(short.to_bytes() + data[64 : len(data) - 100])
    shown = run("info", odd, "--json")
    assert shown.returncode == 0, shown.stderr
    said = (
        f"its header announces a {h.payload_size - 100}-byte payload, the manifest accounts "
        f"for {h.payload_size} (verify and extract refuse it)"
    )
    assert shown.stderr.splitlines() == [f"bundle-tool: warning: {said}"]
    assert json.loads(shown.stdout)["warning"] == said
    assert run("extract", odd, tmp_path / "x").returncode == 3  # as the warning says
