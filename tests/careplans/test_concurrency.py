"""Two organisations editing one plan at once over HTTP (issue 11, "Done when"): real threads against a
granian server (``dho-share serve``) with two workers, on SQLite and on PostgreSQL. Exactly one update
succeeds per version, the other gets 412 naming the current version, and no change is lost: each writer
that lost re-reads and applies its change again, and every change ends up in the plan and in its
history."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from auth.client import DhoClient, attestation
from sharing_api.fhir.identifiers import FNR
from sharing_api.services import Services
from sharing_api.settings import Settings
from tests.api_client import ApiClient
from tests.careplans.helpers import BASE, PLAN_READ, PLAN_WRITE, plan_parties, stored_plan
from tests.factories import fnr
from tests.live_server import live_server

ROUNDS = 8


def _client(client: ApiClient, base: str, party_id: str, patient: str) -> DhoClient:
    party = client.parties[party_id]
    return DhoClient(
        issuer=base,
        client_id=party.client_id,
        client_key=party.key,
        scope=f"{PLAN_READ} {PLAN_WRITE}",
        attestation=attestation(
            legal_entity=party.orgnr,
            point_of_care=party.point_of_care or party.orgnr,
            patient=(FNR, patient),
            hpr_number=party.hpr,
        ),
    )


@pytest.mark.slow
def test_two_organisations_editing_one_plan_concurrently(
    client: ApiClient, services: Services, settings: Settings, tmp_path: Path
) -> None:
    plan_parties(client, services)
    patient = fnr()
    _, plan = stored_plan(client, patient)
    env = {
        "DHO_DATABASE_URL": settings.database_url,
        "DHO_REDIS_URL": settings.redis_url or "",
        "DHO_SIGNING_KEYS_PATH": str(settings.signing_keys_path),
        "DHO_AUDIT_KEY_PATH": str(settings.audit_key_path),
    }
    with live_server(env, workers=2, log=tmp_path / "server.log") as base:
        url = f"{base}{BASE}/CarePlan/{plan['id']}"
        writers = {name: _client(client, base, name, patient) for name in ("hospital-plan", "gp-plan")}
        for http in writers.values():
            http.access_token()
        barrier = threading.Barrier(len(writers))

        def race(name: str) -> list[tuple[int, int, int | None]]:
            """Each round: read, wait for the other, PUT the same version at the same moment."""
            http = writers[name]
            out = []
            for n in range(ROUNDS):
                current = http.request("GET", url).json()
                version = int(current["meta"]["versionId"])
                body = {**current, "note": [*current.get("note", []), {"text": f"race {name} {n}"}]}
                barrier.wait(timeout=60)
                answer = http.request("PUT", url, json=body, headers={"If-Match": f'W/"{version}"'})
                got = int(answer.json()["meta"]["versionId"]) if answer.status_code == 200 else None
                out.append((version, answer.status_code, got))
                barrier.wait(timeout=60)
            return out

        with ThreadPoolExecutor(max_workers=len(writers)) as pool:
            raced = dict(zip(writers, pool.map(race, writers), strict=True))

        def persist(name: str) -> list[int]:
            """Each writer adds its changes, re-reading after every 412, until all are in."""
            http = writers[name]
            versions = []
            for n in range(ROUNDS):
                while True:
                    current = http.request("GET", url).json()
                    version = current["meta"]["versionId"]
                    body = {**current, "note": [*current.get("note", []), {"text": f"{name} {n}"}]}
                    answer = http.request("PUT", url, json=body, headers={"If-Match": f'W/"{version}"'})
                    if answer.status_code == 200:
                        versions.append(int(answer.json()["meta"]["versionId"]))
                        break
                    assert answer.status_code == 412, answer.text
                    assert answer.headers["ETag"] != f'W/"{version}"'
            return versions

        with ThreadPoolExecutor(max_workers=len(writers)) as pool:
            persisted = dict(zip(writers, pool.map(persist, writers), strict=True))
        final = writers["gp-plan"].request("GET", url).json()
        history = writers["gp-plan"].request("GET", f"{url}/_history").json()

    # The race: per round both sent the same version; exactly one got 200, the other 412.
    for n in range(ROUNDS):
        answers = [raced[name][n] for name in writers]
        assert answers[0][0] == answers[1][0]
        assert sorted(status for _, status, _ in answers) == [200, 412]
        (won,) = [got for _, status, got in answers if status == 200]
        assert won == answers[0][0] + 1
    # Nothing lost: every change that succeeded, and every persisted change, is in the final plan.
    winners = [f"race {name} {n}" for name in writers for n, (_, s, _) in enumerate(raced[name]) if s == 200]
    persisted_notes = [f"{name} {n}" for name in writers for n in range(ROUNDS)]
    notes = [note["text"] for note in final["note"]]
    assert sorted(notes) == sorted(winners + persisted_notes)
    # One version per successful update, each stored once, none overwritten.
    successes = ROUNDS + 2 * ROUNDS
    assert int(final["meta"]["versionId"]) == 1 + successes
    versions = [int(e["resource"]["meta"]["versionId"]) for e in history["entry"]]
    assert versions == list(range(1 + successes, 0, -1))
    all_persisted = sorted(v for vs in persisted.values() for v in vs)
    assert len(set(all_persisted)) == len(all_persisted)
