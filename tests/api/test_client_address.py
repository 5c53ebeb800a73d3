"""The audit event's source address behind trusted proxies (``DHO_TRUSTED_PROXIES``, issue 13):
``X-Forwarded-For`` names the client only when the immediate peer is a trusted proxy; a client that
sends the header itself (an untrusted peer) is recorded by its own address."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest
from flask import Flask
from pydantic import ValidationError
from sqlalchemy import select

from auth.server import TOKEN_PATH
from sharing_api.app import create_app
from sharing_api.forwarded import client_address, parse_networks
from sharing_api.services import Services
from sharing_api.settings import Settings
from sharing_api.store.schema import audit_entries

TRUSTED = parse_networks("10.9.0.0/16, fd00::/8")


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        ("192.0.2.50", "203.0.113.9", "192.0.2.50"),  # untrusted peer: the header is the client's word
        ("10.9.0.5", None, "10.9.0.5"),  # a trusted proxy that forwards nothing
        ("10.9.0.5", "203.0.113.9", "203.0.113.9"),
        ("10.9.0.5", "198.51.100.1, 203.0.113.9, 10.9.0.6", "203.0.113.9"),  # spoofed left part skipped
        ("10.9.0.5", "10.9.0.7, 10.9.0.6", "10.9.0.7"),  # only proxies: the farthest one
        ("10.9.0.5", "203.0.113.9, not-an-address", "10.9.0.5"),  # a bad hop ends the walk
        ("10.9.0.5", "<script>", "10.9.0.5"),
        ("fd00::1", "2001:db8::7", "2001:db8::7"),
        ("::ffff:10.9.0.5", "203.0.113.9", "203.0.113.9"),  # IPv4-mapped peer
        (None, "203.0.113.9", None),
    ],
)
def test_client_address(peer: str | None, forwarded_for: str | None, expected: str | None) -> None:
    assert client_address(peer, forwarded_for, TRUSTED) == expected


def test_trusted_proxies_setting_is_a_cidr_list() -> None:
    assert Settings(trusted_proxies="127.0.0.1/32,10.0.0.0/8").trusted_proxies == parse_networks(  # type: ignore[arg-type]
        ["127.0.0.1/32", "10.0.0.0/8"]
    )
    with pytest.raises(ValidationError, match="trusted_proxies"):
        Settings(trusted_proxies="10.0.0.1/8")  # type: ignore[arg-type]


def source_of(services: Services, app: Flask, peer: str, forwarded_for: str) -> str:
    """The source address the audit log recorded for a (refused) token request from ``peer``."""
    cid = uuid.uuid4().hex
    response = app.test_client().post(
        TOKEN_PATH,
        data={"grant_type": "client_credentials"},
        headers={"X-Forwarded-For": forwarded_for, "X-Request-ID": cid},
        environ_base={"REMOTE_ADDR": peer},
    )
    assert response.status_code in (400, 401), response.get_data(as_text=True)
    with services.engine.connect() as conn:
        events = [orjson.loads(e) for (e,) in conn.execute(select(audit_entries.c.event))]
    mine = [e for e in events if cid in orjson.dumps(e).decode()]
    assert len(mine) == 1, "the refused token request is not audited once"
    networks = [a["network"] for a in mine[0]["agent"] if a.get("network", {}).get("type") == "2"]
    assert len(networks) == 1
    address: Any = networks[0]["address"]
    return str(address)


def test_audit_source_is_the_client_behind_a_trusted_proxy(settings: Settings, app: Flask) -> None:
    fronted = create_app(settings.model_copy(update={"trusted_proxies": TRUSTED}))
    services: Services = fronted.extensions["dho"]
    try:
        assert source_of(services, fronted, "10.9.0.5", "198.51.100.1, 203.0.113.9") == "203.0.113.9"
        assert source_of(services, fronted, "192.0.2.50", "203.0.113.9") == "192.0.2.50"
    finally:
        services.engine.dispose()
    # Without DHO_TRUSTED_PROXIES the header is never believed.
    assert source_of(app.extensions["dho"], app, "10.9.0.5", "203.0.113.9") == "10.9.0.5"
