"""Cases (saker, console.md §5.1 page 4): a rule hit opened as a case from the review queue carries its
events, moves through its states with a note each time, closes only with an outcome, is audited at
every step, and is seen only by the tenant's own auditors."""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from sqlalchemy import select

from sharing_api.audit.actions import AuditAction
from sharing_api.console import cases
from sharing_api.services import Services
from sharing_api.store.schema import audit_entries
from tests.conftest import TENANT_A
from tests.console.conftest import AUDITOR_B, access, login, record, utc


def _triage_descriptions(services: Services) -> list[str]:
    services.audit_log.drain(TENANT_A)
    with services.engine.connect() as conn:
        seqs = conn.execute(
            select(audit_entries.c.seq).where(
                audit_entries.c.tenant == TENANT_A, audit_entries.c.action == AuditAction.AUDIT_TRIAGE.value
            )
        ).scalars()
        found = services.audit_log.entries_at(TENANT_A, list(seqs))
    return [e.resource().get("outcomeDesc", "") for e in found]


def test_a_hit_opened_as_a_case_is_followed_to_its_outcome_and_audited(
    console: FlaskClient, services: Services
) -> None:
    record(services, [access(TENANT_A, utc(2025, 3, 3, 9), "01816900001", purpose="ETREAT")])
    csrf = login(console)
    html = console.get("/console/review?to=2025-03-31").data.decode()
    flag = re.search(r'data-flag="(R1:[^"]+)"', html).group(1)  # type: ignore[union-attr]
    seqs = re.search(r'name="seqs" value="([^"]*)"', html).group(1)  # type: ignore[union-attr]
    opened = console.post(
        "/console/review/triage",
        data={"csrf": csrf, "flag": flag, "state": "escalated", "note": "uklart om nødrett", "seqs": seqs},
    )
    assert opened.status_code == 303
    case_path = opened.headers["Location"]
    case_id = int(case_path.rsplit("/", 1)[1])
    page = console.get(case_path).data.decode()
    assert "Åpen" in page
    assert "uklart om nødrett" in page
    assert f'/console/events/{seqs.split()[0]}"' in page  # the hit's event is attached
    # opening the same hit again is the same case
    again = console.post(
        "/console/review/triage", data={"csrf": csrf, "flag": flag, "state": "escalated", "seqs": seqs}
    )
    assert again.headers["Location"] == case_path
    assert f"Sak {case_id}" in console.get("/console/cases").data.decode()

    waiting = console.post(
        case_path, data={"csrf": csrf, "state": "waiting", "note": "spurt konsumenten om forklaring"}
    )
    assert waiting.status_code == 303
    no_outcome = console.post(case_path, data={"csrf": csrf, "state": "closed", "note": "ferdig"})
    assert no_outcome.status_code == 400  # a case closes only with an outcome
    no_note = console.post(case_path, data={"csrf": csrf, "state": "closed", "outcome": "legitimate"})
    assert no_note.status_code == 400
    closed = console.post(
        case_path,
        data={"csrf": csrf, "state": "closed", "outcome": "legitimate", "note": "akuttinnleggelse bekreftet"},
    )
    assert closed.status_code == 303
    stored = cases.case(services.engine, TENANT_A, case_id)
    assert stored is not None
    assert (stored.state, stored.outcome) == ("closed", "legitimate")
    assert [n.state for n in stored.notes] == ["open", "waiting", "closed"]
    assert stored.seqs == tuple(int(s) for s in seqs.split())
    page = console.get(case_path).data.decode()
    assert "Lukket" in page
    assert "Legitimt" in page
    described = _triage_descriptions(services)
    assert any(f"case {case_id} opened from {flag}" in d for d in described)
    assert any(f"case {case_id} -> waiting" in d for d in described)
    assert any(f"case {case_id} -> closed (legitimate)" in d for d in described)


def test_another_tenants_auditor_cannot_see_or_change_a_case(
    console: FlaskClient, services: Services
) -> None:
    case_id = cases.open_case(services.engine, TENANT_A, "R1:7", [7], "sak", "revisor-a")
    csrf = login(console, AUDITOR_B)
    assert console.get(f"/console/cases/{case_id}").status_code == 404
    assert f"Sak {case_id}" not in console.get("/console/cases").data.decode()
    changed = console.post(
        f"/console/cases/{case_id}", data={"csrf": csrf, "state": "closed", "outcome": "breach", "note": "x"}
    )
    assert changed.status_code == 404
    stored = cases.case(services.engine, TENANT_A, case_id)
    assert stored is not None
    assert stored.state == "open"
