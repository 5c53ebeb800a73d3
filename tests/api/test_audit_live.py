"""``dho-share audit fetch`` downloads a live server's export with an auditor's token, and
``dho-share audit verify`` checks it against the pinned key (issue #5: "an export or a live server")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sharing_api.cli import main
from sharing_api.services import Services
from sharing_api.settings import Settings
from tests.api_client import ApiClient, Party
from tests.conftest import TENANT_A
from tests.factories import fnr, heart_rate, search_form
from tests.live_server import live_server


@pytest.mark.slow
def test_fetch_from_a_live_server_then_verify(
    client: ApiClient, settings: Settings, services: Services, tmp_path: Path
) -> None:
    auditor = client.add_party(Party("auditor-a", TENANT_A, frozenset({"dho-share/audit.read"}), hpr=None))
    patient = fnr()
    client.post(f"/{TENANT_A}/fhir/Observation", json=heart_rate(patient))
    client.post(f"/{TENANT_A}/fhir/Observation/_search", data=search_form(patient))
    key = tmp_path / "auditor.key.json"
    key.write_text(json.dumps(auditor.key.as_dict(private=True)))
    env = {
        "DHO_DATABASE_URL": settings.database_url,
        "DHO_REDIS_URL": settings.redis_url or "",
        "DHO_SIGNING_KEYS_PATH": str(settings.signing_keys_path),
        "DHO_AUDIT_KEY_PATH": str(settings.audit_key_path),
    }
    with live_server(env, workers=1) as base:
        profile = tmp_path / "auditor.json"
        profile.write_text(
            json.dumps(
                {
                    "issuer": base,
                    "api": base,
                    "client_id": auditor.client_id,
                    "key": key.name,
                    "organisation": TENANT_A,
                }
            )
        )
        export = tmp_path / "export.ndjson"
        runner = CliRunner()
        fetched = runner.invoke(
            main, ["audit", "fetch", "--profile", str(profile), "--tenant", TENANT_A, "-o", str(export)]
        )
        assert fetched.exit_code == 0, fetched.output
    public = tmp_path / "audit.pub"
    assert services.audit_log.signer is not None
    public.write_bytes(services.audit_log.signer.public_key_pem())
    verified = runner.invoke(main, ["audit", "verify", str(export), "--public-key", str(public), "--json"])
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.output)
    assert report["ok"] is True
    assert report["entries"] >= 2  # the create and the search (one event each, the decision inside)
    export.write_bytes(export.read_bytes().replace(b'"outcome":"0"', b'"outcome":"8"', 1))
    tampered = runner.invoke(main, ["audit", "verify", str(export), "--public-key", str(public), "--json"])
    assert tampered.exit_code == 1
