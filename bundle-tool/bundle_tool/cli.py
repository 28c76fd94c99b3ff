"""`bundle-tool`: build, inspect and verify signed update bundles.

The only place that prints and that turns exceptions into exit statuses.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from cryptography import x509

from bootctl import exitstatus, validators
from bootctl.board import ARCHITECTURES, BoardConfig, load_board
from bootctl.cliboundary import (
    ExitCodes,
    Interrupted,
    add_command,
    make_parser,
    one_line,
    run_cli,
    signals_raised,
)
from bootctl.errors import BootctlError
from bootctl.state import SlotVerity

from . import container, keygen, keysource, policy, reader, signing, verity
from .errors import BundleError, BundleIOError, BundleToolError, PolicyError, TrustError, UsageError
from .extract import extract_bundle
from .filereader import FileReader
from .keyring import merge, read_keyring
from .manifest import Manifest
from .progress import ProgressDisplay
from .writer import CreateOptions, create_bundle, resign_bundle

#: Each class's exit status (docs/exit-status.md), first match wins.
EXIT_CODES: ExitCodes = (
    (UsageError, exitstatus.USAGE),
    (BundleError, exitstatus.BAD_BUNDLE),
    (TrustError, exitstatus.TRUST),
    (PolicyError, exitstatus.REFUSED),
    (BundleIOError, exitstatus.TRANSPORT),
    (BundleToolError, exitstatus.TRANSPORT),
    (Interrupted, exitstatus.INTERRUPTED),
)

EPILOG = """\
exit status:
  0  success
  1  internal error (a bug: please report it)
  2  bad usage or unusable input: a file named is missing or unreadable (image,
     key, certificate, passphrase or PIN file, keyring, bundle), or unusable
     (e.g. image size not a multiple of 4096)
  3  invalid, corrupt, truncated or overlong bundle
  4  signature or certificate does not establish trust
  5  bundle refused by policy (wrong compatible or architecture, expired, below
     --security-floor)
  6  a file could not be read (once opened) or written
  130  interrupted by SIGINT (Ctrl-C)
  143  stopped by SIGTERM (either: the output not yet complete is removed)
The same kind of fault has the same status in bundle-tool, updater and abctl
(docs/exit-status.md).

environment:
  SOURCE_DATE_EPOCH           build time recorded by `create` (reproducible builds)
  BUNDLE_TOOL_KEY_PASSPHRASE  passphrase of encrypted --key files
  BUNDLE_TOOL_PKCS11_PIN      PIN of the token of pkcs11: --key URIs
"""


def _read(path: str, what: str) -> bytes:
    """An input file named on the command line: missing or unreadable is a usage error."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}") from e


def _parse_time(text: str) -> int:
    """Seconds since the epoch from an integer or an ISO 8601 date/time (UTC if no zone)."""
    if text.isascii() and text.isdigit():
        if int(text) > validators.MAX_TIME:
            raise UsageError(f"'{text}' is later than the year 9999")
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as e:
        raise UsageError(f"'{text}' is neither seconds since the epoch nor an ISO 8601 date") from e
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def _build_time() -> int:
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if sde is None:
        return int(time.time())
    if not (sde.isascii() and sde.isdigit()):
        raise UsageError("SOURCE_DATE_EPOCH must be a non-negative integer")
    return int(sde)


def manifest_json(manifest: Manifest) -> dict[str, Any]:
    """The `info --json` object: the manifest with hex strings for hashes and salts."""
    out = manifest.to_json()
    out["payload_size"] = manifest.payload_size
    return out


def _cmd_keygen(args: argparse.Namespace) -> dict[str, Any]:
    from . import bootkeys  # noqa: PLC0415 - slow to load; only keygen needs it

    if args.boot:
        if args.algorithm is not None:
            raise UsageError(
                "--algorithm picks the type of the bundle signing keys; --boot makes boot"
                " keys of the fixed types U-Boot, UEFI and GRUB take: give one of the two"
            )
        keys = bootkeys.make_dev_boot_keys(Path(args.output))
        return {
            "fit_key": str(keys.fit.directory / f"{keys.fit.name}.key"),
            "fit_cert": str(keys.fit.directory / f"{keys.fit.name}.crt"),
            "uefi_certs": {name: str(keys.uefi_cert(name)) for name in bootkeys.UEFI_KEYS},
            "gpg_home": str(keys.gpg_home),
            "gpg_public": str(keys.gpg_public),
            "warning": "development keys only - not for production",
        }
    pki = keygen.make_dev_pki(Path(args.output), algorithm=args.algorithm or "ed25519")
    return {
        "ca": str(pki.ca_cert),
        "signer_key": str(pki.signer_key),
        "signer_cert": str(pki.signer_cert),
        "ca_key": str(pki.ca_key),
        "warning": "development keys only - not for production",
    }


def _board(path: str) -> BoardConfig:
    try:
        return load_board(path)
    except BootctlError as e:
        raise UsageError(f"board config {path}: {e}") from e


def _salt(text: str) -> bytes:
    salt = validators.parse_hex(text.lower(), 0, verity.MAX_SALT_SIZE)
    if salt is None:
        raise UsageError("--salt must be hexadecimal digits, two per byte")
    verity.check_salt(salt)
    return salt


def _slot_verity(args: argparse.Namespace) -> SlotVerity:
    """The root hash a boot image carries: `--verity`, or computed from `--rootfs`."""
    from . import bootimage  # noqa: PLC0415 - slow to load; only boot commands need it

    if args.verity:
        try:
            return SlotVerity.from_env(args.verity)
        except BootctlError as e:
            raise UsageError(f"--verity: {e}") from e
    if args.salt is None:
        raise UsageError(
            "--rootfs needs --salt, the same one `create --salt` gets, so that the root hash "
            "in the boot image is the one the bundle records"
        )
    return bootimage.image_verity(Path(args.rootfs), _salt(args.salt))


def _cmd_boot_image(args: argparse.Namespace) -> dict[str, Any]:
    from . import bootimage  # noqa: PLC0415 - slow to load; only boot commands need it

    board = _board(args.board_config)
    slot_verity = _slot_verity(args)
    out = Path(args.output)
    bootimage.build_for_board(
        board,
        Path(args.kernel),
        Path(args.initramfs),
        slot_verity,
        out,
        keys=bootimage.BootKeys(Path(args.boot_keys), fit_name=args.fit_key_name),
        version=args.version,
        build_time=_build_time(),
    )
    result: dict[str, Any] = {
        "boot_image": str(out),
        "chain": board.boot.chain,
        "verity": slot_verity.to_env(),
    }
    if board.boot.chain == "uki":
        result["gpg_signature"] = str(out) + ".sig"
    return result


def _cmd_bootloader(args: argparse.Namespace) -> dict[str, Any]:
    from . import bootimage  # noqa: PLC0415 - slow to load; only boot commands need it

    board = _board(args.board_config)
    bootimage.build_bootloader(
        board,
        Path(args.output),
        keys=bootimage.BootKeys(Path(args.boot_keys), fit_name=args.fit_key_name),
        dtb=Path(args.dtb) if args.dtb else None,
    )
    what = "control DTB" if board.boot.chain == "fit" else "signed GRUB"
    return {"output": args.output, "chain": board.boot.chain, "kind": what}


def _board_of(args: argparse.Namespace) -> BoardConfig | None:
    """The board config of --board-config, if given."""
    return _board(args.board_config) if args.board_config else None


def _target_of(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The compatible and architecture named by --board-config, --compatible, --architecture.

    A board config sets both; an option that names something else is refused.
    """
    compatible: str | None = args.compatible
    architecture: str | None = args.architecture
    board = _board_of(args)
    if board is None:
        return compatible, architecture
    for option, given, wanted in (
        ("--compatible", compatible, board.compatible),
        ("--architecture", architecture, board.architecture),
    ):
        if given and given != wanted:
            raise UsageError(f"{option} {given} contradicts the board config's {wanted}")
    return board.compatible, board.architecture


def _images_of(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """`--image [CLASS=]PATH` options as (slot class, path); a plain PATH is of --slot-class."""
    images: list[tuple[str, Path]] = []
    for value in args.image:
        slot_class, sep, path = value.partition("=")
        if not sep or not validators.is_name(slot_class):
            slot_class, path = args.slot_class, value
        if any(c == slot_class for c, _ in images):
            raise UsageError(
                f"--image given twice for slot class {slot_class}: a bundle holds one image "
                "per class (name each: --image rootfs=ROOTFS --image boot=BOOT)"
            )
        images.append((slot_class, Path(path)))
    for _, path in images:
        if not path.is_file():
            raise UsageError(f"image {path} is not a file")
    return images


def _check_board_places(
    board: BoardConfig | None, images: list[tuple[str, Path]], artifacts: list[Path]
) -> None:
    """With a board config: the bundle has a place in a slot group of that board."""
    if board is None:
        return
    problem = board.group_problem([c for c, _ in images], [p.name for p in artifacts])
    if problem is not None:
        raise UsageError(f"{problem}; a device would refuse the bundle")


def _cmd_create(args: argparse.Namespace) -> dict[str, Any]:
    compatible, architecture = _target_of(args)
    images = _images_of(args)
    artifacts = [Path(a) for a in args.artifact]
    _check_board_places(_board_of(args), images, artifacts)
    if not compatible:
        raise UsageError("give --compatible or --board-config")
    signers = _signers(args)
    salt = None if args.salt is None else _salt(args.salt)
    (first_class, first), *more = images
    opts = CreateOptions(
        image=first,
        extra_images=tuple(more),
        version=args.version,
        compatible=compatible,
        signers=signers,
        build_time=_build_time(),
        security_version=args.security_version,
        salt=salt,
        slot_class=first_class,
        architecture=architecture,
        artifacts=tuple(artifacts),
        expires=_parse_time(args.expires) if args.expires else None,
        leaf_summary=args.leaf_summary,
        data_padding=args.data_padding,
        image_sha256=args.image_sha256,
    )
    display = ProgressDisplay(bar=not args.json)
    try:
        manifest = create_bundle(opts, Path(args.output), display)
    finally:
        display.close()
    return {"bundle": args.output, **manifest_json(manifest)}


def _prompt(text: str) -> str:
    return getpass.getpass(text)


def _signers(args: argparse.Namespace) -> list[signing.Signer]:
    """The signers of `create` and `resign`: --key/--cert pairs, --chain and the secrets."""
    if len(args.key) != len(args.cert):
        raise UsageError("give one --cert for every --key, in the same order")
    secrets = keysource.KeySecrets(
        passphrase_file=Path(args.key_passphrase_file) if args.key_passphrase_file else None,
        pkcs11_module=Path(args.pkcs11_module) if args.pkcs11_module else None,
        environ=os.environ,
        prompt=_prompt if sys.stdin.isatty() else None,
    )
    chain = _read(args.chain, "certificate chain") if args.chain else None
    certs = [_read(c, "certificate") for c in args.cert]
    return keysource.load_signers(args.key, certs, chain, secrets)


def _cmd_resign(args: argparse.Namespace) -> dict[str, Any]:
    entries = resign_bundle(
        Path(args.bundle), _signers(args), Path(args.output), append=args.append
    )
    return {"bundle": args.output, "signatures": [_describe_entry(e) for e in entries]}


def _cmd_extract(args: argparse.Namespace) -> dict[str, Any]:
    written = extract_bundle(Path(args.bundle), Path(args.directory))
    return {
        "directory": args.directory,
        "files": [str(p) for p in written],
        "note": "nothing verified; run `bundle-tool verify`",
    }


def _describe_entry(entry: signing.SignatureEntry) -> dict[str, Any]:
    try:
        subject = x509.load_der_x509_certificate(entry.certificate).subject.rfc4514_string()
    except ValueError:
        subject = "(unparseable certificate)"
    return {"subject": subject, "chain_length": len(entry.chain)}


def _cmd_info(args: argparse.Namespace) -> dict[str, Any]:
    with FileReader(args.bundle) as src:
        first = src.read_exact(0, container.HEADER_SIZE)
        header = container.parse_header(first)
        head = first + src.read_exact(
            container.HEADER_SIZE, header.head_size - container.HEADER_SIZE
        )
        manifest, entries = container.inspect_head(head)
        size = src.size()
        block_device = src.block_device
    out = manifest_json(manifest)
    out["signatures"] = [_describe_entry(e) for e in entries]
    out["bundle_size"] = header.total_size
    out["note"] = "signatures not checked; run `bundle-tool verify`"
    warning = _payload_warning(header, manifest) or _size_warning(
        args.bundle, size, header.total_size, block_device=block_device
    )
    if warning is not None:
        out["warning"] = warning
        print(f"bundle-tool: warning: {warning}", file=sys.stderr)
    return out


def _payload_warning(header: container.Header, manifest: Manifest) -> str | None:
    """What `info` says of a header whose payload size is not the manifest's (None: it is)."""
    problem = container.payload_size_problem(header, manifest)
    return None if problem is None else f"its {problem} (verify and extract refuse it)"


def _size_warning(path: str, size: int, total: int, *, block_device: bool) -> str | None:
    """What `info` says of a file whose size is not the one its header states (None: it is).

    A block device only has to hold the bundle (docs/bundle-format.md): its bytes
    after the bundle's end are ignored. The warning is one line, whatever the path holds.
    """
    if size < total:
        return one_line(
            f"{path} is {size} bytes, shorter than the {total} its header accounts for: "
            "truncated (verify and extract refuse it)"
        )
    if size > total and not block_device:
        return one_line(
            f"{path} is {size} bytes, {size - total} more than its header accounts for "
            "(verify and extract refuse it)"
        )
    return None


def _cmd_verify(args: argparse.Namespace) -> dict[str, Any]:
    at = datetime.fromtimestamp(_parse_time(args.at), UTC) if args.at else datetime.now(UTC)
    keyring = merge([read_keyring(Path(path), at=at) for path in args.keyring])
    compatible, architecture = _target_of(args)
    display = ProgressDisplay(bar=not args.json)
    with FileReader(args.bundle) as src, contextlib.closing(display):
        head = reader.read_head(src, keyring, at=at, threshold=args.threshold)
        policy.check_policy(
            head.manifest,
            compatible=compatible,
            at=at,
            security_floor=args.security_floor,
            architecture=architecture,
        )
        board = _board_of(args)
        problem = (
            None
            if board is None
            else board.group_problem(
                [i.slot_class for i in head.manifest.images],
                [a.name for a in head.manifest.artifacts],
            )
        )
        if problem is not None:
            raise PolicyError(f"{problem}; the board's updater would refuse the bundle")
        reader.check_payload(src, head, display)
        src.check_end(head.total_size)  # as the updater: a file that changed is refused
    return {
        "valid": True,
        "signers": [s.subject for s in head.signers],
        **manifest_json(head.manifest),
    }


def _print_text(command: str, result: dict[str, Any]) -> None:
    if command == "keygen":
        if "fit_key" in result:
            rows = [("FIT signing key (U-Boot)", result["fit_key"])]
            rows += [(f"UEFI {n} certificate", p) for n, p in result["uefi_certs"].items()]
            rows.append(("GRUB gpg public key", result["gpg_public"]))
        else:
            rows = [
                ("CA (install on devices as keyring)", result["ca"]),
                ("signing key", result["signer_key"]),
                ("signing certificate", result["signer_cert"]),
                ("CA private key (keep it secret)", result["ca_key"]),
            ]
        for label, path in rows:
            print(f"{label + ':':<36}{path}")
        print("WARNING: development keys only - not for production")
        return
    if command == "boot-image":
        print(f"wrote {result['boot_image']} ({result['chain']}), root hash {result['verity']}")
        if "gpg_signature" in result:
            print(f"wrote {result['gpg_signature']} (GRUB's detached signature)")
        return
    if command == "bootloader":
        print(f"wrote {result['output']} ({result['kind']})")
        return
    if command == "resign":
        print(f"wrote {result['bundle']}")
        for n, sig in enumerate(result["signatures"], start=1):
            print(f"signature {n} by {sig['subject']}")
        return
    if command == "extract":
        print(f"extracted {len(result['files'])} files to {result['directory']} (not verified)")
        return
    if command == "create":
        print(f"created {result['bundle']}")
    elif command == "verify":
        print(f"bundle is valid; signed by: {', '.join(result['signers'])}")
    print(f"version:          {result['version']}")
    print(f"compatible:       {result['compatible']}")
    print(f"security version: {result['security_version']}")
    print(f"build time:       {datetime.fromtimestamp(result['build_time'], UTC).isoformat()}")
    if "expires" in result:
        print(f"expires:          {datetime.fromtimestamp(result['expires'], UTC).isoformat()}")
    for n, image in enumerate(result["images"]):
        v = image["verity"]
        size = f"{image['size']} bytes" + (
            f" (a file of {image['file_size']})" if "file_size" in image else ""
        )
        sha = f", sha256 {image['sha256']}" if "sha256" in image else ""
        print(f"image {n} ({image['slot_class']}): {size}{sha}")
        print(f"  verity root hash {v['root_hash']}")
        print(f"  salt {v['salt']}, {v['data_blocks']} data blocks, tree {v['tree_size']} bytes")
        if "leaf_summary_size" in image:
            print(f"  leaf summary {image['leaf_summary_size']} bytes")
        if "data_padding" in image:
            print(f"  data padding {image['data_padding']} bytes")
    for art in result["artifacts"]:
        print(f"artifact {art['name']}: {art['size']} bytes, sha256 {art['sha256']}")
    for sig in result.get("signatures", []):
        print(f"signature by {sig['subject']} (not checked)")


def _add_target_options(
    parser: argparse.ArgumentParser, *, compatible: str, board: str, architecture: str
) -> None:
    """The options that name the target board (`create`, `verify`); see `_target_of`."""
    parser.add_argument("--compatible", help=compatible)
    parser.add_argument("--board-config", metavar="FILE", help=board)
    parser.add_argument("--architecture", choices=ARCHITECTURES, help=architecture)


def _add_signer_options(parser: argparse.ArgumentParser) -> None:
    """The options that name signing keys (`create`, `resign`); see `keysource`."""
    parser.add_argument(
        "--key",
        action="append",
        required=True,
        help="signing key: a PEM file or a pkcs11: URI (RFC 7512); repeatable",
    )
    parser.add_argument(
        "--cert", action="append", required=True, help="its certificate (PEM); repeatable"
    )
    parser.add_argument("--chain", metavar="PEM", help="intermediate CA certificates to carry")
    parser.add_argument(
        "--key-passphrase-file",
        metavar="FILE",
        help="passphrase of encrypted key files (else BUNDLE_TOOL_KEY_PASSPHRASE, else a prompt)",
    )
    parser.add_argument(
        "--pkcs11-module",
        metavar="FILE",
        help="PKCS#11 library for pkcs11: keys whose URI has no module-path",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to render the manual)."""
    p, sub = make_parser(
        "bundle-tool",
        """\
        Build, inspect and verify signed A/B update bundles. A bundle holds a root
        filesystem image, its dm-verity hash tree (ahead of the data, so a device can
        check every block before writing it) and a signed manifest.""",
        EPILOG,
    )

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        c = add_command(sub, name, help, description, EPILOG)
        c.add_argument("--json", action="store_true", help="print the result as one JSON object")
        return c

    k = command(
        "keygen",
        "make a throwaway development CA and signing certificate",
        """\
        Make a development CA (ca.pem: the keyring devices trust; ca.key: the CA's
        private key, readable only by you: keep it to issue more signing certificates)
        and a code-signing key and certificate issued by it (signer.key, signer.pem)
        in DIR. DEVELOPMENT ONLY: the keys are unencrypted and meant for trying things
        out.""",
    )
    k.add_argument("-o", "--output", metavar="DIR", required=True, help="directory to write to")
    k.add_argument(
        "--algorithm",
        choices=(*keygen.ALGORITHMS, *keygen.ALIASES),
        metavar="ALG",
        help=f"key algorithm of both keys: {', '.join(keygen.ALGORITHMS)} (default ed25519;"
        " not with --boot)",
    )
    k.add_argument(
        "--boot",
        action="store_true",
        help="make development boot keys instead: fit/dev.key + dev.crt (RSA-2048, signs "
        "FIT images), uefi/PK, KEK, db (.key + .crt, UEFI Secure Boot) and gpg/ (GRUB's "
        "signing key; gpg/boot.gpg is its public key). Their types are fixed: --algorithm "
        "with --boot is refused (exit status 2)",
    )

    b = command(
        "boot-image",
        "build a slot's signed boot image (FIT or UKI) for a release",
        """\
        Build the signed boot image a slot of the board boots: for a U-Boot board
        (boot.chain = "fit") a FIT with the kernel and initramfs, signed with the FIT
        key (every image listed in sign-images); for a UEFI board (boot.chain = "uki")
        a unified kernel image signed for Secure Boot with the db key, and a detached
        gpg signature OUT.sig for GRUB. Either way the initramfs gets the file
        etc/abupdate/verity appended, holding the root filesystem's
        ROOT_HASH:SALT:BLOCKS: the slot boots the root hash that was signed, whatever
        the boot environment says. Give the root hash with --verity, or let it be
        computed from --rootfs with the --salt that `create --salt` will get. Runs
        mkimage, objcopy, sbsign and gpg; SOURCE_DATE_EPOCH fixes a FIT's timestamps.""",
    )
    b.add_argument("--board-config", metavar="FILE", required=True, help="the board's TOML file")
    b.add_argument("--kernel", metavar="FILE", required=True, help="the release's kernel")
    b.add_argument("--initramfs", metavar="FILE", required=True, help="the release's initramfs")
    root = b.add_mutually_exclusive_group(required=True)
    root.add_argument("--verity", metavar="HASH:SALT:BLOCKS", help="the rootfs's dm-verity values")
    root.add_argument("--rootfs", metavar="IMAGE", help="compute them from this rootfs image")
    b.add_argument("--salt", metavar="HEX", help="dm-verity salt for --rootfs")
    b.add_argument("--version", required=True, help="the release's version")
    b.add_argument(
        "--boot-keys", metavar="DIR", required=True, help="boot keys, laid out as keygen --boot"
    )
    b.add_argument("--fit-key-name", default="dev", metavar="NAME", help="fit/NAME.key (dev)")
    b.add_argument("-o", "--output", metavar="OUT", required=True, help="boot image to write")

    bl = command(
        "bootloader",
        "build the firmware-side part of the chain: U-Boot's control DTB or a signed GRUB",
        """\
        Build what holds the boot key, once per board and key (not per release): for a
        U-Boot board, a copy of U-Boot's control DTB (--dtb) with the FIT key's public
        half as a required key and a fixed boot command, so that U-Boot boots only
        signed FITs and runs no script from the disk; for a UEFI board, a standalone
        GRUB with the A/B logic and the gpg key in its memdisk, signed with the db key
        (install it as EFI/BOOT/BOOTX64.EFI and enroll PK, KEK and db in the firmware).""",
    )
    bl.add_argument("--board-config", metavar="FILE", required=True, help="the board's TOML file")
    bl.add_argument(
        "--boot-keys", metavar="DIR", required=True, help="boot keys, laid out as keygen --boot"
    )
    bl.add_argument("--fit-key-name", default="dev", metavar="NAME", help="fit/NAME.key (dev)")
    bl.add_argument("--dtb", metavar="FILE", help="U-Boot's control DTB (U-Boot boards)")
    bl.add_argument("-o", "--output", metavar="OUT", required=True, help="file to write")

    c = command(
        "create",
        "build and sign a bundle from a root filesystem image",
        """\
        Hash each image into a dm-verity tree (sha256, 4096-byte blocks, format 1, the
        same tree `veritysetup format` makes), summarize its leaf level for delta installs
        (--no-leaf-summary leaves that out), record both in a manifest, sign the
        manifest and write the bundle. A rootfs image must be whole 4096-byte blocks;
        an image of another class (a boot image, installed as a file) is padded with
        zeros and its length recorded. The same inputs, --salt and SOURCE_DATE_EPOCH
        give a byte-identical bundle with Ed25519 keys.""",
    )
    c.add_argument(
        "--image",
        action="append",
        required=True,
        metavar="[CLASS=]FILE",
        help="an image and the slot class it installs into (rootfs=ROOTFS, boot=BOOT.itb); "
        "repeatable, one per class; a plain FILE is of --slot-class",
    )
    c.add_argument("--version", required=True, help="product version, semantic versioning (1.2.0)")
    _add_target_options(
        c,
        compatible="board family the bundle installs on",
        board="take compatible and architecture from a board file",
        architecture="Debian architecture of the image and of ELF artifacts",
    )
    _add_signer_options(c)
    c.add_argument(
        "--security-version", type=int, default=0, metavar="N", help="anti-rollback counter"
    )
    c.add_argument("--salt", metavar="HEX", help="dm-verity salt (default: 32 random bytes)")
    c.add_argument(
        "--slot-class", default="rootfs", help="slot class of a plain --image FILE (default rootfs)"
    )
    c.add_argument(
        "--artifact",
        action="append",
        default=[],
        metavar="FILE",
        help="extra file installed where the board config's boot.artifacts names (refused "
        "with --board-config if it names none); ELF files must match the architecture",
    )
    c.add_argument("--expires", metavar="WHEN", help="ISO 8601 date or epoch seconds")
    c.add_argument(
        "--no-leaf-summary",
        dest="leaf_summary",
        action="store_false",
        help="leave out the leaf summary, which lets delta installs fetch less of the hash "
        "tree; for devices whose updater predates it (they refuse bundles with one)",
    )
    c.add_argument(
        "--no-data-padding",
        dest="data_padding",
        action="store_false",
        help="leave out the zeros that start each image's data on a 4096-byte boundary of "
        "the bundle (an updater reads such data with direct I/O and no copy); for devices "
        "whose updater predates the padding (they refuse bundles with it)",
    )
    c.add_argument(
        "--image-sha256",
        action="store_true",
        help="also record each image's whole SHA-256 in the manifest (costs one more pass; "
        "the hash tree binds every byte already), for updaters that require it",
    )
    c.add_argument("-o", "--output", required=True, metavar="OUT", help="bundle file to write")

    i = command(
        "info",
        "show what a bundle holds (without checking it)",
        """\
        Print the manifest of BUNDLE. Nothing is verified: use `verify` for that.""",
    )
    i.add_argument("bundle", metavar="BUNDLE")

    v = command(
        "verify",
        "check a bundle as the updater on a device would",
        """\
        Check BUNDLE with the checks the updater makes before installing: signatures
        against the keyring, the manifest, every byte of the hash tree and data, and
        the size; then the policy values given here: the board's compatible and
        architecture (--board-config, or --compatible and --architecture), expiry
        (at --at, default now) and the anti-rollback floor (--security-floor). A
        policy value not given is not checked. Exit 0 only if everything holds.""",
    )
    v.add_argument("bundle", metavar="BUNDLE")
    v.add_argument(
        "--keyring",
        action="append",
        required=True,
        metavar="PATH",
        help="trusted CA certificates and CRLs: a PEM file or a folder; repeatable",
    )
    v.add_argument(
        "--threshold",
        type=int,
        default=1,
        metavar="N",
        help="distinct trusted signing keys required (default 1)",
    )
    _add_target_options(
        v,
        compatible="also require this compatible",
        board="also require the compatible and architecture of this board file",
        architecture="also require images built for this architecture",
    )
    v.add_argument(
        "--security-floor",
        type=int,
        default=0,
        metavar="N",
        help="also require security version >= N",
    )
    v.add_argument("--at", metavar="WHEN", help="check validity at this time (default now)")

    r = command(
        "resign",
        "replace or add signatures, leaving manifest and payload as they are",
        """\
        Write OUT: BUNDLE with its signatures replaced by those of the --key/--cert
        pairs, or with those added after the existing ones (--append: a second place
        signs, towards an m-of-n threshold). The manifest and payload are copied byte
        for byte; nothing already in BUNDLE is verified. With Ed25519 or RSA keys the
        output is reproducible.""",
    )
    r.add_argument("bundle", metavar="BUNDLE")
    _add_signer_options(r)
    r.add_argument("--append", action="store_true", help="keep the existing signatures")
    r.add_argument("-o", "--output", required=True, metavar="OUT", help="bundle file to write")

    x = command(
        "extract",
        "unpack a bundle's parts into files (without checking it)",
        """\
        Write the parts of BUNDLE into DIR (new or empty): manifest.json (the signed
        bytes), signatures/N/ (certificate.der, chain-M.der, signature.bin), and for
        image N images/N.img (data), images/N.verity (hash area, for `veritysetup
        verify images/N.img images/N.verity ROOT`) and images/N.leafsummary, and
        artifacts/NAME. Nothing is verified: use `verify` for that.""",
    )
    x.add_argument("bundle", metavar="BUNDLE")
    x.add_argument("directory", metavar="DIR")
    return p


COMMANDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "keygen": _cmd_keygen,
    "boot-image": _cmd_boot_image,
    "bootloader": _cmd_bootloader,
    "create": _cmd_create,
    "info": _cmd_info,
    "verify": _cmd_verify,
    "resign": _cmd_resign,
    "extract": _cmd_extract,
}


def _run(args: argparse.Namespace) -> None:
    result = COMMANDS[args.command](args)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        _print_text(args.command, result)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the command line; exits with the documented status."""
    with signals_raised():
        status = run_cli(build_parser, _run, EXIT_CODES, argv, prog="bundle-tool")
    sys.exit(status)


if __name__ == "__main__":
    main()
