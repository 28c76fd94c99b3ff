"""Direct I/O: slot writes, read-back and bundle reads that bypass the page cache.

`fincore` (util-linux) reports how many of a file's pages the page cache holds: none
after a write tells that the bytes went around the cache. A write through the cache is
told by its descriptor (no O_DIRECT), not by pages found afterwards, which the kernel
may evict at any moment. Where O_DIRECT is refused, the same calls go through the page
cache and give the same bytes.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import subprocess
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from updater import directio, readback
from updater.errors import DeviceError
from updater.filesource import FileSource
from updater.slotdev import FileSlot

BLOCK = 4096


def cached_pages(path: Path) -> int:
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "PAGES", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.split()[0])


def fd_is_direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


@pytest.fixture
def write_modes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For each os.pwrite from now on: whether its descriptor had O_DIRECT.

    This is what tells a write through the page cache, not `fincore` after the flush: the
    kernel may evict clean pages at any moment (a memory reclaimer does, here and there).
    """
    modes: list[bool] = []
    real = os.pwrite

    def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        modes.append(fd_is_direct(fd))
        return real(fd, data, offset)

    monkeypatch.setattr(directio.os, "pwrite", pwrite)
    return modes


def direct_supported(path: Path) -> bool:
    fd = directio.open_direct(str(path), os.O_RDWR | os.O_CREAT)
    if fd is None:
        return False
    os.close(fd)
    return True


@pytest.fixture
def slot_path(tmp_path: Path) -> Path:
    path = tmp_path / "slot.img"
    if not direct_supported(path):
        pytest.skip(f"{tmp_path} refuses O_DIRECT")
    return path


def pattern(n: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


def aligned(data: bytes) -> memoryview:
    buffer = directio.aligned_buffer(len(data))
    buffer[:] = data
    return memoryview(buffer)


def test_aligned_writes_go_around_the_page_cache(slot_path: Path) -> None:
    with FileSlot(str(slot_path)) as slot:
        slot.pwrite(0, aligned(pattern(16 * BLOCK)))
        slot.pwrite(16 * BLOCK, aligned(pattern(8 * BLOCK, 2))[: 4 * BLOCK])
        slot.flush()
    assert cached_pages(slot_path) == 0
    assert slot_path.read_bytes() == pattern(16 * BLOCK) + pattern(4 * BLOCK, 2)


@pytest.mark.parametrize(
    ("offset", "data"),
    [
        (100, b"x" * 5000),  # nothing aligned
        (BLOCK, b"x" * BLOCK),  # a bytes object: its memory is not aligned
        (BLOCK, bytearray(b"x" * BLOCK)),  # nor is a bytearray's
        (BLOCK, aligned(b"y" * 2 * BLOCK)[1 : BLOCK + 1]),  # aligned memory, one byte on
    ],
    ids=["offset", "bytes", "bytearray", "memory"],
)
def test_other_writes_go_through_the_page_cache(
    slot_path: Path, offset: int, data: bytes | memoryview, write_modes: list[bool]
) -> None:
    with FileSlot(str(slot_path)) as slot:
        slot.pwrite(offset, data)
        slot.flush()
        assert write_modes and not any(write_modes), write_modes
        assert slot.pread(offset, len(data)) == bytes(data)


def test_a_file_system_that_refuses_direct_writes_is_written_through_the_cache(
    slot_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused: list[int] = []
    cached: list[int] = []
    real = os.pwrite

    def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        if fd_is_direct(fd):
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        cached.append(offset)
        return real(fd, data, offset)

    monkeypatch.setattr(directio.os, "pwrite", pwrite)
    with FileSlot(str(slot_path)) as slot:
        slot.pwrite(0, aligned(pattern(4 * BLOCK)))
        slot.pwrite(4 * BLOCK, aligned(pattern(4 * BLOCK, 3)))
        slot.flush()
    # The first write was refused; none was tried directly after it; both went through
    # the page cache.
    assert refused == [0]
    assert cached == [0, 4 * BLOCK]
    assert slot_path.read_bytes() == pattern(4 * BLOCK) + pattern(4 * BLOCK, 3)


def test_no_direct_io_at_all_is_the_page_cache(
    slot_path: Path, monkeypatch: pytest.MonkeyPatch, write_modes: list[bool]
) -> None:
    monkeypatch.setattr("updater.slotdev.open_direct", lambda path, flags: None)
    with FileSlot(str(slot_path)) as slot:
        slot.pwrite(0, aligned(pattern(4 * BLOCK)))
        slot.flush()
    assert write_modes == [False]
    assert slot_path.read_bytes() == pattern(4 * BLOCK)


def test_a_failing_direct_write_is_a_device_error(
    slot_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.pwrite

    def pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        if fd_is_direct(fd):
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, data, offset)

    monkeypatch.setattr(directio.os, "pwrite", pwrite)
    with FileSlot(str(slot_path)) as slot, pytest.raises(DeviceError, match="write failed: Input"):
        slot.pwrite(0, aligned(pattern(BLOCK)))


@settings(max_examples=60, deadline=None)
@given(
    offset=st.integers(0, 5 * BLOCK),
    length=st.integers(0, 6 * BLOCK),
    chunk_blocks=st.integers(1, 3),
    direct=st.booleans(),
)
def test_aligned_reader_gives_the_bytes_of_any_range(
    tmp_path_factory: pytest.TempPathFactory,
    offset: int,
    length: int,
    chunk_blocks: int,
    direct: bool,
) -> None:
    path = tmp_path_factory.mktemp("reader") / "file"
    data = pattern(8 * BLOCK + 123)
    path.write_bytes(data)
    with directio.AlignedReader(str(path), chunk=chunk_blocks * BLOCK) as reader:
        if not direct and reader.direct:
            reader._go_buffered()
        want = data[offset : offset + length]
        if offset + length > len(data):
            with pytest.raises(EOFError):
                b"".join(bytes(p) for p in reader.chunks(offset, length))
        else:
            pieces = [bytes(p) for p in reader.chunks(offset, length)]
            assert all(0 < len(p) <= chunk_blocks * BLOCK for p in pieces)
            assert b"".join(pieces) == want


def test_bundle_data_is_read_around_the_page_cache(slot_path: Path) -> None:
    path = slot_path.with_name("bundle")
    data = os.urandom(64 * BLOCK)
    path.write_bytes(data)
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    assert cached_pages(path) == 0
    with FileSource(path) as source:
        part = source.open_range(1000, 60 * BLOCK)  # data need not start on a block
        out = mmap.mmap(-1, 60 * BLOCK)
        view = memoryview(out)
        for at in range(0, 60 * BLOCK, 7 * BLOCK):
            part.take_into(view[at : min(at + 7 * BLOCK, 60 * BLOCK)])
        part.close()
        assert source.bytes_fetched == 60 * BLOCK
        assert bytes(view) == data[1000 : 1000 + 60 * BLOCK]
        view.release()
    assert cached_pages(path) == 0


def test_a_read_error_in_the_read_back_names_the_blocks(
    slot_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bundle_tool import verity

    slot_path.write_bytes(pattern(8 * BLOCK))

    def failing_read(self: directio.AlignedReader, view: memoryview, offset: int) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(directio.AlignedReader, "_read", failing_read)
    checker = verity.TreeChecker(b"\0" * 32, b"salt", 8)
    request = readback.writelog.encode_extents(
        [readback.Extent(2, 3, readback.writelog.digest(pattern(8 * BLOCK)[2 * BLOCK : 5 * BLOCK]))]
    )
    with pytest.raises(readback.BundleIOError, match=r"in blocks 2 to 4 failed: Input/output"):
        readback._check_region(str(slot_path), str(slot_path), checker, 8 * BLOCK, request)


def test_the_direct_descriptor_is_the_slot_s_own_file(
    slot_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The slot is named through a link (as /dev/disk/by-partlabel/... are), re-pointed
    # by someone else just as the slot is opened: both descriptors still name one file.
    link, other = slot_path.with_name("by-label"), slot_path.with_name("other.img")
    other.write_bytes(b"")
    link.symlink_to(slot_path)
    real = directio.open_direct

    def re_pointed(path: str, flags: int) -> int | None:
        link.unlink()
        link.symlink_to(other)
        return real(path, flags)

    monkeypatch.setattr("updater.slotdev.open_direct", re_pointed)
    with FileSlot(str(link)) as slot:
        slot.pwrite(0, aligned(pattern(4 * BLOCK)))
        slot.flush()
    assert slot_path.read_bytes() == pattern(4 * BLOCK)
    assert other.read_bytes() == b""


def test_closing_a_range_while_a_read_runs_leaves_the_closing_to_that_read(
    slot_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = slot_path.with_name("bundle")
    path.write_bytes(pattern(16 * BLOCK))
    reading, go_on = threading.Event(), threading.Event()
    real = directio.AlignedReader.chunks

    def slow(self: directio.AlignedReader, offset: int, length: int):  # type: ignore[no-untyped-def]
        reading.set()
        go_on.wait(10)
        yield from real(self, offset, length)

    monkeypatch.setattr(directio.AlignedReader, "chunks", slow)
    with FileSource(path) as source:
        part = source.open_range(0, 16 * BLOCK)
        out = memoryview(bytearray(8 * BLOCK))
        reader = threading.Thread(target=part.take_into, args=(out,))
        reader.start()
        assert reading.wait(10)
        part.close()  # the read holds the reader: it is not closed under it
        held = part._reader
        assert held is not None and held.fd >= 0
        go_on.set()
        reader.join(10)
        assert bytes(out) == pattern(16 * BLOCK)[: 8 * BLOCK]
        assert part._reader is None and held.fd == -1  # closed once the read was done
        with pytest.raises(ValueError, match="closed range"):
            part.take_into(memoryview(bytearray(BLOCK)))


def test_read_into_reads_straight_into_aligned_memory_only(tmp_path: Path) -> None:
    path = tmp_path / "file"
    data = pattern(4 * BLOCK + 100)
    path.write_bytes(data)
    with directio.AlignedReader(str(path)) as reader:
        if not reader.direct:
            pytest.skip("this file system refuses direct I/O")
        view = aligned(bytes(2 * BLOCK))
        assert reader.read_into(BLOCK, view)
        assert bytes(view) == data[BLOCK : 3 * BLOCK]
        # Not aligned: the offset, the length, the memory; or read-only memory.
        assert not reader.read_into(100, view)
        assert not reader.read_into(0, view[:100])
        assert not reader.read_into(0, aligned(bytes(3 * BLOCK))[1 : 1 + BLOCK])
        assert not reader.read_into(0, memoryview(bytes(BLOCK)))
        with pytest.raises(EOFError) as end:
            reader.read_into(4 * BLOCK, view)  # 100 bytes left
        assert end.value.args == (4 * BLOCK + 100,)


def test_a_direct_read_refused_midway_fills_the_memory_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system that opens with O_DIRECT and refuses the read (EINVAL) after the
    first block: the rest of the span, and every read after it, is buffered."""
    path = tmp_path / "file"
    data = pattern(6 * BLOCK)
    path.write_bytes(data)
    real = os.preadv
    refused: list[int] = []

    def preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        if fd_is_direct(fd) and offset >= BLOCK:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        if fd_is_direct(fd):  # one block at a time, as a short direct read may come
            return real(fd, [buffers[0][:BLOCK]], offset)
        return real(fd, buffers, offset)

    monkeypatch.setattr(directio.os, "preadv", preadv)
    with directio.AlignedReader(str(path)) as reader:
        if not reader.direct:
            pytest.skip("this file system refuses direct I/O")
        view = aligned(bytes(4 * BLOCK))
        assert reader.read_into(0, view)
        assert bytes(view) == data[: 4 * BLOCK] and not reader.direct
        assert not reader.read_into(4 * BLOCK, view[: 2 * BLOCK])  # buffered now: chunks
        assert b"".join(bytes(c) for c in reader.chunks(4 * BLOCK, 2 * BLOCK)) == data[4 * BLOCK :]
    assert refused == [BLOCK]


def test_a_bundle_file_without_direct_io_installs_through_the_page_cache(
    tmp_path: Path, pki: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.updater.device import image_bytes, make_device
    from tests.updater.test_install import assert_installed, install_file

    device = make_device(tmp_path / "dev", pki, image_bytes(300, seed=1))  # type: ignore[arg-type]
    new = image_bytes(300, seed=2)
    bundle = device.bundle(new)
    monkeypatch.setattr(directio, "open_direct", lambda path, flags: None)
    install_file(device, bundle)
    assert_installed(device, bundle=bundle)
    assert device.slot("B").read_bytes()[: len(new)] == new
