"""Machine-type checks of ELF artifacts (kernels, bootloaders) against a board.

Reading ELF headers needs pyelftools, a build-host dependency (`abupdate[host]`):
it is loaded only when an artifact is an ELF file.
"""

from __future__ import annotations

from typing import BinaryIO

from .errors import UsageError

#: Debian architecture name -> (ELF e_machine, ELF class).
MACHINES: dict[str, tuple[str, int]] = {
    "arm64": ("EM_AARCH64", 64),
    "amd64": ("EM_X86_64", 64),
    "armhf": ("EM_ARM", 32),
    "riscv64": ("EM_RISCV", 64),
}

ELF_MAGIC = b"\x7fELF"


def elf_machine(stream: BinaryIO) -> str | None:
    """The ELF machine type of a file (e.g. `EM_AARCH64`), or None if it is not ELF."""
    stream.seek(0)
    if stream.read(4) != ELF_MAGIC:
        return None
    from elftools.common.exceptions import ELFError  # noqa: PLC0415 - only ELF files need it
    from elftools.elf.elffile import ELFFile  # noqa: PLC0415

    stream.seek(0)
    try:
        from elftools.common.exceptions import ELFError  # noqa: PLC0415 - host-only
        from elftools.elf.elffile import ELFFile  # noqa: PLC0415
    except ImportError as e:
        raise UsageError(
            "checking ELF artifacts needs pyelftools: pip install 'abupdate[host]'"
        ) from e
    try:
        elf = ELFFile(stream)
        machine = elf["e_machine"]
    except (ELFError, ValueError, KeyError) as e:
        raise UsageError(f"artifact looks like ELF but cannot be parsed: {e}") from e
    return str(machine)


def check_machine(name: str, machine: str | None, architecture: str | None) -> None:
    """Refuse an ELF artifact built for another architecture than the board's."""
    if machine is None or architecture is None:
        return
    want = MACHINES.get(architecture)
    if want is None:
        raise UsageError(f"no ELF machine type is known for architecture '{architecture}'")
    if machine != want[0]:
        raise UsageError(
            f"artifact {name} is built for {machine}, but the board's architecture "
            f"{architecture} needs {want[0]}"
        )
