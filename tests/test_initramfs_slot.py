"""The initramfs's slot resolution (qemu/initramfs/slot.sh), run by busybox sh on the host.

The same busybox (Debian's busybox-static) runs it in the device images. With a signed
initramfs (a FIT or UKI carrying etc/abupdate/verity) the root hash comes only from that file
and the partition only from the built-in slot table: what the command line says is ignored.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SLOT_SH = Path(__file__).resolve().parents[1] / "qemu" / "initramfs" / "slot.sh"
BUSYBOX = "/bin/busybox"
SIGNED = "a" * 64 + ":" + "5a" * 16 + ":" + "4096"
ATTACKER = "f" * 64 + ":00:1"
TABLE = "A /dev/vda2 slot-A\nB /dev/vda3 slot-B\n"


def _resolve(
    tmp_path: Path, cmdline: str, *, verity: str | None, table: str | None, image: str | None
) -> tuple[int, str]:
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    if verity is not None:
        (tmp_path / "verity").write_text(verity + "\n")
    if table is not None:
        (tmp_path / "slots").write_text(table)
    if image is not None:
        # efivarfs: 4 bytes of attributes, then the value (UTF-16LE, NUL-terminated).
        (tmp_path / "image-id").write_bytes(b"\x06\0\0\0" + (image + "\0").encode("utf-16-le"))
    script = (
        f". {SLOT_SH}\n"
        'if abupdate_slot "$1/cmdline" "$1/verity" "$1/slots" "$1/image-id"; then\n'
        '  echo "$slot|$root|$verity|$origin"\n'
        'else echo "FAIL: $why"; exit 1; fi\n'
    )
    # As in the initramfs (`busybox --install -s /bin`): every applet on PATH is busybox.
    bin_dir = tmp_path / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        subprocess.run([BUSYBOX, "--install", "-s", str(bin_dir)], check=True)
    done = subprocess.run(
        [BUSYBOX, "sh", "-c", script, "sh", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": str(bin_dir)},
    )
    assert done.stderr == ""
    return done.returncode, done.stdout.strip()


def test_the_script_chain_takes_both_from_the_command_line(tmp_path: Path) -> None:
    rc, out = _resolve(
        tmp_path,
        f"console=ttyAMA0 abupdate.slot=B abupdate.root=/dev/vda3 abupdate.verity={SIGNED}",
        verity=None,
        table=None,
        image=None,
    )
    assert (rc, out) == (0, f"B|/dev/vda3|{SIGNED}|command line")


def test_a_signed_initramfs_ignores_the_root_hash_and_root_on_the_command_line(
    tmp_path: Path,
) -> None:
    rc, out = _resolve(
        tmp_path,
        f"abupdate.slot=B abupdate.root=/dev/vda9 abupdate.verity={ATTACKER}",
        verity=SIGNED,
        table=TABLE,
        image=None,
    )
    assert (rc, out) == (0, f"B|/dev/vda3|{SIGNED}|signed initramfs")


def test_on_uefi_the_slot_is_the_folder_of_the_image_that_was_started(tmp_path: Path) -> None:
    rc, out = _resolve(
        tmp_path, "console=ttyS0", verity=SIGNED, table=TABLE, image=r"\slot-B\boot.efi"
    )
    assert (rc, out) == (0, f"B|/dev/vda3|{SIGNED}|signed initramfs")
    rc, out = _resolve(
        tmp_path, "console=ttyS0", verity=SIGNED, table=TABLE, image=r"\slot-A\boot.efi"
    )
    assert (rc, out) == (0, f"A|/dev/vda2|{SIGNED}|signed initramfs")


def test_a_boot_folder_of_several_levels_is_matched_whole(tmp_path: Path) -> None:
    """As UKIs often live: under EFI/Linux/ (abctl reads LoaderImageIdentifier the same way)."""
    table = "A /dev/vda2 EFI/Linux/slot-A\nB /dev/vda3 EFI/Linux/slot-B\n"
    image = r"\EFI\Linux\slot-B\boot.efi"
    rc, out = _resolve(tmp_path, "console=ttyS0", verity=SIGNED, table=table, image=image)
    assert (rc, out) == (0, f"B|/dev/vda3|{SIGNED}|signed initramfs")


@pytest.mark.parametrize(
    ("cmdline", "table", "image", "why"),
    [
        ("console=ttyS0", TABLE, None, "cannot tell which slot booted"),
        ("console=ttyS0", TABLE, r"\EFI\BOOT\BOOTX64.EFI", "is in no slot's boot folder"),
        ("abupdate.slot=C", TABLE, None, "slot 'C' is not in the built-in slot table"),
        ("abupdate.slot=A;reboot", TABLE, None, "is not a plain name"),
        ("abupdate.slot=A", None, None, "has no slot table"),
    ],
)
def test_a_signed_initramfs_refuses_what_it_cannot_place(
    tmp_path: Path, cmdline: str, table: str | None, image: str | None, why: str
) -> None:
    rc, out = _resolve(tmp_path, cmdline, verity=SIGNED, table=table, image=image)
    assert rc == 1
    assert out.startswith("FAIL: ") and why in out, out


@pytest.mark.parametrize(
    ("cmdline", "why"),
    [
        ("abupdate.slot=A abupdate.verity=" + SIGNED, "no abupdate.root="),
        ("abupdate.slot=A abupdate.root=/dev/vda2", "no abupdate.verity="),
    ],
)
def test_the_script_chain_needs_both(tmp_path: Path, cmdline: str, why: str) -> None:
    rc, out = _resolve(tmp_path, cmdline, verity=None, table=None, image=None)
    assert rc == 1 and why in out, out
