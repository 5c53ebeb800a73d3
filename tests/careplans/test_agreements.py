"""Agreements name the categories a consumer may change (``writeCategories``, ``--write-category``)."""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner

from sharing_api.services import Services
from sharing_api.settings import Settings
from tests.api_client import HOSPITAL, OTHER_HOSPITAL, ApiClient, Party
from tests.conftest import TENANT_A

ADMIN = f"/{TENANT_A}/admin/agreements"


def _as_controller(client: ApiClient, method: str, path: str, **kwargs: Any) -> Any:
    party = client.parties.get("controller-a") or client.add_party(
        Party("controller-a", TENANT_A, frozenset({"dho-share/consent.write"}), hpr=None)
    )
    headers = client.auth_headers(method, path, client.token(party))
    return client.flask.open(path, method=method, headers=headers, **kwargs)


def test_the_admin_api_records_write_categories(client: ApiClient, services: Services) -> None:
    body = {
        "consumer": HOSPITAL,
        "categories": ["vital-signs", "plan"],
        "writeCategories": ["plan"],
        "purposes": ["TREAT"],
    }
    added = _as_controller(client, "POST", ADMIN, json=body)
    assert added.status_code == 201, added.get_json()
    assert added.get_json()["writeCategories"] == ["plan"]
    stored = next(
        a for a in services.policy.agreements(controller=TENANT_A) if a.id == added.get_json()["id"]
    )
    assert stored.write_categories == frozenset({"plan"})
    unshared = {**body, "categories": ["vital-signs"]}
    refused = _as_controller(client, "POST", ADMIN, json=unshared)
    assert refused.status_code == 400
    assert "not shared: plan" in refused.get_json()["issue"][0]["diagnostics"]


def test_the_cli_records_write_categories(services: Services, settings: Settings, monkeypatch: Any) -> None:
    from sharing_api.cli import main

    monkeypatch.setenv("DHO_DATABASE_URL", settings.database_url)
    args = ["agreements", "add", "--controller", TENANT_A, "--consumer", OTHER_HOSPITAL]
    result = CliRunner().invoke(main, [*args, "--category", "plan", "--write-category", "plan"])
    assert result.exit_code == 0, result.output
    (found,) = [
        a
        for a in services.policy.agreements(controller=TENANT_A, consumer=OTHER_HOSPITAL)
        if "plan" in a.categories
    ]
    assert found.write_categories == frozenset({"plan"})
