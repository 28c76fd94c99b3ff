"""A resumed download names the bytes it continues (If-Range): real nginx refuses to mix files."""

from __future__ import annotations

import pytest

from tests.helpers.nginx import NginxServer
from updater.errors import ContentChanged
from updater.httpsettings import HttpSettings
from updater.httpsource import HttpSource


def test_the_same_file_resumes_another_is_refused(nginx_server: NginxServer) -> None:
    path = nginx_server.root / "fw.bundle"
    path.write_bytes(b"first file " * 1000)
    settings = HttpSettings(ca_file=nginx_server.ca_file)
    with HttpSource(nginx_server.url("fw.bundle"), settings) as src:
        assert src.read_exact(0, 5) == b"first"
        etag = src.etag
    assert etag is not None and not etag.startswith("W/")

    with HttpSource(nginx_server.url("fw.bundle"), settings, etag=etag) as src:
        assert src.read_exact(6, 4) == b"file"  # the same file: the range is served
    assert nginx_server.log_entries()[-1]["status"] == 206

    path.write_bytes(
        b"second file " * 1000
    )  # reassigned at the same URL (nginx: ETag of mtime, size)
    with (
        HttpSource(nginx_server.url("fw.bundle"), settings, etag=etag) as src,
        pytest.raises(ContentChanged, match="changed during the download"),
    ):
        src.read_exact(6, 4)
    assert nginx_server.log_entries()[-1]["status"] == 200  # If-Range: the whole new file
