"""The multipart/byteranges reader, on bodies framed as nginx and other servers frame them."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from updater.byteranges import MAX_HEADERS, MAX_LINE, MalformedParts, Parts, boundary_of

DATA = bytes(range(256)) * 64


def framed(ranges: list[tuple[int, int]], *, lead: bytes = b"\r\n", headers: str = "") -> bytes:
    """A body for `ranges` (first, last) with boundary "b0", as nginx frames it."""
    out = b""
    for i, (first, last) in enumerate(ranges):
        out += (lead if i == 0 else b"\r\n") + (
            f"--b0\r\nContent-Type: application/octet-stream\r\n{headers}"
            f"Content-Range: bytes {first}-{last}/{len(DATA)}\r\n\r\n"
        ).encode()
        out += DATA[first : last + 1]
    return out + b"\r\n--b0--\r\n"


def feeder(body: bytes, step: int) -> Callable[[int], bytes]:
    """read1 over `body`, at most `step` bytes a call; a read past the end fails."""
    pos = 0

    def read1(n: int) -> bytes:
        nonlocal pos
        if pos >= len(body):
            raise ConnectionError("connection closed")
        data = body[pos : pos + min(n, step)]
        pos += len(data)
        return data

    return read1


def read_parts(parts: Parts, piece: int = 1000) -> list[tuple[int, bytes]]:
    out = []
    while (part := parts.next_part()) is not None:
        first, length, total = part
        assert total == len(DATA)
        got = b""
        while chunk := parts.read(piece):
            got += chunk
        assert len(got) == length
        out.append((first, got))
    return out


@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 20])
@pytest.mark.parametrize("lead", [b"\r\n", b""], ids=["nginx", "no-leading-crlf"])
def test_parts_are_read_whatever_the_socket_delivers(step: int, lead: bytes) -> None:
    ranges = [(0, 99), (1000, 5095), (16000, 16000), (16383, 16383)]
    parts = Parts(feeder(framed(ranges, lead=lead), step), "b0")
    assert read_parts(parts, piece=333) == [(a, DATA[a : b + 1]) for a, b in ranges]
    assert parts.buffered == 0


def test_other_part_headers_are_ignored() -> None:
    body = framed([(5, 9), (20, 29)], headers="X-Other: yes\r\n")
    assert read_parts(Parts(feeder(body, 100), "b0")) == [(5, DATA[5:10]), (20, DATA[20:30])]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\r\n--other\r\n", "expected the part boundary"),
        (b"\r\n--b0\r\nContent-Type: x\r\n\r\nabc", "no Content-Range"),
        (b"\r\n--b0\r\nContent-Range: bytes 5-/100\r\n\r\n", "malformed part Content-Range"),
        (b"\r\n--b0\r\nContent-Range: bytes 9-5/100\r\n\r\n", "empty range"),
        (
            b"\r\n--b0\r\ncontent-range: bytes 0-0/1\r\nContent-Range: bytes 0-9/100\r\n",
            "two Content-Range headers",
        ),
        (b"\r\n--b0\r\n" + b"X: y\r\n" * (MAX_HEADERS + 1), "more than 16 header lines"),
        (b"\r\n--b0\r\nX: " + b"y" * (MAX_LINE + 10), "longer than 1024 bytes"),
        (b"\r\n\r\n\r\n--b0\r\n", "expected the part boundary"),
    ],
)
def test_malformed_framing_is_refused(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedParts, match=reason):
        Parts(feeder(body + b"\r\n" * 4, 64), "b0").next_part()


def test_a_part_must_be_read_before_the_next() -> None:
    parts = Parts(feeder(framed([(0, 9), (20, 29)]), 100), "b0")
    assert parts.next_part() == (0, 10, len(DATA))
    assert parts.read(4) == DATA[:4]
    with pytest.raises(MalformedParts, match="not read to its end"):
        parts.next_part()


def test_a_dropped_connection_passes_through() -> None:
    body = framed([(0, 999)])
    parts = Parts(feeder(body[:200], 50), "b0")
    assert parts.next_part() == (0, 1000, len(DATA))
    got = b""
    with pytest.raises(ConnectionError):
        while True:
            got += parts.read(1000)
    assert DATA.startswith(got) and got


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ("multipart/byteranges; boundary=00000000000000000001", "00000000000000000001"),
        ('Multipart/ByteRanges; boundary="a b:c"', "a b:c"),
        ("multipart/form-data; boundary=x", None),
        ("multipart/byteranges", None),
        ("application/octet-stream", None),
        ("multipart/byteranges; boundary=" + "x" * 71, None),
        ("multipart/byteranges; boundary=" + "x" * 70, "x" * 70),
        ("multipart/byteranges; boundary=\xe9t\xe9", None),  # not ASCII
        ('multipart/byteranges; boundary="ends in space "', None),
    ],
)
def test_boundary_of(content_type: str, boundary: str | None) -> None:
    assert boundary_of(content_type) == boundary
