"""A slot's signed boot image: a FIT for U-Boot boards, a signed UKI for UEFI boards.

Both hold the slot's kernel and its initramfs, and the initramfs gets one more cpio
archive appended: the file `etc/abupdate/verity` with the slot's root hash as
`root:salt:blocks`. The kernel unpacks concatenated archives in order, so `/init`
finds the file beside its own; because it is inside the signed image, the root hash
the slot boots with is the one that was signed, whatever the boot environment says.

* **FIT** (`mkimage -f`): one configuration `conf-1` with a `signature` node that
  signs the configuration and every image it names (`sign-images`), with an RSA key
  (Debian's U-Boot verifies RSA with SHA-256; it has no ECDSA or RSA-PSS). With a
  control DTB, `mkimage -K` also writes the public key into it as `required = "conf"`,
  which is what makes U-Boot refuse an unsigned or wrongly signed FIT.
* **UKI**: the systemd EFI stub with `.osrel`, `.cmdline`, `.linux` and `.initrd`
  sections (`objcopy`), signed for UEFI Secure Boot with the db key (`sbsign`), plus a
  detached gpg signature `NAME.sig` for GRUB's `check_signatures=enforce`. One signed
  file binds kernel, initramfs and command line: they cannot be paired across releases.

The tools run here are the real ones (`mkimage`, `objcopy`, `sbsign`, `gpg`); a failure
is a `UsageError` that carries the tool's own message.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bootctl.board import BoardConfig
from bootctl.bootscript import FIT_CONFIG, render_grub_cfg, write_control_dtb
from bootctl.errors import BootctlError, ConfigError
from bootctl.state import SlotVerity

from . import cpio
from .bootversion import KERNEL_PROPERTY, VERSION_PROPERTY
from .errors import BundleIOError, UsageError
from .kernelrelease import kernel_release
from .verity import BLOCK_SIZE, build_tree

#: Where `/init` finds the slot's root hash inside the initramfs.
VERITY_FILE = "etc/abupdate/verity"
#: The systemd EFI stub the UKI is built on (Debian package systemd-boot-efi).
EFI_STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
#: FIT `arch` property of each board architecture.
FIT_ARCH = {"arm64": "arm64", "armhf": "arm", "riscv64": "riscv", "amd64": "x86_64"}
_SECTION_ALIGN = 0x1000
_KEY_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)


@dataclass(frozen=True)
class FitKey:
    """An RSA key as `mkimage -k` wants it: `DIRECTORY/NAME.key` and `DIRECTORY/NAME.crt`.

    Attributes:
        directory: The folder holding the two files.
        name: The key's name (`key-name-hint`; `/signature/key-NAME` in the DTB).
    """

    directory: Path
    name: str

    def check(self) -> None:
        """Raise `UsageError` unless the name is plain and both files exist."""
        if not _KEY_NAME.fullmatch(self.name):
            raise UsageError(f"FIT key name {self.name!r} must be 1-64 letters, digits, - or _")
        for suffix in (".key", ".crt"):
            path = self.directory / (self.name + suffix)
            if not path.is_file():
                raise UsageError(f"FIT signing key: {path} does not exist")


@dataclass(frozen=True)
class UefiSigner:
    """What signs a UKI: the Secure Boot db key and certificate, and GRUB's gpg key.

    Attributes:
        db_key: PEM private key of a certificate in the firmware's db.
        db_cert: That certificate (PEM).
        gpg_home: A gpg home holding the secret key GRUB's `--pubkey` belongs to;
            None writes no `.sig` (a UKI booted by the firmware directly needs none).
        gpg_key: The key's id or fingerprint in `gpg_home` (None: its default key).
    """

    db_key: Path
    db_cert: Path
    gpg_home: Path | None = None
    gpg_key: str | None = None


@dataclass(frozen=True)
class BootKeys:
    """The keys that sign a board's boot images, laid out as `bundle-tool keygen --boot`
    writes them: `fit/NAME.key` + `fit/NAME.crt`, `uefi/db.key` + `uefi/db.crt`, and the
    gpg home `gpg/` (production keys can be laid out the same way).

    Attributes:
        root: The folder.
        fit_name: The FIT key's name (`key-name-hint`).
    """

    root: Path
    fit_name: str = "dev"

    @property
    def fit(self) -> FitKey:
        """The FIT signing key, as `mkimage -k` wants it."""
        return FitKey(self.root / "fit", self.fit_name)

    @property
    def uefi(self) -> UefiSigner:
        """The db key and GRUB's gpg key."""
        return UefiSigner(
            db_key=self.root / "uefi" / "db.key",
            db_cert=self.root / "uefi" / "db.crt",
            gpg_home=self.root / "gpg",
        )

    @property
    def gpg_public(self) -> Path:
        """GRUB's public key (binary OpenPGP), for `grub-mkstandalone --pubkey`."""
        return self.root / "gpg" / "boot.gpg"


def build_for_board(
    board: BoardConfig,
    kernel: Path,
    initramfs: Path,
    verity: SlotVerity,
    out: Path,
    *,
    keys: BootKeys,
    version: str,
    build_time: int | None = None,
) -> None:
    """Write the signed boot image a slot of `board` boots (`boot.chain` says which).

    Args:
        board: A board with `boot.chain` `fit` or `uki`.
        kernel: The release's kernel.
        initramfs: The release's initramfs (the root-hash archive is appended).
        verity: The release's root filesystem's dm-verity parameters.
        out: The boot image to write (`boot.itb` or `boot.efi`; a UKI gets `.sig` beside).
        keys: The boot keys.
        version: The release's version, shown by U-Boot and in the UKI's `.osrel`.
        build_time: Timestamps of a FIT (reproducible output).

    Raises:
        UsageError: The board has no verified chain, or a tool or file is missing.
    """
    if board.boot.chain == "fit":
        build_fit(
            kernel,
            initramfs,
            verity,
            out,
            arch=board.architecture,
            key=keys.fit,
            load_address=board.boot.fit_kernel_load,
            description=_its_string(f"{board.compatible} {version}"),
            build_time=build_time,
            version=version,
        )
    elif board.boot.chain == "uki":
        build_uki(
            kernel,
            initramfs,
            verity,
            out,
            cmdline=board.kernel_args,
            os_release=f'NAME="{board.compatible}"\nVERSION_ID={version}\n',
            signer=keys.uefi,
        )
    else:
        raise UsageError(_no_chain(board))


def build_bootloader(
    board: BoardConfig, out: Path, *, keys: BootKeys, dtb: Path | None = None
) -> None:
    """Write the firmware-side part of `board`'s verified chain, which holds the boot key.

    * `fit` (U-Boot): `dtb` is U-Boot's control DTB (on QEMU `-M virt,dumpdtb=FILE`, on a
      board the one U-Boot is built with); `out` is a copy with the FIT key's public half
      as a required key and the board's fixed boot command (`write_control_dtb`).
    * `uki` (UEFI): `out` is a signed standalone GRUB (`BOOTX64.EFI`) with the board's
      A/B configuration and GRUB's gpg key built in (`build_grub_efi`).

    Raises:
        UsageError: The board has no verified chain, `dtb` is missing or given for a UEFI
            board, or a tool or key is missing.
    """
    try:
        if board.boot.chain == "fit":
            if dtb is None:
                raise UsageError("a U-Boot board needs U-Boot's control DTB (--dtb)")
            with tempfile.TemporaryDirectory(prefix="abupdate-dtb-") as tmp:
                work = Path(tmp)
                keyed = work / "keyed.dtb"
                shutil.copyfile(_existing(dtb), keyed)
                add_fit_key(keyed, keys.fit, work)
                write_control_dtb(board, keyed, work / "control.dtb")
                _move(work / "control.dtb", out)
        elif board.boot.chain == "uki":
            if dtb is not None:
                raise UsageError("--dtb is for U-Boot boards; a UEFI board has no control DTB")
            build_grub_efi(render_grub_cfg(board), out, pubkey=keys.gpg_public, signer=keys.uefi)
        else:
            raise UsageError(_no_chain(board))
    except ConfigError as e:
        raise UsageError(f"board {board.name}: {e}") from e
    except BootctlError as e:
        raise BundleIOError(str(e)) from e
    except OSError as e:
        raise BundleIOError(f"cannot write {out}: {e.strerror}") from e


def _no_chain(board: BoardConfig) -> str:
    return (
        f"board {board.name} boots with boot.chain {board.boot.chain!r}, which has no "
        "signed boot image; set boot.chain to 'fit' or 'uki'"
    )


def image_verity(image: Path, salt: bytes) -> SlotVerity:
    """The dm-verity parameters `bundle-tool create --salt` will record for `image`.

    Raises:
        UsageError: The image is missing or its size is not a whole number of blocks.
    """
    size = _existing(image).stat().st_size
    if size == 0 or size % BLOCK_SIZE:
        raise UsageError(f"image {image} is {size} bytes, not a positive multiple of 4096")
    with build_tree(str(image), size // BLOCK_SIZE, salt) as tree:
        return SlotVerity(tree.root_hash.hex(), salt.hex(), tree.data_blocks)


def verity_cpio(verity: SlotVerity) -> bytes:
    """A newc archive holding only `VERITY_FILE` (and its folders) with `verity`'s value."""
    folders = Path(VERITY_FILE).parents
    entries = [cpio.Entry(p.as_posix(), 0o040755) for p in reversed(folders) if p != Path(".")]
    entries.append(cpio.Entry(VERITY_FILE, 0o100444, (verity.to_env() + "\n").encode()))
    return cpio.build(entries)


def initramfs_with_verity(initramfs: bytes, verity: SlotVerity) -> bytes:
    """`initramfs` (compressed or not) with the root-hash archive appended, 4-byte aligned."""
    return initramfs + b"\0" * (-len(initramfs) % 4) + verity_cpio(verity)


def fit_source(
    *,
    arch: str,
    kernel: Path,
    ramdisk: Path,
    key_name: str,
    load_address: int,
    description: str,
    fdt: Path | None = None,
    version: str | None = None,
    kernel_release: str | None = None,
) -> str:
    """The image tree source (`.its`) of a slot's FIT: kernel, ramdisk, optional fdt.

    Every image has a sha256 hash node and the one configuration signs all of them, so
    changing any byte of any image, or swapping images between FITs, breaks the
    configuration's signature. `version` (the release's) and `kernel_release` (the
    kernel's `uname -r`) become the root properties `bootversion.VERSION_PROPERTY` and
    `KERNEL_PROPERTY`, which `updater status` shows.
    """
    if arch not in FIT_ARCH:
        raise UsageError(f"no FIT architecture for {arch!r}; known: {', '.join(FIT_ARCH)}")
    fit_arch = FIT_ARCH[arch]
    images = [
        _its_image(
            "kernel",
            kernel,
            f'type = "kernel"; arch = "{fit_arch}"; os = "linux"; compression = "none";'
            f" load = <{load_address:#x}>; entry = <{load_address:#x}>;",
        ),
        _its_image(
            "ramdisk",
            ramdisk,
            f'type = "ramdisk"; arch = "{fit_arch}"; os = "linux"; compression = "none";',
        ),
    ]
    names = ["kernel", "ramdisk"]
    links = 'kernel = "kernel"; ramdisk = "ramdisk";'
    if fdt is not None:
        images.append(_its_image("fdt", fdt, f'type = "flat_dt"; arch = "{fit_arch}";'))
        names.append("fdt")
        links += ' fdt = "fdt";'
    signed = ", ".join(f'"{n}"' for n in names)
    return (
        "/dts-v1/;\n/ {\n"
        f'\tdescription = "{_its_string(description)}";\n'
        + ("" if version is None else f'\t{VERSION_PROPERTY} = "{_its_string(version)}";\n')
        + (
            ""
            if kernel_release is None
            else f'\t{KERNEL_PROPERTY} = "{_its_string(kernel_release)}";\n'
        )
        + "\t#address-cells = <1>;\n"
        "\timages {\n" + "".join(images) + "\t};\n"
        "\tconfigurations {\n"
        f'\t\tdefault = "{FIT_CONFIG}";\n'
        f"\t\t{FIT_CONFIG} {{\n"
        f"\t\t\t{links}\n"
        "\t\t\tsignature {\n"
        '\t\t\t\talgo = "sha256,rsa2048";\n'
        f'\t\t\t\tkey-name-hint = "{key_name}";\n'
        f"\t\t\t\tsign-images = {signed};\n"
        "\t\t\t};\n"
        "\t\t};\n"
        "\t};\n"
        "};\n"
    )


def _its_string(text: str) -> str:
    if not text.isascii() or any(c in text for c in '"\\\n'):
        raise UsageError(f"FIT description {text!r} must be plain ASCII without quotes")
    return text


def _its_image(name: str, path: Path, props: str) -> str:
    return (
        f"\t\t{name} {{\n"
        f'\t\t\tdata = /incbin/("{path}");\n'
        f"\t\t\t{props}\n"
        '\t\t\thash { algo = "sha256"; };\n'
        "\t\t};\n"
    )


def build_fit(
    kernel: Path,
    initramfs: Path,
    verity: SlotVerity,
    out: Path,
    *,
    arch: str,
    key: FitKey,
    load_address: int,
    description: str = "abupdate slot boot image",
    fdt: Path | None = None,
    control_dtb: Path | None = None,
    build_time: int | None = None,
    version: str | None = None,
) -> None:
    """Write a signed FIT for one slot to `out`.

    Args:
        kernel: The kernel image (arm64: the uncompressed `Image`).
        initramfs: The slot's initramfs; the root-hash archive is appended to a copy.
        verity: The slot's root filesystem's dm-verity parameters.
        out: The FIT to write.
        arch: The board's architecture (`arm64`, `armhf`, `riscv64`).
        key: The RSA signing key.
        load_address: Where U-Boot copies the kernel before starting it.
        description: The FIT's description (shown by U-Boot and `mkimage -l`).
        fdt: A device tree to put into the FIT (None: the board's own is used).
        control_dtb: U-Boot's control DTB; when given, `mkimage -K` writes the public
            key into it with `required = "conf"` (done once per key, at build time).
        build_time: The FIT's timestamps (Unix seconds; `SOURCE_DATE_EPOCH`), so the
            same inputs and key give the same bytes (RSA PKCS#1 v1.5 is deterministic).
        version: The release's version, recorded for `updater status` (with the
            kernel's release, read from the kernel: `kernelrelease`).

    Raises:
        UsageError: A file is missing or `mkimage` refused (its message is kept).
        BundleIOError: A file cannot be read or written.
    """
    key.check()
    with tempfile.TemporaryDirectory(prefix="abupdate-fit-") as tmp:
        work = Path(tmp)
        ramdisk = work / "ramdisk"
        ramdisk.write_bytes(initramfs_with_verity(_read(initramfs), verity))
        its = work / "boot.its"
        its.write_text(
            fit_source(
                arch=arch,
                kernel=_existing(kernel).resolve(),
                ramdisk=ramdisk,
                key_name=key.name,
                load_address=load_address,
                description=description,
                fdt=None if fdt is None else _existing(fdt).resolve(),
                version=version,
                kernel_release=kernel_release(_read(kernel)),
            )
        )
        cmd: list[str | Path] = ["mkimage", "-f", its, "-k", key.directory]
        if control_dtb is not None:
            cmd += ["-K", _existing(control_dtb), "-r"]
        epoch = None if build_time is None else {"SOURCE_DATE_EPOCH": str(build_time)}
        _tool([*cmd, work / "boot.itb"], "mkimage", epoch)
        _move(work / "boot.itb", out)


def add_fit_key(control_dtb: Path, key: FitKey, work_dir: Path) -> None:
    """Write `key`'s public half into `control_dtb` as a required configuration key.

    `mkimage -K` only adds keys while signing, so this signs a throwaway FIT in
    `work_dir` (a one-byte kernel) to get the key into the DTB.
    """
    key.check()
    dummy = work_dir / "dummy"
    dummy.write_bytes(b"\0")
    its = work_dir / "key.its"
    its.write_text(
        fit_source(
            arch="arm64",
            kernel=dummy.resolve(),
            ramdisk=dummy.resolve(),
            key_name=key.name,
            load_address=0,
            description="key carrier",
        )
    )
    _tool(
        ["mkimage", "-f", its, "-k", key.directory, "-K", control_dtb, "-r", work_dir / "key.itb"],
        "mkimage",
    )


def build_uki(
    kernel: Path,
    initramfs: Path,
    verity: SlotVerity,
    out: Path,
    *,
    cmdline: str,
    os_release: str,
    signer: UefiSigner,
    stub: Path = EFI_STUB,
) -> None:
    """Write a signed unified kernel image for one slot to `out` (and `out.sig` for GRUB).

    Args:
        kernel: The kernel (`vmlinuz`, an EFI-stub kernel).
        initramfs: The slot's initramfs; the root-hash archive is appended to a copy.
        verity: The slot's root filesystem's dm-verity parameters.
        out: The UKI to write.
        cmdline: The kernel command line, fixed inside the signed image.
        os_release: The `.osrel` text (os-release format: NAME=, VERSION_ID=...).
        signer: The db key for `sbsign` and, optionally, GRUB's gpg key.
        stub: The EFI stub to build on.

    Raises:
        UsageError: A file is missing or a tool refused (its message is kept).
        BundleIOError: A file cannot be read or written.
    """
    with tempfile.TemporaryDirectory(prefix="abupdate-uki-") as tmp:
        work = Path(tmp)
        linux = _read(kernel)
        release = kernel_release(linux)
        sections = {
            ".osrel": os_release.encode(),
            ".cmdline": cmdline.encode() + b"\0",
            # The kernel's release, as systemd's ukify records it (for `updater status`).
            **({} if release is None else {".uname": release.encode()}),
            ".linux": linux,
            ".initrd": initramfs_with_verity(_read(initramfs), verity),
        }
        cmd: list[str | Path] = ["objcopy"]
        vma = _stub_end(_existing(stub))
        for name, data in sections.items():
            path = work / name.lstrip(".")
            path.write_bytes(data)
            vma = _align(vma)
            cmd += ["--add-section", f"{name}={path}", "--change-section-vma", f"{name}={vma:#x}"]
            vma += len(data)
        _tool([*cmd, stub, work / "unsigned.efi"], "objcopy")
        _sbsign(work / "unsigned.efi", work / "uki.efi", signer)
        if signer.gpg_home is not None:
            gpg_sign(work / "uki.efi", work / "uki.efi.sig", signer.gpg_home, signer.gpg_key)
            _move(work / "uki.efi.sig", out.with_name(out.name + ".sig"))
        _move(work / "uki.efi", out)


#: Modules built into a verifying standalone GRUB (signature checks, reaching the ESP).
GRUB_BUILTIN = ("pgp", "gcry_rsa", "gcry_sha256", "gcry_sha512", "part_gpt", "fat")
GRUB_MODULES = (
    # All it may load: no `linuxefi` (Debian's GRUB turns `linux` into it under
    # Secure Boot, and it asks for shim, which is not there).
    *GRUB_BUILTIN,
    *("normal", "echo", "test", "loadenv", "chain", "configfile", "reboot", "halt", "sleep"),
    *("cat", "ls", "regexp"),
)


def build_grub_efi(config: str, out: Path, *, pubkey: Path, signer: UefiSigner) -> None:
    """Write a signed standalone GRUB for UEFI Secure Boot to `out`.

    `config` becomes `/boot/grub/grub.cfg` in GRUB's memdisk, covered by the PE signature
    (`sbsign` with the db key). `--pubkey` builds the gpg key in, which turns on
    `check_signatures=enforce`: every file GRUB then loads from a disk needs a detached
    signature by that key.
    """
    with tempfile.TemporaryDirectory(prefix="abupdate-grub-") as tmp:
        work = Path(tmp)
        cfg = work / "grub.cfg"
        cfg.write_text(config)
        _tool(
            [
                *("grub-mkstandalone", "-O", "x86_64-efi", "--disable-shim-lock"),
                *("--pubkey", _existing(pubkey), "-o", work / "grub.efi"),
                f"--install-modules={' '.join(GRUB_MODULES)}",
                f"--modules={' '.join(GRUB_BUILTIN)}",
                f"boot/grub/grub.cfg={cfg}",
            ],
            "grub-mkstandalone",
        )
        _sbsign(work / "grub.efi", work / "signed.efi", signer)
        _move(work / "signed.efi", out)


def _sbsign(unsigned: Path, signed: Path, signer: UefiSigner) -> None:
    _tool(
        [
            *("sbsign", "--key", _existing(signer.db_key), "--cert", _existing(signer.db_cert)),
            *("--output", signed, unsigned),
        ],
        "sbsign",
    )


def gpg_sign(path: Path, sig: Path, gpg_home: Path, key: str | None = None) -> None:
    """Write a detached binary gpg signature of `path` to `sig` (what GRUB checks)."""
    cmd: list[str | Path] = ["gpg", "--homedir", gpg_home, "--batch", "--yes", "--quiet"]
    if key is not None:
        cmd += ["--local-user", key]
    _tool([*cmd, "--detach-sign", "--output", sig, path], "gpg")


def _stub_end(stub: Path) -> int:
    """The first address after the stub's last section (from `objdump -h`)."""
    listing = _tool(["objdump", "-h", stub], "objdump")
    end = 0
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0].isdigit():
            end = max(end, int(fields[3], 16) + int(fields[2], 16))
    if end == 0:
        raise UsageError(f"{stub}: objdump lists no sections; is it an EFI stub?")
    return end


def _align(value: int) -> int:
    return -(-value // _SECTION_ALIGN) * _SECTION_ALIGN


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise UsageError(f"{path} does not exist or is not a file")
    return path


def _read(path: Path) -> bytes:
    try:
        return _existing(path).read_bytes()
    except OSError as e:
        raise BundleIOError(f"cannot read {path}: {e.strerror}") from e


def _move(src: Path, dst: Path) -> None:
    try:
        shutil.move(src, dst)
    except OSError as e:
        raise BundleIOError(f"cannot write {dst}: {e.strerror}") from e


def _tool(cmd: Sequence[str | Path], name: str, env: dict[str, str] | None = None) -> str:
    """Run a tool; its stderr's last line becomes the error message when it fails."""
    try:
        done = subprocess.run(
            [str(c) for c in cmd],
            capture_output=True,
            text=True,
            check=False,
            env=None if env is None else {**os.environ, **env},
        )
    except FileNotFoundError as e:
        raise UsageError(f"{name} is not installed ({e.filename} not found)") from e
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise UsageError(f"{name} failed: {lines[-1] if lines else f'exit {done.returncode}'}")
    return done.stdout
