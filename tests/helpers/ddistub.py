"""A DDI server STUB on 127.0.0.1, for what goosebit cannot produce.

Not a server of ours and not an interop proof (the goosebit tests are): it
replays the JSON shapes Eclipse hawkBit documents for its DDI API (base
resource with `config.polling.sleep` and `_links`, `deploymentBase` with
`download`/`update` handling and `maintenanceWindow`, `cancelAction` with
`stopId`), so the client's handling of cancel, maintenance windows, `attempt`,
download-only, ISO-8601 sleeps, 410 Gone and 429 can be tested.

A test sets what the stub answers and reads what the client sent:

* `sleep`, `deployment` (a `deploymentBase` body or None), `cancel` (a
  `cancelAction` body or None), `config_data_asked`;
* `poll_status` / `retry_after` (answer the base resource with that status),
  `feedback_status` (answer feedback with it);
* `requests` (method, path), `feedback` (path, body), `config_data` (bodies).
"""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any

TENANT = "DEFAULT"


class DdiStub:
    """The stub; use as a context manager. `url` is its base URL (plain HTTP)."""

    def __init__(self, controller_id: str) -> None:
        self.controller_id = controller_id
        self.sleep = "00:05:00"
        self.deployment: dict[str, Any] | None = None
        self.cancel: dict[str, Any] | None = None
        self.config_data_asked = False
        self.poll_status = 200
        self.retry_after: str | None = None
        self.feedback_status = 200
        self.requests: list[tuple[str, str]] = []
        self.feedback: list[tuple[str, dict[str, Any]]] = []
        self.config_data: list[dict[str, Any]] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(
                self, status: int, body: Any = None, headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/hal+json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                n = int(self.headers.get("Content-Length", "0"))
                return json.loads(self.rfile.read(n) or b"null")

            def do_GET(self) -> None:
                stub.requests.append(("GET", self.path))
                base = stub.base_path
                if self.path == base:
                    if stub.poll_status != 200:
                        extra = {"Retry-After": stub.retry_after} if stub.retry_after else {}
                        self._answer(stub.poll_status, {"message": "busy"}, extra)
                        return
                    self._answer(200, stub.base_body())
                elif (
                    stub.deployment
                    and self.path == f"{base}/deploymentBase/{stub.deployment['id']}"
                ):
                    self._answer(200, stub.deployment)
                elif stub.cancel and self.path == f"{base}/cancelAction/{stub.cancel['id']}":
                    self._answer(200, stub.cancel)
                else:
                    self._answer(404, {"message": "not found"})

            def do_POST(self) -> None:
                stub.requests.append(("POST", self.path))
                stub.feedback.append((self.path, self._body()))
                self._answer(stub.feedback_status)

            def do_PUT(self) -> None:
                stub.requests.append(("PUT", self.path))
                if self.path == f"{stub.base_path}/configData":
                    stub.config_data.append(self._body())
                    self._answer(200)
                else:
                    self._answer(404)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A connection reset between the poll saying "ready" and accept() must not leave
        # accept() blocked, and the stub's shutdown waiting on it for ever.
        self._server.socket.setblocking(False)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_path(self) -> str:
        return f"/{TENANT}/controller/v1/{self.controller_id}"

    def base_body(self) -> dict[str, Any]:
        """The base resource, as hawkBit documents it."""
        links: dict[str, Any] = {}
        base = f"{self.url}{self.base_path}"
        if self.deployment:
            links["deploymentBase"] = {"href": f"{base}/deploymentBase/{self.deployment['id']}"}
        if self.cancel:
            links["cancelAction"] = {"href": f"{base}/cancelAction/{self.cancel['id']}"}
        if self.config_data_asked:
            links["configData"] = {"href": f"{base}/configData"}
        return {"config": {"polling": {"sleep": self.sleep}}, "_links": links}

    def __enter__(self) -> DdiStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def deployment_body(
    action_id: str,
    artifacts: list[dict[str, Any]],
    *,
    download: str = "forced",
    update: str = "forced",
    maintenance_window: str | None = None,
    version: str = "2.0.0",
) -> dict[str, Any]:
    """A `deploymentBase` answer in hawkBit's documented shape."""
    deployment: dict[str, Any] = {
        "download": download,
        "update": update,
        "chunks": [{"part": "os", "version": version, "name": "firmware", "artifacts": artifacts}],
    }
    if maintenance_window is not None:
        deployment["maintenanceWindow"] = maintenance_window
    return {"id": action_id, "deployment": deployment}


def artifact_body(filename: str, size: int, sha256: str, href: str) -> dict[str, Any]:
    """A chunk artifact in hawkBit's documented shape (https link and plain-HTTP link)."""
    return {
        "filename": filename,
        "size": size,
        "hashes": {"sha256": sha256},
        "_links": {"download": {"href": href}, "download-http": {"href": href}},
    }
