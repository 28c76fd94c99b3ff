"""A bundle on an HTTPS server, read with byte-range requests.

Every read is one `Range` request whose `206` answer must carry exactly the
requested `Content-Range`. A dropped connection or a read timeout resumes with
a new range request for the rest, after an exponential back-off, a bounded
number of times in a row; an overall deadline bounds the whole download. TLS
is verified against a configured CA file or the system store, an optional
client certificate identifies the device, and the usual proxy variables
(`HTTPS_PROXY`, `NO_PROXY`) are honoured through `requests`.

A read timeout bounds each socket read, not their sum, so a timer shuts the
source's connections down when the deadline passes: a request waiting for its
header lines or reading a body ends then. Making a connection (TCP and TLS
handshakes) is bounded by the connect timeout, cut to the time left.
Redirects are followed by hand, so that a target other than HTTPS is refused
before anything is sent to it.

A single-range answer is taken a whole chunk (1 MiB) per call until an
answer breaks off: about a quarter less CPU to receive than a call per socket
read. The bytes of a chunk the deadline cuts short are received again. After
the first failure, answers are taken one socket read at a time: every byte
received counts, and a server that stalls again and again still makes
progress. Multipart answers are always read that way.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import itertools
import os
import re
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Self
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
import urllib3.exceptions
from requests.utils import requote_uri

from bundle_tool.errors import BundleError

from . import byteranges
from .errors import ContentChanged, ServerRefused, TransportError, UsageError
from .httpsettings import HttpSettings
from .sockcut import SocketCut, WatchedAdapter, WatchedConnection
from .source import BundleSource

# Statuses worth asking again: the server or a gateway is busy or restarting.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")
MAX_RANGES = 64  # byte ranges asked for in one request (a Range header of about 2 KiB)
MAX_REDIRECTS = 10  # redirects followed for one request
# A redirect's body up to this size is read (and not used), so that its connection is kept.
_SHORT_BODY = 64 << 10
# Most bytes one socket read is asked for. A read returns one TLS record (16 KiB)
# at most, but its buffer is allocated at the size asked: in a plain receive loop,
# 1 MiB buffers made 1 GiB cost 2.5 s of CPU instead of 0.8 s.
READ1_MAX = 64 << 10


class _Retry(Exception):
    """A failure that another attempt may overcome (dropped connection, timeout, 503)."""


class _NotAsked(Exception):
    """A multi-range answer that is not the parts asked for, in order."""


def _reason(exc: BaseException) -> str:
    """The cause behind a wrapped transport error, for a one-line message.

    requests and urllib3 wrap it in text that quotes the whole URL, query string
    (perhaps a token) included, and their retry bookkeeping. Only the cause is
    kept: the OpenSSL reason of a TLS error, the system's text of a socket error
    ("Connection refused", "Name or service not known"), else the error's kind.
    """
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {e.verify_message}"
        if isinstance(e, ssl.SSLError):
            return e.reason or type(e).__name__
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        todo.extend([e.__cause__, e.__context__, getattr(e, "reason", None), *e.args])
    return type(exc).__name__


def _discard(resp: requests.Response) -> None:
    """Close an answer whose body is not wanted; a short body is read so its connection is kept."""
    length = byteranges.header_number(resp.headers.get("Content-Length"))
    if length is not None and length <= _SHORT_BODY:
        with contextlib.suppress(requests.exceptions.RequestException, OSError):
            _ = resp.content  # once read, closing it keeps the connection
    resp.close()


def system_ca_store() -> str | bool:
    """The operating system's CA certificates, as OpenSSL finds them.

    Honours `SSL_CERT_FILE` and `SSL_CERT_DIR`; falls back to the CA bundle
    that ships with `requests` when OpenSSL knows no existing location.
    """
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.capath):
        if candidate and os.path.exists(candidate):
            return candidate
    return True


def _is_certificate_problem(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "certificate" in text or "hostname" in text or "self-signed" in text


class HttpSource(BundleSource):
    """A bundle at an `https://` URL, fetched by byte ranges over one kept-alive session.

    Args:
        url: The bundle's URL.
        settings: TLS, timeouts, deadline and retry settings.
        clock: Monotonic clock in seconds (a test seam).
        sleep: Waits the back-off delays (a test seam).
        allow_insecure_http: Accept `http://` URLs; only for tests, never set by
            the device configuration.
        headers: Sent with every request (a DDI server's token); never in messages.
        etag: The ETag of the bytes a resumed download continues: every range
            request carries it in `If-Range`, and an answer for other bytes is
            refused, so two files are never mixed.

    Raises:
        UsageError: The URL is not `https://`, or a configured TLS file is missing.
    """

    random_access = True
    remote = True

    def __init__(
        self,
        url: str,
        settings: HttpSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        allow_insecure_http: bool = False,
        headers: Mapping[str, str] | None = None,
        etag: str | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings or HttpSettings()
        try:
            parts = urlsplit(url)
            valid = parts.hostname is not None and (parts.port is None or parts.port > 0)
        except ValueError:
            valid = False
        self._schemes = ("https", "http") if allow_insecure_http else ("https",)
        if not valid or parts.scheme not in self._schemes:
            raise UsageError(f"bundle URL must start with https:// and name a host: {url}")
        self.url = url
        # Messages name the server and path, never credentials or query tokens.
        self._where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        for name in ("ca_file", "client_cert", "client_key"):
            path = getattr(self.settings, name)
            if path is not None and not os.path.isfile(path):
                raise UsageError(f"HTTP setting {name}: file not found: {path}")
        self._verify: str | bool = self.settings.ca_file or system_ca_store()
        self._cert: str | tuple[str, str] | None = self.settings.client_cert
        if self.settings.client_cert and self.settings.client_key:
            self._cert = (self.settings.client_cert, self.settings.client_key)
        self._clock = clock
        self._sleep = sleep
        self._deadline_at = clock() + self.settings.deadline
        cut = self._cut = SocketCut()  # shuts the connections down when the deadline passes
        self._session = requests.Session()
        for prefix in ("https://", "http://"):
            self._session.mount(prefix, WatchedAdapter(lambda: cut))
        # Ranges address the stored bytes; a compressed answer would not.
        self._session.headers["Accept-Encoding"] = "identity"
        self._session.headers.update(headers or {})
        self._size: int | None = None
        self._etag: str | None = etag
        # None until a multi-range request was answered; False once one was not
        # answered part by part (from then on every range is asked for alone).
        self._multirange: bool | None = None
        # True until an answer broke off; from then on answers are read one socket
        # read at a time (see the module docstring).
        self._whole_chunks = True
        self.retry_count = 0
        """Retries made so far (after drops, timeouts or busy answers)."""
        self.request_count = 0
        """HTTP requests sent so far."""

    # -- public API -----------------------------------------------------------

    @property
    def merge_gap(self) -> int:
        # While the server answers several ranges at once, a gap costs a part
        # header (about 100 bytes), not a request.
        return self.MERGE_GAP if self._multirange is False else 0

    def size(self) -> int | None:
        """The bundle's size from a `Content-Range` seen so far, else from a HEAD request.

        A server that refuses HEAD (405, 501) or answers it without a length is
        asked for the first byte instead, whose `Content-Range` names the size.
        Returns None when the server does not announce a length at all.

        Raises:
            TransportError: The server cannot be reached or refuses the request.
        """
        if self._size is not None:
            return self._size
        failures = 0
        while True:
            try:
                resp = self._send("HEAD", {}, 0)
                break
            except _Retry as e:
                failures += 1
                self._back_off(failures, str(e), 0)
        with resp:
            length = byteranges.header_number(resp.headers.get("Content-Length"))
            if resp.status_code == 200 and length is not None:
                self._check_etag(resp)
                self._size = length
                return self._size
            if resp.status_code not in (200, 405, 501):
                self._check_status(resp, 0, None)
                raise TransportError(
                    f"HEAD {self._where} answered {resp.status_code} {resp.reason}"
                )
        self.read_exact(0, 1)
        return self._size

    def read(self, offset: int, length: int) -> Iterator[bytes]:
        """Yield exactly `length` bytes from `offset`, in chunks of at most `CHUNK` bytes.

        A dropped connection or a read timeout is resumed from the last chunk
        yielded (see the module docstring).

        Raises:
            BundleError: The bundle on the server ends before `offset + length`.
            TransportError: TLS, HTTP or network failure that retries did not
                overcome, the overall deadline passed, or the server ignored
                the range or answered a different one.
        """
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range: offset {offset}, length {length}")
        end = offset + length
        if self._size is not None and end > self._size:
            raise BundleError(
                f"bundle ends early: {self._where} has {self._size} bytes, {end} needed"
            )
        pos = offset
        failures = 0
        while pos < end:
            try:
                resp = self._send("GET", self._range(f"bytes={pos}-{end - 1}"), pos)
            except _Retry as e:
                failures += 1
                self._back_off(failures, str(e), pos)
                continue
            reusable = False
            # Whole chunks only from a connection the deadline can shut down.
            whole = self._whole_chunks and isinstance(resp.raw.connection, WatchedConnection)
            try:
                self._check_range_answer(resp, pos, end)
                reusable = resp.headers.get("Content-Length") == str(end - pos)
                recv = functools.partial(self._recv, resp.raw, whole=whole)
                for chunk in self._body(recv, pos, end):
                    pos += len(chunk)
                    failures = 0
                    yield chunk
            except _Retry as e:
                reusable = False
                self._whole_chunks = False
                resp.close()
                failures += 1
                self._back_off(failures, str(e), pos)
            finally:
                if reusable and pos == end:
                    resp.raw.release_conn()
                else:
                    # Unread bytes stay on the wire: drop the connection, never read them.
                    resp.close()

    def read_spans(self, spans: Sequence[tuple[int, int]]) -> Iterator[bytes]:
        """Yield the bytes of each (offset, length) span in turn, up to MAX_RANGES per request.

        The ranges are asked for together; the server answers with a
        `multipart/byteranges` body. A server that answers otherwise (the whole
        file, one range, parts other than those asked for, 416) is asked for one
        range at a time from then on (`read`). A dropped connection resumes
        from the byte reached: these answers are read a socket read at a time.

        Raises:
            BundleError, TransportError: as `read`.
        """
        todo = deque((offset, length) for offset, length in spans if length)
        if any(offset < 0 or length < 0 for offset, length in todo):
            raise ValueError(f"invalid ranges: {list(spans)}")
        failures = 0
        while todo:
            if len(todo) == 1 or self._multirange is False:
                while todo:
                    yield from self.read(*todo.popleft())
                return
            batch = list(itertools.islice(todo, MAX_RANGES))
            ranges = ",".join(f"{offset}-{offset + length - 1}" for offset, length in batch)
            try:
                resp = self._send("GET", self._range(f"bytes={ranges}"), todo[0][0])
            except _Retry as e:
                failures += 1
                self._back_off(failures, str(e), todo[0][0])
                continue
            try:
                for chunk in self._multipart(resp, todo, len(batch)):
                    failures = 0
                    yield chunk
            except (_NotAsked, byteranges.MalformedParts):
                self._multirange = False
            except _Retry as e:
                self._whole_chunks = False
                failures += 1
                self._back_off(failures, str(e), todo[0][0])

    def _multipart(
        self, resp: requests.Response, todo: deque[tuple[int, int]], count: int
    ) -> Iterator[bytes]:
        """Yield the answer to a request for the first `count` spans of `todo`.

        Each span is taken off `todo` as its bytes are yielded, so that a retry
        asks for what is still missing. Raises _NotAsked or MalformedParts for an
        answer that is not those parts in order (nothing more of it is read).
        """
        at = todo[0][0]  # where the bytes being received belong, for messages
        received = 0

        def recv(n: int) -> bytes:
            nonlocal received
            data = self._recv(resp.raw, n, at)
            received += len(data)
            return data

        done = False
        try:
            boundary = self._multipart_boundary(resp, todo[count - 1][0] + todo[count - 1][1])
            if boundary is None:
                raise _NotAsked
            parts = byteranges.Parts(recv, boundary)
            for _ in range(count):
                offset, length = todo[0]
                self._expect_part(parts.next_part(), offset, length)
                for chunk in self._body(lambda n, _at: parts.read(n), offset, offset + length):
                    offset += len(chunk)
                    length -= len(chunk)
                    at = offset
                    todo[0] = (offset, length)
                    yield chunk
                todo.popleft()
            self._multirange = True
            # Everything asked for has come. The connection is kept only if the
            # answer then ends as it should (the closing boundary and nothing more).
            try:
                ended = parts.next_part() is None
            except (_Retry, byteranges.MalformedParts):
                ended = False
            done = (
                ended and not parts.buffered and resp.headers.get("Content-Length") == str(received)
            )
        finally:
            if done:
                resp.raw.release_conn()
            else:
                resp.close()  # never read what is left of the answer

    def __enter__(self) -> Self:
        return self

    def close(self) -> None:
        """Close the session and its kept-alive connections."""
        self._cut.cancel()
        self._session.close()

    @property
    def etag(self) -> str | None:
        """The bundle's ETag, once an answer named one (or the one given to resume)."""
        return self._etag

    # -- internals ------------------------------------------------------------

    def _range(self, spec: str) -> dict[str, str]:
        """A range request's headers: with `If-Range` once a strong ETag is known."""
        if self._etag and not self._etag.startswith("W/"):
            return {"Range": spec, "If-Range": self._etag}
        return {"Range": spec}

    def _time_left(self, pos: int) -> float:
        left = self._deadline_at - self._clock()
        if left <= 0 or self._cut.passed:
            raise self._deadline_passed(pos)
        return left

    def _deadline_passed(self, pos: int) -> TransportError:
        return TransportError(
            f"download deadline of {self.settings.deadline:g} s passed at byte {pos} "
            f"of {self._where}"
        )

    def _back_off(self, failures: int, reason: str, pos: int) -> None:
        """Wait before retry number `failures` in a row, or give up."""
        left = self._time_left(pos)  # a failure the deadline caused is told as such
        if failures > self.settings.retries:
            raise TransportError(
                f"giving up on {self._where} after {self.settings.retries} retries: {reason}"
            )
        s = self.settings
        delay = min(s.backoff_max, s.backoff_initial * 2 ** (failures - 1))
        if left <= delay:
            raise TransportError(
                f"download deadline of {s.deadline:g} s would pass before the next retry "
                f"at byte {pos} of {self._where}: {reason}"
            )
        self.retry_count += 1
        self._sleep(delay)

    def _send(self, method: str, headers: dict[str, str], pos: int) -> requests.Response:
        """Send one request; return the answer with its body unread.

        Redirects are followed here, each target checked before anything is
        sent to it: an https:// URL (or http:// when insecure HTTP is allowed),
        at most MAX_REDIRECTS in a row. As `requests` would, an Authorization
        header is not sent on to another host.
        """
        url = self.url
        sent: dict[str, str | None] = dict(headers)
        for _ in range(MAX_REDIRECTS + 1):
            resp = self._send_to(url, method, sent, pos)
            location = self._session.get_redirect_target(resp)
            if location is None:
                return resp
            _discard(resp)
            target = self._redirect_target(url, location)
            if self._session.should_strip_auth(url, target):  # type: ignore[no-untyped-call]
                sent["Authorization"] = None  # a None header is left out of the request
            url = target
        raise TransportError(f"{self._where} redirected more than {MAX_REDIRECTS} times; refused")

    def _redirect_target(self, url: str, location: str) -> str:
        """The URL a redirect from `url` names, if it may be followed."""
        target = requote_uri(urljoin(url, location))
        try:
            parts = urlsplit(target)
            valid = parts.hostname is not None and (parts.port is None or parts.port > 0)
        except ValueError:
            valid = False
        if not valid or parts.scheme not in self._schemes:
            raise TransportError(f"{self._where} redirected to a non-HTTPS URL; refused")
        return target

    def _send_to(
        self, url: str, method: str, headers: dict[str, str | None], pos: int
    ) -> requests.Response:
        """Send one request to `url`, following no redirect."""
        left = self._time_left(pos)
        self._cut.start(left)
        timeout = (min(self.settings.connect_timeout, left), min(self.settings.read_timeout, left))
        self.request_count += 1
        try:
            resp = self._session.request(
                method,
                url,
                headers=headers,
                stream=method != "HEAD",  # a HEAD answer is read at once; keeps the connection
                timeout=timeout,
                verify=self._verify,
                cert=self._cert,
                allow_redirects=False,
            )
        except requests.exceptions.SSLError as e:
            reason = _reason(e)
            if _is_certificate_problem(e):
                raise TransportError(
                    f"TLS certificate check with {self._where} failed ({reason}); "
                    "check the CA file and the client certificate"
                ) from e
            raise _Retry(f"TLS error: {reason}") from e
        except requests.exceptions.ProxyError as e:
            raise _Retry(f"proxy failed: {_reason(e)}") from e
        except requests.exceptions.ConnectTimeout as e:
            raise _Retry("connecting timed out") from e
        except requests.exceptions.Timeout as e:
            raise _Retry("timed out waiting for the server") from e
        except requests.exceptions.ConnectionError as e:
            raise _Retry(f"connection failed: {_reason(e)}") from e
        except (requests.exceptions.RequestException, OSError) as e:
            raise TransportError(f"{method} {self._where} failed: {_reason(e)}") from e
        if self._cut.passed:  # and shut the connection down: the answer may be cut short
            resp.close()
            raise self._deadline_passed(pos)
        if resp.status_code in _RETRY_STATUSES:
            resp.close()
            raise _Retry(f"server answered {resp.status_code} {resp.reason}")
        return resp

    def _check_status(self, resp: requests.Response, pos: int, end: int | None) -> None:
        """Refuse error answers, naming what the server said."""
        if resp.status_code == 416:
            m = _UNSATISFIED_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
            total = int(m.group(1)) if m else None
            if end is not None and total is not None and total >= end:
                # The range lies within the size the server names: its fault, not the bundle's.
                raise TransportError(
                    f"{self._where} answered 416 Range Not Satisfiable to a request for "
                    f"bytes {pos}-{end - 1} of its {total} bytes"
                )
            if end is not None:
                size = f"has {total} bytes" if m else "is shorter"
                raise BundleError(f"bundle ends early: {self._where} {size}, {end} needed")
        said = f"{resp.request.method} {self._where} answered {resp.status_code} {resp.reason}"
        if 400 <= resp.status_code < 500:
            raise ServerRefused(said, resp.status_code)
        if resp.status_code >= 400:
            raise TransportError(said)

    def _check_etag(self, resp: requests.Response) -> None:
        etag = resp.headers.get("ETag")
        if etag is None:
            return
        if self._etag is not None and etag != self._etag:
            raise ContentChanged(
                f"the bundle at {self._where} changed during the download "
                f"(ETag {self._etag} became {etag})"
            )
        self._etag = etag

    def _check_range_answer(self, resp: requests.Response, pos: int, end: int) -> None:
        """Accept only a 206 whose Content-Range is exactly bytes pos..end-1."""
        self._check_status(resp, pos, end)
        asked = f"bytes {pos}-{end - 1}"
        if resp.status_code == 200 and self._etag and not self._etag.startswith("W/"):
            raise ContentChanged(
                f"the bundle at {self._where} changed during the download "
                f"(it is no longer ETag {self._etag}); the download starts again"
            )
        if resp.status_code == 200:
            raise TransportError(
                f"{self._where} ignored the Range request for {asked} and sent the whole "
                "file (200); serve bundles from a server that supports byte ranges"
            )
        if resp.status_code != 206:
            raise TransportError(
                f"{self._where} answered {resp.status_code} {resp.reason} to a request for {asked}"
            )
        self._check_encoding(resp, asked)
        header = resp.headers.get("Content-Range", "")
        parsed = byteranges.content_range(header)
        if parsed is None:
            raise TransportError(
                f"{self._where} answered a request for {asked} with a missing or "
                f"malformed Content-Range {header!r}"
            )
        first, last, total = parsed
        if total is not None:
            self._check_total(total)
            if first == pos and last == total - 1 and total < end:
                raise BundleError(
                    f"bundle ends early: {self._where} has {total} bytes, {end} needed"
                )
        if (first, last) != (pos, end - 1):
            raise TransportError(
                f"{self._where} answered a request for {asked} with the wrong "
                f"Content-Range {header!r}"
            )
        self._check_etag(resp)

    def _check_encoding(self, resp: requests.Response, asked: str) -> None:
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            raise TransportError(
                f"{self._where} sent {asked} with Content-Encoding {encoding}; "
                "serve bundles without compression"
            )

    def _check_total(self, total: int) -> None:
        """Note the bundle's size from a Content-Range; refuse a change during the download."""
        if self._size is not None and total != self._size:
            raise TransportError(
                f"the bundle at {self._where} changed size during the download "
                f"({self._size} bytes, then {total})"
            )
        self._size = total

    def _multipart_boundary(self, resp: requests.Response, end: int) -> str | None:
        """The boundary of a multi-range answer; None for any other successful answer."""
        if resp.status_code == 416:
            return None  # some servers refuse many ranges so; each alone tells what is wrong
        self._check_status(resp, 0, end)
        if resp.status_code != 206:
            return None  # the whole file (200): not a byte of it is read
        self._check_encoding(resp, "the ranges asked for")
        boundary = byteranges.boundary_of(resp.headers.get("Content-Type", ""))
        if boundary is not None:
            self._check_etag(resp)
        return boundary

    def _expect_part(self, part: tuple[int, int, int | None] | None, pos: int, length: int) -> None:
        """Accept the next part only if it is the range asked for next."""
        if part is None or part[:2] != (pos, length):
            raise _NotAsked
        total = part[2]
        if total is not None:
            self._check_total(total)

    def _recv(self, raw: Any, n: int, pos: int, *, whole: bool = False) -> bytes:
        """Up to n bytes of an answer's body, at least one; _Retry when the connection broke.

        By default what one socket read delivered (read1), so a trickling server
        cannot hold us past the deadline inside one call. With `whole`, all n
        bytes unless the answer ends first; the caller watches the deadline
        (the source's `SocketCut`), and the bytes of a call that fails are lost.
        """
        try:
            data: bytes = (
                raw.read(n, decode_content=False)
                if whole
                else raw.read1(min(n, READ1_MAX), decode_content=False)
            )
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as e:
            raise _Retry(f"connection broken at byte {pos}: {e}") from e
        if not data:
            raise _Retry(f"connection closed at byte {pos}")
        self.bytes_fetched += len(data)
        self._time_left(pos)
        return data

    def _body(self, read: Callable[[int, int], bytes], pos: int, end: int) -> Iterator[bytes]:
        """Yield bytes pos..end-1 of an answer, never reading past `end`.

        `read(n, at)` returns up to n bytes (at least one) of the body, `at`
        being the bundle offset they start at. Bytes received before a failure
        are yielded first, then `_Retry` is raised so the caller resumes from
        the byte reached.
        """
        while pos < end:
            want = min(self.CHUNK, end - pos)
            parts: list[bytes] = []
            got = 0
            failure: _Retry | None = None
            while got < want:
                try:
                    data = read(want - got, pos + got)
                except _Retry as e:
                    failure = e
                    break
                parts.append(data)
                got += len(data)
            if got:
                pos += got
                yield b"".join(parts)
            if failure is not None:
                raise failure
