"""Run the real goosebit DDI server on 127.0.0.1 from its own virtual environment.

`goosebit_setup.sh` makes the environment (pinned goosebit and the plugin that
registers our bundles). Each `GoosebitServer` has its own work directory: a
fresh SQLite database migrated with goosebit's own `aerich`, its artifacts
directory, its settings file and its log. It listens on 127.0.0.1 only: its
first-user setup endpoint is open to whoever reaches it first.

The admin API is driven as goosebit's UI does: the first user is created
through `/setup`, which returns a bearer token for `/api/v1/...`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from .process import stop_process

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "tests" / "helpers" / "goosebit_setup.sh"
ADMIN = ("admin@example.com", "fleet-test-password")


def goosebit_venv() -> Path:
    """The goosebit venv, made (or checked) by goosebit_setup.sh."""
    venv = Path(os.environ.get("GOOSEBIT_VENV", REPO / ".goosebit-venv"))
    subprocess.run([str(SETUP), str(venv)], check=True, timeout=1800)
    return venv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class GoosebitServer:
    """goosebit on 127.0.0.1 with a fresh database.

    Args:
        venv: goosebit's virtual environment.
        workdir: Empty directory for the database, artifacts, settings and log.
        device_auth: goosebit's device_auth mode (`lax`: a device with a token
            must send it), or None for no device authentication.
        poll_time: The polling sleep goosebit sends (`HH:MM:SS`).
    """

    def __init__(
        self,
        venv: Path,
        workdir: Path,
        *,
        device_auth: str | None = "lax",
        poll_time: str = "00:00:05",
    ) -> None:
        self.venv = venv
        self.workdir = workdir
        self.device_auth = device_auth
        self.poll_time = poll_time
        self.port = 0
        self.log = workdir / "goosebit.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._token = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOOSEBIT_")}
        env.update(
            GOOSEBIT_SETTINGS=str(self.workdir / "goosebit.yaml"),
            GOOSEBIT_DB_URI=f"sqlite:///{self.workdir / 'db.sqlite3'}",
            GOOSEBIT_ARTIFACTS_DIR=str(self.workdir / "artifacts"),
        )
        return env

    def _settings(self) -> str:
        auth = (
            f"device_auth:\n  enable: true\n  mode: {self.device_auth}\n"
            if self.device_auth
            else "device_auth:\n  enable: false\n"
        )
        return (
            f"port: {self.port}\n"
            "tenant: DEFAULT\n"
            f'poll_time: "{self.poll_time}"\n'
            "track_device_ip: false\n"
            "plugins:\n  - goosebit_abupdate\n" + auth
        )

    def _migrate(self) -> None:
        site = (
            subprocess.run(
                [
                    str(self.venv / "bin" / "python"),
                    "-c",
                    "import goosebit,os;print(os.path.dirname(goosebit.__file__))",
                ],
                capture_output=True,
                text=True,
                check=True,
                env=self._env(),
                cwd=self.workdir,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        (self.workdir / "aerich.toml").write_text(
            "[tool.aerich]\n"
            'tortoise_orm = "goosebit.db.config.TORTOISE_CONF"\n'
            f'location = "{site}/db/migrations"\n'
            'src_folder = "./."\n'
        )
        subprocess.run(
            [str(self.venv / "bin" / "aerich"), "--config", "aerich.toml", "upgrade"],
            check=True,
            capture_output=True,
            env=self._env(),
            cwd=self.workdir,
            timeout=120,
        )

    def start(self, timeout: float = 60.0) -> None:
        """Migrate a fresh database, start goosebit, create the admin user."""
        (self.workdir / "artifacts").mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        (self.workdir / "goosebit.yaml").write_text(self._settings())
        self._migrate()
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(
                [
                    str(self.venv / "bin" / "python"),
                    "-m",
                    "uvicorn",
                    "goosebit:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--no-access-log",
                    "--proxy-headers",  # behind nginx: the scheme of its links is https
                    "--forwarded-allow-ips",
                    "127.0.0.1",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.workdir,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"goosebit exited:\n{self.log.read_text(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("goosebit did not start listening") from None
                time.sleep(0.1)
        r = requests.post(
            f"{self.url}/setup", data={"username": ADMIN[0], "password": ADMIN[1]}, timeout=30
        )
        r.raise_for_status()
        self._token = r.json()["access_token"]

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, timeout=15)

    def __enter__(self) -> GoosebitServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the admin API -----------------------------------------------------------------------

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """A request to goosebit's admin API as the admin user; its JSON answer."""
        r = requests.request(
            method,
            f"{self.url}{path}",
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=60,
            **kwargs,
        )
        if r.status_code >= 400:
            raise RuntimeError(f"goosebit {method} {path}: {r.status_code} {r.text}")
        return r.json()

    def add_bundle(
        self, path: Path, version: str, hw_model: str, hw_revision: str = "default"
    ) -> int:
        """Register a bundle as software (through the plugin); its software id."""
        with path.open("rb") as f:
            answer = self.api(
                "POST",
                "/plugins/goosebit_abupdate/software",
                files={"file": (path.name, f, "application/octet-stream")},
                data={"version": version, "hw_model": hw_model, "hw_revision": hw_revision},
            )
        return int(answer["id"])

    def add_rollout(self, software_id: int, feed: str = "default") -> int:
        answer = self.api(
            "PUT",
            "/api/v1/rollouts",
            json={"name": f"rollout-{software_id}", "feed": feed, "software_id": software_id},
        )
        return int(answer["id"])

    def rollouts(self) -> list[dict[str, Any]]:
        rollouts: list[dict[str, Any]] = self.api("GET", "/api/v1/rollouts")["rollouts"]
        return rollouts

    def add_device(self, device_id: str, auth_token: str | None = None) -> None:
        body: dict[str, Any] = {"devices": [device_id]}
        if auth_token is not None:
            body["auth_token"] = auth_token
        self.api("PUT", "/api/v1/devices", json=body)

    def device(self, device_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.api("GET", f"/api/v1/devices/{device_id}")
        return answer

    def device_log(self, device_id: str) -> str:
        return str(self.api("GET", f"/api/v1/devices/{device_id}/log").get("log") or "")
