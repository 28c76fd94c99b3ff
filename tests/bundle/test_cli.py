"""`bundle-tool` as a user runs it: exit statuses, JSON, board configs, artifacts."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest

from bootctl.board import ARCHITECTURES
from tests.bundle.bundles import run_tool as run
from tests.bundle.bundles import write_image
from tests.helpers.boards import fit_board

REPO = Path(__file__).resolve().parents[2]
BOARD = REPO / "board-configs" / "qemu-arm64-uboot.toml"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("keys")
    r = run("keygen", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "not for production" in r.stdout
    return out


def create(
    keys: Path, image: Path, out: Path, *extra: str | Path
) -> subprocess.CompletedProcess[str]:
    return run(
        "create",
        "--image",
        image,
        "--version",
        "2.1.0",
        "--key",
        keys / "signer.key",
        "--cert",
        keys / "signer.pem",
        "-o",
        out,
        *extra,
        env={"SOURCE_DATE_EPOCH": "1700000000"},
    )


def elf_header(machine: int, elfclass: int = 2) -> bytes:
    """A minimal ELF file header (enough for the machine-type check)."""
    ident = b"\x7fELF" + bytes([elfclass, 1, 1]) + bytes(9)
    if elfclass == 2:
        rest = struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0, 0, 0, 0, 64, 56, 0, 64, 0, 0)
    else:
        rest = struct.pack("<HHIIIIIHHHHHH", 2, machine, 1, 0, 0, 0, 0, 52, 32, 0, 40, 0, 0)
    return ident + rest


def test_create_info_verify_json(tmp_path: Path, keys: Path) -> None:
    image = write_image(tmp_path / "rootfs.img", 64)
    r = create(
        keys,
        image,
        tmp_path / "b",
        "--compatible",
        "board-x",
        "--security-version",
        "7",
        "--salt",
        "ab" * 32,
    )
    assert r.returncode == 0, r.stderr
    info = json.loads(run("info", tmp_path / "b", "--json").stdout)
    assert info["version"] == "2.1.0"
    assert info["compatible"] == "board-x"
    assert info["security_version"] == 7
    (img,) = info["images"]
    assert img["size"] == 64 * 4096
    assert set(img["verity"]) >= {
        "root_hash",
        "salt",
        "hash_algorithm",
        "data_block_size",
        "hash_block_size",
        "data_blocks",
    }
    assert img["verity"]["salt"] == "ab" * 32
    assert img["verity"]["data_blocks"] == 64
    r = run("verify", tmp_path / "b", "--keyring", keys / "ca.pem", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["valid"] is True
    # The same inputs give the same bytes.
    assert (
        create(
            keys,
            image,
            tmp_path / "c",
            "--compatible",
            "board-x",
            "--security-version",
            "7",
            "--salt",
            "ab" * 32,
        ).returncode
        == 0
    )
    assert (tmp_path / "b").read_bytes() == (tmp_path / "c").read_bytes()


def test_exit_statuses(tmp_path: Path, keys: Path) -> None:
    image = write_image(tmp_path / "rootfs.img", 16)
    odd = tmp_path / "odd.img"
    odd.write_bytes(bytes(5000))
    r = create(keys, odd, tmp_path / "x", "--compatible", "b")
    assert r.returncode == 2
    assert "not a positive multiple of 4096" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    assert create(keys, image, tmp_path / "b", "--compatible", "b").returncode == 0
    data = (tmp_path / "b").read_bytes()
    (tmp_path / "corrupt").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    r = run("verify", tmp_path / "corrupt", "--keyring", keys / "ca.pem")
    assert r.returncode == 3, r.stderr
    assert "does not match the hash tree" in r.stderr

    other = tmp_path / "other"
    assert run("keygen", "-o", other).returncode == 0
    r = run("verify", tmp_path / "b", "--keyring", other / "ca.pem")
    assert r.returncode == 4, r.stderr

    r = run("verify", tmp_path / "b", "--keyring", keys / "ca.pem", "--compatible", "c")
    assert r.returncode == 5
    r = run("verify", tmp_path / "b", "--keyring", keys / "ca.pem", "--security-floor", "1")
    assert r.returncode == 5

    r = run("verify", tmp_path / "missing", "--keyring", keys / "ca.pem")
    assert r.returncode == 2  # a file named that is not there, as a missing key or image
    assert r.stderr == f"bundle-tool: error: bundle not found: {tmp_path / 'missing'}\n"
    r = run("verify", tmp_path / "b", "--keyring", tmp_path / "no-ca.pem")
    assert r.returncode == 2
    assert "cannot read keyring" in r.stderr
    r = create(tmp_path / "no-keys", image, tmp_path / "x", "--compatible", "b")
    assert r.returncode == 2  # a missing certificate or key, as a missing image
    cert = tmp_path / "no-keys" / "signer.pem"
    assert (
        r.stderr
        == f"bundle-tool: error: cannot read certificate {cert}: No such file or directory\n"
    )
    r = run(
        "create", "--image", image, "--version", "1.0.0", "--compatible", "b",
        "--key", tmp_path / "no-keys" / "signer.key", "--cert", keys / "signer.pem",
        "-o", tmp_path / "x",
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "cannot read key" in r.stderr
    r = create(keys, tmp_path / "no-image", tmp_path / "x", "--compatible", "b")
    assert r.returncode == 2
    r = run("verify", tmp_path / "b")
    assert r.returncode == 2  # argparse: --keyring is required


def test_expired_bundle(tmp_path: Path, keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # built in 2023, whenever this runs
    image = write_image(tmp_path / "rootfs.img", 16)
    assert (
        create(
            keys, image, tmp_path / "b", "--compatible", "b", "--expires", "2030-01-01"
        ).returncode
        == 0
    )
    ok = run("verify", tmp_path / "b", "--keyring", keys / "ca.pem", "--at", "2029-12-31")
    assert ok.returncode == 0, ok.stderr
    late = run("verify", tmp_path / "b", "--keyring", keys / "ca.pem", "--at", "2030-01-01")
    assert late.returncode == 5
    assert "expired on 2030-01-01" in late.stderr


def test_a_bundle_expiring_before_its_build_time_is_refused(
    tmp_path: Path, keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # 2023-11-14
    image = write_image(tmp_path / "rootfs.img", 16)
    r = create(keys, image, tmp_path / "b", "--compatible", "b", "--expires", "2023-01-01")
    assert r.returncode == 2
    assert r.stderr.strip().endswith(
        "--expires must be later than the build time (SOURCE_DATE_EPOCH, or now)"
    ), r.stderr
    assert not (tmp_path / "b").exists()


def test_board_config_and_elf_artifacts(tmp_path: Path, keys: Path) -> None:
    image = write_image(tmp_path / "rootfs.img", 16)
    arm = tmp_path / "u-boot.elf"
    arm.write_bytes(elf_header(183))  # EM_AARCH64
    x86 = tmp_path / "vmlinux"
    x86.write_bytes(elf_header(62))  # EM_X86_64
    blob = tmp_path / "notes.txt"
    blob.write_text("not ELF\n")
    board = fit_board(
        tmp_path / "board.toml",
        {"u-boot.elf": "u-boot.elf", "notes.txt": "notes.txt", "vmlinux": "vmlinux"},
        chain="script",
    )
    r = create(
        keys, image, tmp_path / "b", "--board-config", board, "--artifact", arm, "--artifact", blob
    )
    assert r.returncode == 0, r.stderr
    info = json.loads(run("info", tmp_path / "b", "--json").stdout)
    assert info["compatible"] == "qemu-arm64-uboot"
    assert info["architecture"] == "arm64"
    assert [a["name"] for a in info["artifacts"]] == ["u-boot.elf", "notes.txt"]
    assert info["artifacts"][0]["elf_machine"] == "EM_AARCH64"
    assert run("verify", tmp_path / "b", "--keyring", keys / "ca.pem").returncode == 0

    r = create(keys, image, tmp_path / "c", "--board-config", board, "--artifact", x86)
    assert r.returncode == 2
    assert "EM_X86_64" in r.stderr and "arm64" in r.stderr
    assert not (tmp_path / "c").exists()


def test_help_documents_exit_statuses() -> None:
    r = run("verify", "--help")
    assert r.returncode == 0
    assert "exit status" in r.stdout and "signature or certificate" in r.stdout


def test_two_signatures_and_a_threshold(tmp_path: Path, keys: Path) -> None:
    second = tmp_path / "second"
    assert run("keygen", "-o", second).returncode == 0
    image = write_image(tmp_path / "rootfs.img", 16)
    r = create(
        keys,
        image,
        tmp_path / "b",
        "--compatible",
        "b",
        "--key",
        second / "signer.key",
        "--cert",
        second / "signer.pem",
    )
    assert r.returncode == 0, r.stderr
    info = json.loads(run("info", tmp_path / "b", "--json").stdout)
    assert len(info["signatures"]) == 2
    both = ("--keyring", keys / "ca.pem", "--keyring", second / "ca.pem")
    assert run("verify", tmp_path / "b", *both, "--threshold", "2").returncode == 0
    one = run("verify", tmp_path / "b", "--keyring", keys / "ca.pem", "--threshold", "2")
    assert one.returncode == 4
    assert "1 of 2 required signatures trusted" in one.stderr
    assert run("verify", tmp_path / "b", *both, "--threshold", "0").returncode == 2


def test_version() -> None:
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("bundle-tool ")


def test_verify_checks_the_board_as_the_updater_does(tmp_path: Path, keys: Path) -> None:
    """A bundle built for another architecture fails `verify --board-config` (exit 5)."""
    image = write_image(tmp_path / "rootfs.img", 16)
    amd64 = tmp_path / "amd64.bundle"
    r = create(keys, image, amd64, "--compatible", "qemu-arm64-uboot", "--architecture", "amd64")
    assert r.returncode == 0, r.stderr
    ring = ("--keyring", keys / "ca.pem")

    r = run("verify", amd64, *ring, "--board-config", BOARD)
    assert r.returncode == 5
    assert r.stderr == "bundle-tool: error: image is built for amd64, this device is arm64\n"
    assert run("verify", amd64, *ring, "--architecture", "arm64").returncode == 5
    assert run("verify", amd64, *ring, "--architecture", "amd64").returncode == 0

    arm64 = tmp_path / "arm64.bundle"
    assert create(keys, image, arm64, "--board-config", BOARD).returncode == 0
    assert run("verify", arm64, *ring, "--board-config", BOARD).returncode == 0
    other = run("verify", arm64, *ring, "--board-config", BOARD, "--compatible", "other")
    assert other.returncode == 2
    assert "--compatible other contradicts the board config's qemu-arm64-uboot" in other.stderr

    manual = run("verify", "--help").stdout
    assert "--board-config" in manual and "exactly as" not in manual


def test_create_refuses_a_contradicting_or_unknown_architecture(tmp_path: Path, keys: Path) -> None:
    image = write_image(tmp_path / "rootfs.img", 16)
    out = tmp_path / "b"
    r = create(keys, image, out, "--board-config", BOARD, "--architecture", "amd64")
    assert r.returncode == 2
    assert r.stderr == (
        "bundle-tool: error: --architecture amd64 contradicts the board config's arm64\n"
    )
    assert not out.exists()
    # Naming the board's own architecture is no contradiction.
    assert (
        create(keys, image, out, "--board-config", BOARD, "--architecture", "arm64").returncode == 0
    )

    r = create(keys, image, tmp_path / "c", "--compatible", "b", "--architecture", "sparc")
    assert r.returncode == 2
    assert "invalid choice: 'sparc'" in r.stderr
    assert all(arch in r.stderr for arch in ARCHITECTURES)
    assert not (tmp_path / "c").exists()


def test_threshold_not_met_by_trusted_signatures_says_why(tmp_path: Path, keys: Path) -> None:
    image = write_image(tmp_path / "rootfs.img", 16)
    assert create(keys, image, tmp_path / "b", "--compatible", "b").returncode == 0
    r = run("verify", tmp_path / "b", "--keyring", keys / "ca.pem", "--threshold", "2")
    assert r.returncode == 4
    assert r.stderr == (
        "bundle-tool: error: 1 of 2 required signatures trusted; the bundle carries only "
        "1 signature, all trusted: sign it with 2 distinct trusted keys\n"
    )


def test_create_errors_name_the_output_not_a_temporary_file(tmp_path: Path, keys: Path) -> None:
    image = write_image(tmp_path / "rootfs.img", 16)
    missing = tmp_path / "missing" / "t.bundle"
    r = create(keys, image, missing, "--compatible", "b")
    assert r.returncode == 6
    assert (
        r.stderr
        == f"bundle-tool: error: cannot write bundle {missing}: No such file or directory\n"
    )

    directory = tmp_path / "out"
    directory.mkdir()
    r = create(keys, image, directory, "--compatible", "b")
    assert r.returncode == 6
    assert r.stderr == f"bundle-tool: error: cannot write bundle {directory}: Is a directory\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "rootfs.img"]


def test_keygen_names_the_ca_key(tmp_path: Path) -> None:
    assert "ca.key" in run("keygen", "--help").stdout
    r = run("keygen", "-o", tmp_path, "--json")
    assert r.returncode == 0, r.stderr
    ca_key = Path(json.loads(r.stdout)["ca_key"])
    assert ca_key == tmp_path / "ca.key"
    assert ca_key.stat().st_mode & 0o777 == 0o600


def test_a_time_beyond_the_format_is_one_line_and_exit_3(tmp_path: Path, keys: Path) -> None:
    """A signed build_time of 2^53 was "valid", then a traceback while showing the date."""
    from bundle_tool import container, signing

    image = write_image(tmp_path / "rootfs.img", 16)
    good = tmp_path / "good.bundle"
    assert create(keys, image, good, "--compatible", "b").returncode == 0
    data = good.read_bytes()
    h = container.parse_header(data)
    obj = json.loads(data[64 : 64 + h.manifest_size])
    obj["build_time"] = 2**53
    raw = json.dumps(obj).encode()
    signer = signing.load_signer(
        (keys / "signer.key").read_bytes(), (keys / "signer.pem").read_bytes()
    )
    sigs = container.build_signature_block([signing.sign(raw, signer)])
    header = container.Header(len(raw), len(sigs), h.payload_size)
    late = tmp_path / "late.bundle"
    late.write_bytes(header.to_bytes() + raw + sigs + data[h.head_size :])
    for r in (run("verify", late, "--keyring", keys / "ca.pem"), run("info", late)):
        assert r.returncode == 3, r.stderr
        assert "Traceback" not in r.stderr
        assert r.stderr.count("\n") == 1
        assert "build_time must be an integer in [0, 253402300799]" in r.stderr
        assert "valid" not in r.stdout


def test_create_refuses_an_empty_or_spaced_salt(tmp_path: Path, keys: Path) -> None:
    """The reader and the boot environment refuse an empty salt: so does the writer."""
    image = write_image(tmp_path / "rootfs.img", 16)
    out = tmp_path / "b.bundle"
    for salt in ("", "00 11", "0011\n"):
        r = create(keys, image, out, "--compatible", "b", "--salt", salt)
        assert r.returncode == 2, (salt, r.stderr)
        assert "salt" in r.stderr and r.stderr.count("\n") == 1
        assert not out.exists()
    assert create(keys, image, out, "--compatible", "b", "--salt", "0A").returncode == 0


def test_an_output_that_is_not_a_regular_file_is_refused_not_replaced(
    tmp_path: Path, keys: Path
) -> None:
    """`-o` naming a device node (or a link, a pipe) would have it renamed over: the
    node became a regular file and the device was never written."""
    import os
    import stat

    image = write_image(tmp_path / "rootfs.img", 16)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    node = tmp_path / "null"
    os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere.bundle")
    for out in (fifo, node, link):
        r = create(keys, image, out, "--compatible", "b")
        assert r.returncode == 2, (out, r.stderr)
        assert "is not a regular file" in r.stderr and len(r.stderr.splitlines()) == 1
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and stat.S_ISCHR(node.lstat().st_mode)
    assert link.is_symlink() and not (tmp_path / "elsewhere.bundle").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "link", "null", "rootfs.img"]
