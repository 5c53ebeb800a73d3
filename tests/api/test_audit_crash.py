"""Issue #5, "Done when": killing a worker with SIGKILL in the middle of 100 reads and writes leaves no
event missing, no gap in the sequence, and a log that verifies."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from auth.client import DhoClient, attestation
from sharing_api.audit.checkpoints import load_public_key
from sharing_api.audit.verify import verify
from sharing_api.fhir.identifiers import FNR
from sharing_api.services import Services
from sharing_api.settings import Settings
from sharing_api.store import schema
from tests.api_client import HOSPITAL, HOSPITAL_UNIT, HPR, READ, WRITE, ApiClient
from tests.conftest import TENANT_A
from tests.factories import fnr, heart_rate
from tests.live_server import live_server

BASE = f"/{TENANT_A}/fhir"


def _workers(master: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in found.split()]


@pytest.mark.slow
def test_sigkill_of_a_worker_loses_no_event_and_the_log_verifies(
    client: ApiClient, settings: Settings, services: Services, tmp_path: Path
) -> None:
    env = {
        "DHO_DATABASE_URL": settings.database_url,
        "DHO_REDIS_URL": settings.redis_url or "",
        "DHO_SIGNING_KEYS_PATH": str(settings.signing_keys_path),
        "DHO_AUDIT_KEY_PATH": str(settings.audit_key_path),
        "DHO_AUDIT_SEQUENCER_INTERVAL": "0.2",
    }
    patient = fnr()
    publisher = client.parties[f"publisher-{TENANT_A}"]
    hospital = client.parties["hospital"]
    answered: list[tuple[str, int]] = []
    lock = threading.Lock()
    killed: list[int] = []
    with live_server(env, workers=2, log=tmp_path / "server.log") as base:
        master = base.pid
        writer = DhoClient(issuer=base, client_id=publisher.client_id, client_key=publisher.key, scope=WRITE)
        reader = DhoClient(
            issuer=base,
            client_id=hospital.client_id,
            client_key=hospital.key,
            scope=READ,
            attestation=attestation(
                legal_entity=HOSPITAL, point_of_care=HOSPITAL_UNIT, patient=(FNR, patient), hpr_number=HPR
            ),
        )
        writer.access_token()
        reader.access_token()

        def one(i: int) -> None:
            request_id = f"crash-{i}-{uuid.uuid4().hex[:8]}"
            try:
                if i % 2:
                    response = writer.request(
                        "POST",
                        f"{base}{BASE}/Observation",
                        json=heart_rate(patient, identifier=f"k{i}"),
                        headers={"X-Request-ID": request_id},
                    )
                else:
                    response = reader.request(
                        "POST",
                        f"{base}{BASE}/Observation/_search",
                        data={"patient.identifier": f"{FNR}|{patient}"},
                        headers={"X-Request-ID": request_id},
                    )
            except requests.RequestException:
                return  # the killed worker's connection: no answer, so no promise was made
            with lock:
                answered.append((request_id, response.status_code))
            if i == 40:
                victim = _workers(master)[0]
                killed.append(victim)
                os.kill(victim, signal.SIGKILL)

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(one, range(100)))
        assert killed
        assert killed[0] not in _workers(master), "the worker died mid-run (and the server replaced it)"
    ok = [rid for rid, status in answered if status < 300]
    assert len(ok) >= 80, answered
    services.audit_log.drain(TENANT_A)
    services.audit_log.checkpoint(TENANT_A)
    entries = schema.metadata.tables["audit_entries"]
    with services.engine.connect() as conn:
        rows = conn.execute(select(entries.c.seq, entries.c.event).where(entries.c.tenant == TENANT_A)).all()
    seqs = sorted(r.seq for r in rows)
    assert seqs == list(range(len(seqs))), "no gap and no duplicate in the sequence"
    recorded = b"\n".join(r.event for r in rows)
    missing = [rid for rid in ok if rid.encode() not in recorded]
    assert missing == [], "every answered request has its event"
    key = load_public_key(services.audit_log.signer.public_key_pem())  # type: ignore[union-attr]
    report = verify(list(services.audit_log.export(TENANT_A)), key)
    assert report.ok, report
