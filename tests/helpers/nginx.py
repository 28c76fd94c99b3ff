"""Run the real nginx as an unprivileged-friendly HTTPS file server on 127.0.0.1.

Everything nginx writes (pid, logs, temp files) stays in one work directory.
The access log has one JSON object per request, with `$bytes_sent` and
`$body_bytes_sent`, so tests can measure how many bytes a download took.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .process import stop_process
from .tlsca import TlsFiles

NGINX = "/usr/sbin/nginx"

_LOG_FORMAT = (
    '{"status":$status,"method":"$request_method","uri":"$uri","range":"$http_range",'
    '"bytes_sent":$bytes_sent,"body_bytes_sent":$body_bytes_sent,'
    '"client_verify":"$ssl_client_verify","connection":$connection}'
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NginxServer:
    """nginx serving the files of `root` over HTTPS on 127.0.0.1.

    Args:
        workdir: Empty directory for the configuration, pid file, logs and temp files.
        root: Directory whose files are served at `/<name>`.
        tls: The run's CA, server certificate and client certificate.
        require_client_cert: Demand a client certificate issued by the run's CA (mTLS).
        proxy_to: Pass every request to this port on 127.0.0.1 (plain HTTP, with
            `X-Forwarded-Proto: https`) instead of serving `root`: TLS in front of
            an application server, as goosebit is deployed.
    """

    def __init__(
        self,
        workdir: Path,
        root: Path,
        tls: TlsFiles,
        *,
        require_client_cert: bool = False,
        proxy_to: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.root = root
        self.tls = tls
        self.require_client_cert = require_client_cert
        self.proxy_to = proxy_to
        self.access_log = workdir / "access.log"
        self.error_log = workdir / "error.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def ca_file(self) -> str:
        """The CA certificate that signed the server (and client) certificate."""
        return str(self.tls.ca_file)

    @property
    def client_cert(self) -> str:
        """A client certificate the server accepts."""
        return str(self.tls.client_cert)

    @property
    def client_key(self) -> str:
        """The private key of `client_cert`."""
        return str(self.tls.client_key)

    def url(self, name: str) -> str:
        """The https:// URL of the file `name` under `root`."""
        return f"https://127.0.0.1:{self.port}/{quote(name)}"

    def _config(self) -> str:
        w = self.workdir
        tls = self.tls
        user = "user root;" if os.geteuid() == 0 else ""
        mtls = (
            f"ssl_client_certificate {tls.ca_file}; ssl_verify_client on;"
            if self.require_client_cert
            else ""
        )
        temps = "\n".join(
            f"    {kind}_temp_path {w}/tmp/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return f"""
{user}
worker_processes 1;
pid {w}/nginx.pid;
error_log {self.error_log} info;
events {{ worker_connections 256; }}
http {{
{temps}
    default_type application/octet-stream;
    log_format abtest escape=json '{_LOG_FORMAT}';
    access_log {self.access_log} abtest;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{self.port} ssl;
        server_name localhost;
        ssl_certificate {tls.server_cert};
        ssl_certificate_key {tls.server_key};
        ssl_protocols TLSv1.2 TLSv1.3;
        {mtls}
        root {self.root};
        location / {{ {self._location()} }}
    }}
}}
"""

    def _location(self) -> str:
        if self.proxy_to is None:
            return ""
        return (
            f"proxy_pass http://127.0.0.1:{self.proxy_to}; proxy_set_header Host $http_host; "
            "proxy_set_header X-Forwarded-Proto https; proxy_set_header X-Forwarded-For "
            "$remote_addr; proxy_buffering off; proxy_request_buffering off;"
        )

    def start(self, timeout: float = 10.0) -> None:
        """Start nginx on a free port and wait until it accepts connections."""
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        for _attempt in range(5):
            self.port = free_port()
            conf = self.workdir / "nginx.conf"
            conf.write_text(self._config())
            self.access_log.write_bytes(b"")
            proc = subprocess.Popen(
                [
                    NGINX,
                    "-p",
                    str(self.workdir),
                    "-e",
                    str(self.error_log),
                    "-c",
                    str(conf),
                    "-g",
                    "daemon off;",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                except OSError:
                    time.sleep(0.02)
                    continue
                self._proc = proc
                return
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            errors = self.error_log.read_text(errors="replace")
            if "Address already in use" not in errors:
                raise RuntimeError(f"nginx did not start:\n{errors}")
        raise RuntimeError("nginx found no free port")

    def stop(self) -> None:
        """Stop nginx (fast shutdown) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc)

    def __enter__(self) -> NginxServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_entries(self, settle: float = 0.1) -> list[dict[str, Any]]:
        """The access log's entries, once the log has not grown for `settle` seconds.

        nginx writes an entry when it finishes a request, which may be a moment
        after the client got the last byte.
        """
        last = -1
        stable_since = time.monotonic()
        deadline = stable_since + 5.0
        while True:
            size = self.access_log.stat().st_size
            now = time.monotonic()
            if size != last:
                last, stable_since = size, now
            elif now - stable_since >= settle or now > deadline:
                break
            time.sleep(0.02)
        lines = self.access_log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def body_bytes_served(self) -> int:
        """Sum of `$body_bytes_sent` over the access log: body bytes that left nginx."""
        return sum(int(e["body_bytes_sent"]) for e in self.log_entries())

    def bytes_served(self) -> int:
        """Sum of `$bytes_sent` (headers included) over the access log."""
        return sum(int(e["bytes_sent"]) for e in self.log_entries())

    def reset_log(self) -> None:
        """Forget the requests logged so far (nginx appends to the emptied file)."""
        self.log_entries()
        self.access_log.write_bytes(b"")
