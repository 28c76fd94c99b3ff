"""Reading a `multipart/byteranges` answer (RFC 9110, section 14.6) as it arrives.

Asked for several byte ranges in one request, a server answers `206` with a
`multipart/byteranges` body: each part is a boundary line, a few header lines
(one of them `Content-Range`), an empty line and the part's bytes:

    --BOUNDARY
    Content-Type: application/octet-stream
    Content-Range: bytes 8192-12287/1082205383

    <4096 bytes>
    --BOUNDARY
    ...
    --BOUNDARY--

`Parts` reads such a body from a function that returns the next bytes on the
wire, without ever holding more than a line or a caller-sized piece of a part,
and bounds the framing it accepts (line length, header count) so a server
cannot make it read much more than the parts it asked for.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from email.message import Message

MAX_LINE = 1024  # bytes in one framing line
MAX_HEADERS = 16  # header lines in one part
#: A byte count or position in a header: ASCII digits, at most 19 (below 2**63), so that a
#: server cannot hand `int` a number it refuses (more than 4300 digits) or one beyond any file.
_NUMBER = r"[0-9]{1,19}"
_CONTENT_RANGE = re.compile(rf"bytes\s+({_NUMBER})-({_NUMBER})/({_NUMBER}|\*)", re.ASCII)
# RFC 2046 section 5.1.1: 1 to 70 of these characters, the last not a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


def header_number(value: str | None) -> int | None:
    """The number a header such as Content-Length or Retry-After gives; None if not one.

    Only ASCII digits count (`str.isdigit` also takes "¹", which `int` refuses).
    """
    if value is None or re.fullmatch(_NUMBER, value.strip(), re.ASCII) is None:
        return None
    return int(value)


def content_range(value: str) -> tuple[int, int, int | None] | None:
    """(first, last, total) of a `bytes FIRST-LAST/TOTAL` Content-Range; None if not one.

    The total is None for `*` (a length the server does not tell).
    """
    m = _CONTENT_RANGE.fullmatch(value.strip())
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), None if m.group(3) == "*" else int(m.group(3))


class MalformedParts(Exception):
    """The body does not follow the multipart/byteranges framing."""


def boundary_of(content_type: str) -> str | None:
    """The boundary of a `multipart/byteranges` Content-Type, else None."""
    msg = Message()
    msg["Content-Type"] = content_type
    if msg.get_content_type() != "multipart/byteranges":
        return None
    boundary = msg.get_param("boundary")
    return boundary if isinstance(boundary, str) and _BOUNDARY.fullmatch(boundary) else None


class Parts:
    """The parts of one multipart/byteranges body.

    Args:
        read1: returns up to n (> 0) further bytes of the body, at least one;
            whatever it raises (a dropped connection) passes through unchanged.
        boundary: the boundary from the answer's Content-Type.
    """

    def __init__(self, read1: Callable[[int], bytes], boundary: str) -> None:
        self._read1 = read1
        self._delimiter = b"--" + boundary.encode("ascii")
        self._buf = b""
        self._left = 0  # bytes of the current part not yet read

    def next_part(self) -> tuple[int, int, int | None] | None:
        """Move to the next part: (first byte, length, total size or None); None at the end.

        Raises:
            MalformedParts: missing boundary, headers or Content-Range, or unread bytes
                left in the current part.
        """
        if self._left:
            raise MalformedParts("the previous part was not read to its end")
        # Before the first delimiter the body may start with an empty line; after a
        # part, its bytes are followed by one (the CRLF that belongs to the delimiter).
        line = self._line()
        if line == b"":
            line = self._line()
        if line == self._delimiter + b"--":
            return None
        if line != self._delimiter:
            raise MalformedParts(f"expected the part boundary, got {line[:80]!r}")
        found = None
        for _ in range(MAX_HEADERS + 1):
            header = self._line()
            if header == b"":
                break
            name, _, value = header.partition(b":")
            if name.strip().lower() == b"content-range":
                if found is not None:
                    raise MalformedParts("a part has two Content-Range headers")
                found = content_range(value.decode("latin-1"))
                if found is None:
                    raise MalformedParts(f"malformed part Content-Range {value.strip()!r}")
        else:
            raise MalformedParts(f"a part has more than {MAX_HEADERS} header lines")
        if found is None:
            raise MalformedParts("a part has no Content-Range")
        first, last, total = found
        if last < first:
            raise MalformedParts(f"a part has the empty range {first}-{last}")
        self._left = last - first + 1
        return first, self._left, total

    @property
    def buffered(self) -> int:
        """Bytes received but not yet handed out (after the end: bytes past the body)."""
        return len(self._buf)

    def read(self, n: int) -> bytes:
        """Up to n (> 0) bytes of the current part, at least one; b"" once it is read."""
        n = min(n, self._left)
        if n <= 0:
            return b""
        if self._buf:
            data, self._buf = self._buf[:n], self._buf[n:]
        else:
            data = self._read1(n)
        self._left -= len(data)
        return data

    def _line(self) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            if len(self._buf) > MAX_LINE:
                raise MalformedParts(f"a framing line is longer than {MAX_LINE} bytes")
            self._buf += self._read1(MAX_LINE)
        if end > MAX_LINE:
            raise MalformedParts(f"a framing line is longer than {MAX_LINE} bytes")
        line, self._buf = self._buf[:end], self._buf[end + 2 :]
        return line
