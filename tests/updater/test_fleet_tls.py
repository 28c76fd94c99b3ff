"""The DDI client's TLS comes from the `[http]` table: CA file and client certificate (real nginx).

nginx serves the base resource as a static JSON file, behind mutual TLS.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.helpers.nginx import NginxServer
from updater.errors import TransportError
from updater.fleet import ddi
from updater.fleet.client import DdiClient
from updater.fleet.settings import FleetSettings
from updater.httpsettings import HttpSettings

BASE = {"config": {"polling": {"sleep": "00:01:00"}}, "_links": {}}


@pytest.fixture
def mtls(nginx_factory: Callable[..., NginxServer]) -> NginxServer:
    server = nginx_factory(require_client_cert=True)
    folder = server.root / "DEFAULT" / "controller" / "v1"
    folder.mkdir(parents=True)
    (folder / "dev-tls").write_text(json.dumps(BASE))
    return server


def fleet(server: NginxServer) -> FleetSettings:
    return FleetSettings(server=server.url("").rstrip("/"), controller_id="dev-tls")


def test_poll_with_the_ca_and_the_client_certificate(mtls: NginxServer) -> None:
    s = fleet(mtls)
    http = HttpSettings(
        ca_file=mtls.ca_file, client_cert=mtls.client_cert, client_key=mtls.client_key
    )
    with DdiClient(s, http) as client:
        poll = ddi.parse_poll(client.get_json(ddi.base_url(s.server, s.tenant, s.controller_id)))
    assert poll.sleep == 60 and poll.summary() == "nothing"
    assert mtls.log_entries()[-1]["client_verify"] == "SUCCESS"


def test_without_the_client_certificate_or_the_ca_it_fails_clearly(mtls: NginxServer) -> None:
    s = fleet(mtls)
    url = ddi.base_url(s.server, s.tenant, s.controller_id)
    with (
        DdiClient(s, HttpSettings(ca_file=mtls.ca_file)) as client,
        pytest.raises(TransportError, match=r"answered 400 Bad Request"),
    ):
        client.get_json(url)  # nginx answers 400 when no required certificate came
    with (
        DdiClient(s, HttpSettings()) as client,
        pytest.raises(TransportError, match="check the CA file and client certificate"),
    ):
        client.get_json(url)
