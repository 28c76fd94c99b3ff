"""Installing a slot group: the rootfs into slot B's device, the signed FIT into `slot-B/`.

The board is the QEMU arm64 one booting signed FITs (`boot.chain = "fit"`); its
boot partition is the folder `boot/` of a file-backed device. The FIT is built by
the real `mkimage`, the rootfs checked by `veritysetup verify`.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bundle_tool import bootkeys, keygen, reader
from bundle_tool.container import layout, parse_header
from bundle_tool.errors import BundleError
from bundle_tool.filereader import FileReader
from bundle_tool.keyring import read_keyring
from bundle_tool.manifest import parse_manifest
from tests.bundle.bundles import now, resign
from tests.helpers.boards import signed_fit
from tests.helpers.nginx import NginxServer
from tests.updater.device import (
    OLD_FIT,
    Device,
    fit_device,
    group_bundle,
    image_bytes,
    veritysetup_verify,
)
from updater.bootfiles import BootDir, temporary_name
from updater.errors import DeviceError, RefusedError
from updater.filesource import FileSource
from updater.install import Installer, InstallResult

BLOCKS = 300


@pytest.fixture(scope="module")
def fit(tmp_path_factory: pytest.TempPathFactory, boot_keys: bootkeys.DevBootKeys) -> Path:
    """A signed FIT of release 2.0.0."""
    return signed_fit(tmp_path_factory.mktemp("fit"), boot_keys.fit, "2.0.0")


def install(device: Device, bundle: Path) -> InstallResult:
    with FileSource(bundle) as src:
        return Installer(device.config()).install(src)


def test_rootfs_and_boot_image_are_installed_into_the_group(
    tmp_path: Path, pki: keygen.DevPki, fit: Path
) -> None:
    device = fit_device(tmp_path / "dev", pki)
    bundle = group_bundle(device, fit)
    result = install(device, bundle)
    assert result.boot_files == (str(device.boot_dir("B") / "boot.itb"),)
    st = device.control().boot_state()
    assert st.order[0] == "B"
    b = st.slot("B")
    assert b.verity is not None and veritysetup_verify(device.slot("B"), b.verity).returncode == 0
    assert (device.boot_dir("B") / "boot.itb").read_bytes() == fit.read_bytes()
    assert sorted(p.name for p in device.boot_dir("B").iterdir()) == ["boot.itb"]
    assert not device.boot_dir("A").exists()  # the running group is not touched

    r = device.cli("status", "--json")
    assert r.returncode == 0, r.stderr
    slots = json.loads(r.stdout)["slots"]
    assert slots["B"]["boot_image"]["version"] == "2.0.0"
    assert slots["A"]["boot_image"]["version"] is None  # no boot image in slot-A/
    assert "boot image 2.0.0" in device.cli("status").stdout


def test_a_boot_image_first_in_the_bundle_installs_from_a_stream(
    tmp_path: Path, pki: keygen.DevPki, fit: Path
) -> None:
    device = fit_device(tmp_path / "dev", pki)
    bundle = group_bundle(device, fit, boot_first=True)
    with bundle.open("rb") as stdin:
        r = device.cli("install", "-", stdin=stdin)
    assert r.returncode == 0, r.stderr
    assert (device.boot_dir("B") / "boot.itb").read_bytes() == fit.read_bytes()
    assert device.control().boot_state().order[0] == "B"


def boot_data_offset(bundle: Path) -> int:
    data = bundle.read_bytes()
    header = parse_header(data[:64])
    images, _ = layout(header, parse_manifest(data[64 : 64 + header.manifest_size]))
    (boot,) = (p for p in images if p.image.slot_class == "boot")
    return boot.data_offset


def test_a_corrupt_boot_image_is_refused_before_the_rename(
    tmp_path: Path, pki: keygen.DevPki, fit: Path
) -> None:
    device = fit_device(tmp_path / "dev", pki)
    bundle = group_bundle(device, fit)
    data = bytearray(bundle.read_bytes())
    data[boot_data_offset(bundle) + 5000] ^= 0x10  # in the second block of the FIT
    bundle.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"image data block 1 .* does not match the hash tree"):
        install(device, bundle)
    assert (device.boot_dir("B") / "boot.itb").read_bytes() == OLD_FIT
    assert not (device.boot_dir("B") / temporary_name("boot.itb")).exists()
    st = device.control().boot_state()
    assert st.order[0] == "A" and st.slot("B").tries == 0
    r = subprocess.run(["mkimage", "-l", fit], capture_output=True, text=True)
    assert r.returncode == 0  # the FIT itself was fine: the bundle was changed


def verify(device: Device, bundle: Path) -> None:
    """What `bundle-tool verify` checks: the head, then every payload byte."""
    at = now()
    with FileReader(bundle) as src:
        head = reader.read_head(src, read_keyring(device.pki.ca_cert, at=at), at=at)
        reader.check_payload(src, head)


def shortened(device: Device, bundle: Path, slot_class: str) -> Path:
    """`bundle` signed again with its `slot_class` image's file_size 100 bytes short of its
    size: the image's tree covers its last 100 bytes, which are not zeros."""

    def shorten(manifest: dict) -> None:
        (image,) = (i for i in manifest["images"] if i["slot_class"] == slot_class)
        image["file_size"] = image["size"] - 100

    bundle.write_bytes(resign(bundle.read_bytes(), device.signer(), shorten))
    return bundle


def unpadded_fit(tmp_path: Path) -> Path:
    """A boot image of whole blocks of random bytes (nothing of it is zeros)."""
    fit = tmp_path / "boot.itb"
    fit.write_bytes(image_bytes(5, seed=9))
    return fit


def test_a_boot_image_whose_padding_is_not_zeros_is_refused_by_both_readers(
    tmp_path: Path, pki: keygen.DevPki
) -> None:
    """A signed manifest whose file_size leaves non-zero bytes in the padding: not a bundle."""
    device = fit_device(tmp_path / "dev", pki)
    bundle = shortened(device, group_bundle(device, unpadded_fit(tmp_path)), "boot")
    padding = r"boot image: its bytes after file_size 20380 are not zeros"
    with pytest.raises(BundleError, match=padding):
        verify(device, bundle)
    r = device.cli("install", str(bundle))
    assert r.returncode == 3, r.stderr
    assert "are not zeros" in r.stderr and "medium" not in r.stderr
    # A stream is read once, in order: the padding is checked as the image is written
    # (here after the rootfs), and the refusal is the same.
    with bundle.open("rb") as stdin:
        streamed = device.cli("install", "-", stdin=stdin)
    assert (streamed.returncode, streamed.stderr) == (r.returncode, r.stderr)
    assert (device.boot_dir("B") / "boot.itb").read_bytes() == OLD_FIT
    assert not (device.boot_dir("B") / temporary_name("boot.itb")).exists()
    assert device.control().boot_state().order[0] == "A"


def rolled_back_group(tmp_path: Path, pki: keygen.DevPki, fit: Path) -> Device:
    """A device whose slot group B holds an earlier install (rootfs, root hash, boot image)
    with full tries, second in the boot order: a refusal that invalidated B would show."""
    device = fit_device(tmp_path / "dev", pki)
    install(device, group_bundle(device, fit))
    device.control().reset()  # BOOT_ORDER "A B", full tries for both; root hashes kept
    st = device.control().boot_state()
    assert st.order == ("A", "B") and st.slot("B").bootable
    return device


def boot_folder(device: Device) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in device.boot_dir("B").iterdir()}


@pytest.mark.parametrize("where", ["file", "file-boot-first", "https"])
def test_a_boot_image_whose_padding_is_not_zeros_is_refused_before_writing(
    tmp_path: Path, pki: keygen.DevPki, fit: Path, request: pytest.FixtureRequest, where: str
) -> None:
    """The padding is checked (its block against the signed tree, then for zeros) before
    the target is invalidated: slot B, its boot folder, the environment and the slot
    records are as they were, byte for byte, and the exit status is 3."""
    device = rolled_back_group(tmp_path, pki, fit)
    bundle = group_bundle(device, unpadded_fit(tmp_path), boot_first=where == "file-boot-first")
    shortened(device, bundle, "boot")
    before, files = device.snapshot(target=True), boot_folder(device)
    source = str(bundle)
    if where == "https":
        server: NginxServer = request.getfixturevalue("nginx_server")
        (Path(server.root) / "v2.bundle").write_bytes(bundle.read_bytes())
        source = server.url("v2.bundle")
        config = device.config_path.read_text()
        device.config_path.write_text(f'{config}[http]\nca_file = "{server.ca_file}"\n')
    r = device.cli("install", source)
    assert r.returncode == 3, r.stderr
    (line,) = r.stderr.splitlines()
    assert line == (
        "updater: error: boot image: its bytes after file_size 20380 are not zeros "
        "(the padding of a file image)"
    )
    assert device.snapshot(target=True) == before
    assert boot_folder(device) == files


def test_padding_checked_before_writing_is_checked_against_the_signed_tree(
    tmp_path: Path, pki: keygen.DevPki
) -> None:
    """Zeros put in the bundle over the padding do not pass the check made before
    writing: they are not the signed bytes, and the block is refused as corrupt."""
    device = fit_device(tmp_path / "dev", pki)
    bundle = shortened(device, group_bundle(device, unpadded_fit(tmp_path)), "boot")
    data = bytearray(bundle.read_bytes())
    end = boot_data_offset(bundle) + 5 * 4096
    data[end - 100 : end] = bytes(100)
    bundle.write_bytes(bytes(data))
    before = device.snapshot(target=True)
    with pytest.raises(BundleError, match=r"image data block 4 .* does not match the hash tree"):
        install(device, bundle)
    assert device.snapshot(target=True) == before


def test_a_rootfs_with_a_file_size_is_refused_before_writing(
    tmp_path: Path, pki: keygen.DevPki, fit: Path
) -> None:
    """The image for the slot device cannot be a file image (so has no padding to check)."""
    device = rolled_back_group(tmp_path, pki, fit)
    bundle = shortened(device, group_bundle(device, fit), "rootfs")
    before, files = device.snapshot(target=True), boot_folder(device)
    r = device.cli("install", str(bundle))
    assert r.returncode == 5, r.stderr
    assert "a slot device takes whole 4096-byte blocks" in r.stderr
    assert device.snapshot(target=True) == before
    assert boot_folder(device) == files


@pytest.mark.parametrize("stream", [False, True])
def test_a_wrong_leaf_summary_of_the_boot_image_is_only_a_wrong_hint(
    tmp_path: Path, pki: keygen.DevPki, stream: bool
) -> None:
    """The installer reads a boot image's whole tree; `bundle-tool verify` refuses the summary."""
    device = fit_device(tmp_path / "dev", pki)
    fit = tmp_path / "boot.itb"
    fit.write_bytes(image_bytes(20, seed=9)[:-100])  # 20 blocks: a leaf level and its summary
    bundle = group_bundle(device, fit)
    data = bytearray(bundle.read_bytes())
    header = parse_header(bytes(data[:64]))
    images, _ = layout(header, parse_manifest(bytes(data[64 : 64 + header.manifest_size])))
    (boot,) = (p for p in images if p.image.slot_class == "boot")
    assert boot.image.leaf_summary_size
    data[boot.summary_offset] ^= 0xFF
    bundle.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="the leaf summary does not match the hash tree"):
        verify(device, bundle)
    if stream:
        with bundle.open("rb") as stdin:
            r = device.cli("install", "-", stdin=stdin)
        assert r.returncode == 0, r.stderr
    else:
        install(device, bundle)
    assert (device.boot_dir("B") / "boot.itb").read_bytes() == fit.read_bytes()
    assert device.control().boot_state().order[0] == "B"


def test_an_artifact_the_board_places_nowhere_is_refused_before_writing(
    tmp_path: Path, pki: keygen.DevPki, fit: Path
) -> None:
    device = fit_device(tmp_path / "dev", pki)
    notes = tmp_path / "notes.txt"
    notes.write_text("release notes\n")
    bundle = group_bundle(device, fit, artifacts=[notes])
    before = device.snapshot(target=True)
    with pytest.raises(RefusedError, match=r"artifact notes\.txt: board .* names no place for it"):
        install(device, bundle)
    assert device.snapshot(target=True) == before
    assert (device.boot_dir("B") / "boot.itb").read_bytes() == OLD_FIT


def test_an_artifact_goes_where_the_board_names(
    tmp_path: Path, pki: keygen.DevPki, fit: Path
) -> None:
    device = fit_device(tmp_path / "dev", pki, {"notes.txt": "doc/notes.txt"})
    notes = tmp_path / "notes.txt"
    notes.write_text("release notes\n")
    install(device, group_bundle(device, fit, artifacts=[notes]))
    assert (device.boot_dir("B") / "doc" / "notes.txt").read_text() == "release notes\n"
    assert (device.boot_dir("B") / "boot.itb").read_bytes() == fit.read_bytes()


def test_a_bundle_without_a_rootfs_is_refused(
    tmp_path: Path, pki: keygen.DevPki, fit: Path
) -> None:
    device = fit_device(tmp_path / "dev", pki)
    bundle = device.bundle(fit.read_bytes(), slot_class="boot")
    with pytest.raises(RefusedError, match="holds 0 images for a slot device"):
        install(device, bundle)


def test_a_corrupt_artifact_is_not_put_in_place(
    tmp_path: Path, pki: keygen.DevPki, fit: Path
) -> None:
    device = fit_device(tmp_path / "dev", pki, {"notes.txt": "notes.txt"})
    notes = tmp_path / "notes.txt"
    notes.write_text("release notes\n")
    bundle = group_bundle(device, fit, artifacts=[notes])
    data = bytearray(bundle.read_bytes())
    data[-3] ^= 1  # the artifact is the bundle's last part
    bundle.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"artifact notes\.txt does not match its signed sha256"):
        install(device, bundle)
    assert sorted(p.name for p in device.boot_dir("B").iterdir()) == ["boot.itb"]
    assert device.control().boot_state().order[0] == "A"


class FailingMediumBootDir(BootDir):
    """A stub for a medium that returns other bytes than were written (no real one does on cue)."""

    def read(self, name: str, offset: int, length: int) -> bytes:
        data = bytearray(super().read(name, offset, length))
        if data:
            data[0] ^= 1
        return bytes(data)


def test_a_boot_file_that_does_not_read_back_is_not_put_in_place(
    tmp_path: Path, pki: keygen.DevPki, fit: Path
) -> None:
    device = fit_device(tmp_path / "dev", pki)
    bundle = group_bundle(device, fit)
    with FileSource(bundle) as src, pytest.raises(DeviceError, match="the medium is failing"):
        Installer(device.config(), open_boot_dir=FailingMediumBootDir).install(src)
    assert (device.boot_dir("B") / "boot.itb").read_bytes() == OLD_FIT
    assert not (device.boot_dir("B") / temporary_name("boot.itb")).exists()
    assert device.control().boot_state().order[0] == "A"


def test_a_link_planted_at_the_temporary_name_is_not_written_through(
    tmp_path: Path, pki: keygen.DevPki, fit: Path
) -> None:
    """On a boot partition that holds symbolic links (ext4 /boot), whoever can write it
    must not get the updater (root) to write the boot image into a file elsewhere."""
    device = fit_device(tmp_path / "dev", pki)
    victim = tmp_path / "victim.conf"
    victim.write_text("important\n")
    device.boot_dir("B").mkdir(parents=True, exist_ok=True)
    (device.boot_dir("B") / temporary_name("boot.itb")).symlink_to(victim)
    install(device, group_bundle(device, fit))
    assert victim.read_text() == "important\n"
    image = device.boot_dir("B") / "boot.itb"
    assert not image.is_symlink() and image.read_bytes() == fit.read_bytes()


def test_a_boot_folder_that_is_a_link_is_refused(
    tmp_path: Path, pki: keygen.DevPki, fit: Path
) -> None:
    device = fit_device(tmp_path / "dev", pki)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = device.boot_dir("B")
    if folder.exists():
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    folder.symlink_to(elsewhere)
    with pytest.raises(DeviceError, match="is a symbolic link; not writing through it"):
        install(device, group_bundle(device, fit))
    assert list(elsewhere.iterdir()) == []
    assert device.control().boot_state().order[0] == "A"
