"""The auditor console through Flask's test client, on SQLite and PostgreSQL (issue 10): login and
sessions, CSRF, tenant isolation, escaping, the chart's table against the JSON aggregates and the log
itself, Europe/Oslo across DST, the disclosure report's rules, integrity, CSV export and triage."""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime, timedelta
from html import unescape

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from sharing_api.audit.actions import AuditAction
from sharing_api.console.accounts import AuditorAccounts
from sharing_api.console.aggregates import OSLO
from sharing_api.console.rules import agreement_periods
from sharing_api.console.views import CSP
from sharing_api.services import Services
from sharing_api.store.schema import audit_entries
from tests.api_client import HOSPITAL
from tests.audit.factories import tampering
from tests.conftest import TENANT_A, TENANT_B
from tests.console.conftest import AUDITOR_A, AUDITOR_B, FNR, PASSWORD, access, login, record, utc

PAGES = (
    "/console/",
    "/console/events",
    "/console/patient",
    "/console/integrity",
    "/console/review",
    "/console/report",
    "/console/workers",
    "/console/organisations",
    "/console/cases",
)


def _count(services: Services, tenant: str, action: AuditAction) -> int:
    services.audit_log.drain()
    with services.engine.connect() as conn:
        rows = conn.execute(
            select(audit_entries.c.id).where(
                audit_entries.c.tenant == tenant, audit_entries.c.action == action.value
            )
        ).all()
    return len(rows)


def _every_console_route(console: FlaskClient) -> list[tuple[str, str]]:
    """Every (method, path) the console serves, from the app's own route map, with sample arguments."""
    samples = {"seq": "1", "hpr": "9144900", "case_id": "1"}
    routes = []
    for rule in console.application.url_map.iter_rules():
        if not rule.rule.startswith("/console/") or rule.endpoint.endswith("static"):
            continue
        path = rule.rule
        for name in rule.arguments:
            path = re.sub(rf"<(?:[a-z]+:)?{name}>", samples[name], path)
        routes += [(m, path) for m in sorted(rule.methods or ()) if m not in ("HEAD", "OPTIONS")]
    return routes


def test_pages_need_a_login_and_a_wrong_password_gets_none(console: FlaskClient) -> None:
    for page in PAGES:
        response = console.get(page)
        assert response.status_code == 302
        assert response.headers["Location"].endswith("/console/login")
    for method, path in _every_console_route(console):
        if path == "/console/login":
            continue
        response = console.open(path, method=method)
        # without a session: sent to the login page, or (a POST) refused before anything is done
        assert response.status_code in (302, 400, 403), (method, path, response.status_code)
        if response.status_code == 302:
            assert response.headers["Location"].endswith("/console/login"), (method, path)
    bad = console.post("/console/login", data={"username": AUDITOR_A, "password": "wrong password!"})
    assert bad.status_code == 401
    assert console.get("/console/").status_code == 302


def test_login_logout_and_the_page_is_gone_after_logout(console: FlaskClient) -> None:
    csrf = login(console)
    page = console.get("/console/")
    assert page.status_code == 200
    assert "Rita Revisor" in page.data.decode()
    assert page.headers["Cache-Control"] == "no-store"
    assert console.post("/console/logout", data={"csrf": csrf}).status_code == 302
    assert console.get("/console/").status_code == 302


def test_a_disabled_auditor_cannot_log_in(console: FlaskClient, auditors: AuditorAccounts) -> None:
    assert auditors.set_enabled(AUDITOR_A, False)
    response = console.post("/console/login", data={"username": AUDITOR_A, "password": PASSWORD})
    assert response.status_code == 401


def test_the_session_ends_after_the_idle_timeout(app: Flask, console: FlaskClient) -> None:
    store = app.extensions["dho_console_sessions"]
    now = [1_000_000.0]
    store.clock = lambda: now[0]
    login(console)
    now[0] += store.timeout - 1
    assert console.get("/console/").status_code == 200  # activity restarts the idle timer
    now[0] += store.timeout - 1
    assert console.get("/console/").status_code == 200
    now[0] += store.timeout + 1
    assert console.get("/console/").status_code == 302


def test_every_post_needs_the_csrf_token_and_nothing_happens_without_it(
    console: FlaskClient, services: Services
) -> None:
    login(console)
    before = _count(services, TENANT_A, AuditAction.AUDIT_SEARCH)
    for path, data in (
        ("/console/events", {"purpose": "TREAT"}),
        ("/console/patient", {"patient": f"{FNR}|01816900001"}),
        ("/console/integrity/verify", {}),
        ("/console/review/triage", {"flag": "R1:1", "state": "escalated"}),
        ("/console/cases/1", {"state": "closed", "outcome": "breach", "note": "x"}),
        ("/console/logout", {}),
    ):
        assert console.post(path, data=data).status_code == 400, path
        assert console.post(path, data={**data, "csrf": "forged"}).status_code == 400, path
    assert _count(services, TENANT_A, AuditAction.AUDIT_SEARCH) == before
    assert console.get("/console/").status_code == 200  # logout without a token did not log out


def test_security_headers_on_every_page(console: FlaskClient) -> None:
    login(console)
    for page in (*PAGES, "/console/login"):
        headers = console.get(page).headers
        assert headers["Content-Security-Policy"] == CSP, page
        assert "script-src" not in CSP
        assert "default-src 'none'" in CSP
        assert "frame-ancestors 'none'" in CSP
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["Cache-Control"] == "no-store"


def test_an_auditor_sees_only_their_own_tenant(console: FlaskClient, services: Services) -> None:
    record(services, [access(TENANT_B, utc(2025, 3, 3, 9), "02816900002", name="Bare I Kommune B", n=1)])
    record(services, [access(TENANT_A, utc(2025, 3, 3, 9), "01816900001", name="Bare I Kommune A", n=2)])
    csrf = login(console, AUDITOR_A)
    found = console.post("/console/events", data={"csrf": csrf}).data.decode()
    assert "Bare I Kommune A" in found
    assert "Bare I Kommune B" not in found
    # Index 0 exists in both logs: the URL reaches A's entry, never B's; an index A lacks is 404.
    assert "Bare I Kommune B" not in console.get("/console/events/0").data.decode()
    assert console.get("/console/events/999").status_code == 404
    report = console.post("/console/patient", data={"csrf": csrf, "patient": f"{FNR}|02816900002"})
    assert "Bare I Kommune B" not in report.data.decode()
    csrf_b = login(console, AUDITOR_B)
    found_b = console.post("/console/events", data={"csrf": csrf_b}).data.decode()
    assert "Bare I Kommune B" in found_b
    assert "Bare I Kommune A" not in found_b


HOSTILE = {
    "name": "<script>alert('name')</script>",
    "org_name": '"><img src=x onerror=alert(1)>',
    "service": "\u202etxt.exe\u200b<b>tjeneste</b>",
    "details": "<iframe src=javascript:alert(2)>",
}


def test_hostile_strings_are_rendered_as_text(console: FlaskClient, services: Services) -> None:
    record(services, [access(TENANT_A, utc(2025, 3, 3, 9), "01816900001", n=3, **HOSTILE)])
    csrf = login(console)
    pages = [
        console.post("/console/events", data={"csrf": csrf}).data.decode(),
        console.get("/console/events/0").data.decode(),
        console.post("/console/patient", data={"csrf": csrf, "patient": f"{FNR}|01816900001"}).data.decode(),
    ]
    for html in pages:
        for raw in ("<script>alert", "<img src=x", "<iframe", "<b>tjeneste"):
            assert raw not in html
    assert "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;" in pages[0]
    assert unescape(pages[2]).count(HOSTILE["name"]) >= 1


def test_the_daily_table_equals_the_json_aggregates_and_the_log(
    console: FlaskClient, services: Services
) -> None:
    facts = [
        access(
            TENANT_A,
            utc(2025, 3, 10, 8) + timedelta(hours=7 * i),
            f"0181690{i:04d}",
            n=i,
            permit=i % 5 != 0,
            purpose="ETREAT" if i % 7 == 0 else "TREAT",
        )
        for i in range(40)
    ]
    record(services, facts)
    login(console)
    html = console.get("/console/?to=2025-03-31").data.decode()
    table = {
        day: tuple(int(x) for x in re.sub(r"<[^>]+>", " ", cells).split())
        for day, cells in re.findall(r'<tr data-day="([\d-]+)">.*?</th>(.*?)</tr>', html, re.S)
    }
    body = console.get("/console/api/daily?to=2025-03-31").get_json()
    assert table == {d["day"]: (d["permitted"], d["refused"], d["emergency"]) for d in body["days"]}
    # ... and both equal what the log holds, counted here from the stored entries themselves.
    expected: dict[str, list[int]] = {}
    for entry in services.audit_log.entries(TENANT_A):
        day = entry.recorded_at.astimezone(OSLO).date().isoformat()
        if entry.action == AuditAction.ACCESS_DECISION.value or not "2025-03-02" <= day <= "2025-03-31":
            continue  # (the auditor's own login is in the log too, today: outside the period shown)
        counts = expected.setdefault(day, [0, 0, 0])
        counts[0 if entry.outcome == "0" else 1] += 1
        counts[2] += entry.purpose in ("ETREAT", "BTG")
    assert {d: tuple(c) for d, c in expected.items()} == {d: c for d, c in table.items() if any(c)}
    assert body["overview"]["requests"] == sum(sum(c[:2]) for c in expected.values())


def test_times_are_shown_in_europe_oslo_across_both_dst_changes(
    console: FlaskClient, services: Services
) -> None:
    moments = [
        utc(2025, 3, 30, 0, 30),
        utc(2025, 3, 30, 1, 30),
        utc(2025, 10, 26, 0, 30),
        utc(2025, 10, 26, 1, 30),
    ]
    record(services, [access(TENANT_A, m, "01816900001", n=i) for i, m in enumerate(moments)])
    csrf = login(console)
    html = console.post(
        "/console/events",
        data={"csrf": csrf, "from": "2025-03-30", "to": "2025-10-26", "action": "observation.search"},
    ).data.decode()
    shown = re.findall(r'<td class="when">([^<]+)</td>', html)
    # 01:30 CET, then 03:30 CEST (02:xx does not exist on 30 March); 02:30 CEST, then 02:30 CET on 26 October.
    assert sorted(shown) == sorted(
        ["30.03.2025 01:30:00", "30.03.2025 03:30:00", "26.10.2025 02:30:00", "26.10.2025 02:30:00"]
    )
    # The dashboard's days are Oslo days: 26 October has 25 hours and both events.
    body = console.get("/console/api/daily?to=2025-10-31").get_json()
    assert next(d for d in body["days"] if d["day"] == "2025-10-26")["permitted"] == 2
    # The date filter is inclusive of the last day in Oslo time: 30 March only finds both March events.
    html = console.post(
        "/console/events",
        data={"csrf": csrf, "from": "2025-03-30", "to": "2025-03-30", "action": "observation.search"},
    ).data.decode()
    assert len(re.findall(r'<td class="when">', html)) == 2


def test_a_patient_is_searched_by_post_and_never_in_a_url(console: FlaskClient, services: Services) -> None:
    record(services, [access(TENANT_A, utc(2025, 3, 3, 9), "01816900001")])
    csrf = login(console)
    response = console.post("/console/events", data={"csrf": csrf, "patient": f"{FNR}|01816900001"})
    assert response.status_code == 200
    html = response.data.decode()
    assert 'action="/console/events"' in html
    assert 'method="post"' in html
    for href in re.findall(r'(?:href|action)="([^"]+)"', html):
        assert "01816900001" not in href
    assert "August September" in html
    assert (
        console.get(f"/console/events?patient={FNR}|01816900001").status_code == 200
    )  # the query is ignored
    assert "August September" not in console.get(f"/console/events?patient={FNR}|01816900001").data.decode()


def test_the_disclosure_report_as_the_patient_sees_it(console: FlaskClient, services: Services) -> None:
    patient = "01816900001"
    record(
        services,
        [
            access(TENANT_A, utc(2025, 3, 3, 9), patient, n=1),
            access(TENANT_A, utc(2025, 3, 3, 9, 20), patient, n=2),  # same episode (within the hour)
            access(TENANT_A, utc(2025, 3, 4, 22), patient, n=3, purpose="ETREAT", name="Akutt Lege"),
            access(
                TENANT_A,
                utc(2025, 3, 5, 10),
                patient,
                n=4,
                permit=False,
                reasons=("blocked-practitioner",),
                name="Sperret Person",
            ),
        ],
    )
    csrf = login(console)
    html = console.post("/console/patient", data={"csrf": csrf, "patient": f"{FNR}|{patient}"}).data.decode()
    copy = html[html.index('id="patient-copy"') :]
    assert patient not in copy
    assert "9144897" not in copy
    assert "August September" in copy
    assert "Oslo universitetssykehus HF" in copy
    assert "Indremedisin" in copy
    assert re.search(r"<strong[^>]*>Akutt behandling \(nødrett\)</strong>", copy)
    assert "<strong>Ikke vist – du har sperret denne personen</strong>" in copy
    assert "2 oppslag" in copy  # the two look-ups within the hour are one episode
    assert len(re.findall(r"<tr>", copy)) == 1 + 3
    pdf = console.post("/console/patient.pdf", data={"csrf": csrf, "patient": f"{FNR}|{patient}"})
    assert pdf.status_code == 200
    assert pdf.data.startswith(b"%PDF-")


def test_tampering_one_row_turns_the_badge_red_with_its_index(
    console: FlaskClient, services: Services
) -> None:
    record(services, [access(TENANT_A, utc(2025, 3, 3, 9, i), f"0181690{i:04d}", n=i) for i in range(6)])
    csrf = login(console)
    console.post("/console/integrity/verify", data={"csrf": csrf})
    assert 'data-state="verified"' in console.get("/console/").data.decode()
    target = 5
    with tampering(services.engine) as conn:
        row = conn.execute(
            select(audit_entries.c.event).where(
                audit_entries.c.tenant == TENANT_A, audit_entries.c.seq == target
            )
        ).one()
        conn.execute(
            update(audit_entries)
            .where(audit_entries.c.tenant == TENANT_A, audit_entries.c.seq == target)
            .values(event=bytes(row.event).replace(b"August", b"Augusta"))
        )
    console.post("/console/integrity/verify", data={"csrf": csrf})
    page = console.get("/console/integrity").data.decode()
    assert 'data-state="failed"' in page
    assert re.search(r'id="bad-index">(\d+)<', page).group(1) == str(target)
    assert f"ved indeks {target}" in console.get("/console/").data.decode()


def test_csv_export_neutralises_formulas(console: FlaskClient, services: Services) -> None:
    names = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)"]
    record(
        services,
        [
            access(TENANT_A, utc(2025, 3, 3, 9, i), "01816900001", n=i, name=name)
            for i, name in enumerate(names)
        ],
    )
    csrf = login(console)
    response = console.post("/console/events.csv", data={"csrf": csrf, "action": "observation.search"})
    rows = list(csv.DictReader(io.StringIO(response.data.decode())))
    shown = sorted(r["health worker"] for r in rows)
    assert shown == sorted("'" + n for n in names)
    assert _count(services, TENANT_A, AuditAction.AUDIT_EXPORT) == 1


def test_bad_filters_are_refused_naming_the_field(console: FlaskClient) -> None:
    csrf = login(console)
    response = console.post("/console/events", data={"csrf": csrf, "outcome": "7"})
    assert response.status_code == 400
    assert "outcome" in response.data.decode()
    response = console.post("/console/events", data={"csrf": csrf, "from": "30.03.2025"})
    assert response.status_code == 400
    assert "from" in response.data.decode()


def test_triage_is_stored_and_audited(console: FlaskClient, services: Services) -> None:
    record(services, [access(TENANT_A, utc(2025, 3, 3, 9), "01816900001", purpose="ETREAT")])
    csrf = login(console)
    html = console.get("/console/review?to=2025-03-31").data.decode()
    flag = re.search(r'data-flag="(R1:[^"]+)"', html).group(1)
    assert "nødrett" in html
    refused = console.post("/console/review/triage", data={"csrf": csrf, "flag": flag, "state": "explained"})
    assert refused.status_code == 400  # an explanation needs a note
    done = console.post(
        "/console/review/triage",
        data={"csrf": csrf, "flag": flag, "state": "explained", "note": "Akuttinnleggelse"},
    )
    assert done.status_code == 303
    assert "Akuttinnleggelse" in console.get("/console/review?to=2025-03-31").data.decode()
    assert _count(services, TENANT_A, AuditAction.AUDIT_TRIAGE) == 1


def test_the_report_page_has_the_cli_report_content(console: FlaskClient, services: Services) -> None:
    record(
        services,
        [
            access(TENANT_A, utc(2025, 3, 3, 9), "01816900001", purpose="ETREAT"),
            access(TENANT_A, utc(2025, 3, 3, 10), "01816900001", permit=False, reasons=("no-consent",)),
        ],
    )
    login(console)
    body = console.get("/console/report?to=2025-03-31&format=json").get_json()
    assert body["totals"]["emergency"] == 1
    assert body["totals"]["denied"] == 1
    # The 30 Oslo days ending 31 March, as `dho-share audit report --from 2025-03-02 --to 2025-04-01`.
    start, end = datetime(2025, 3, 2, tzinfo=OSLO), datetime(2025, 4, 1, tzinfo=OSLO)
    expected = services.audit_log.report(
        TENANT_A, start, end, agreements=agreement_periods(services, TENANT_A)
    )
    assert {k: v for k, v in body.items() if k not in ("integrity", "checkpoint")} == expected.to_json()
    pdf = console.get("/console/report?to=2025-03-31&format=pdf")
    assert pdf.status_code == 200
    assert pdf.data.startswith(b"%PDF-")


def test_health_worker_view_and_organisation_flows(console: FlaskClient, services: Services) -> None:
    record(
        services,
        [
            access(
                TENANT_A,
                utc(2025, 3, 3, 9, i),
                f"0181690{i:04d}",
                n=i,
                hpr="9000001",
                name="Travel",
                org=HOSPITAL,
            )
            for i in range(7)
        ]
        + [
            access(
                TENANT_A,
                utc(2025, 3, 3, 10),
                "01816900001",
                n=50,
                hpr="9000002",
                name="Kollega",
                org=HOSPITAL,
            )
        ]
        + [
            access(
                TENANT_A, utc(2025, 3, 4, 10), "01816900002", n=51, org="912345678", org_name="Uten Avtale AS"
            )
        ],
    )
    login(console)
    rows = console.get("/console/workers?to=2025-03-31").data.decode()
    assert re.search(r"Travel</a></td><td>9000001</td><td>[^<]*</td><td>7</td><td>7</td>", rows)
    profile = console.get("/console/workers/9000001?to=2025-03-31").data.decode()
    heat = [int(n) for n in re.findall(r'<td class="h\d">(\d+)</td>', profile)]
    assert sum(heat) == 7
    assert "01816900003" not in profile
    assert "********003" in profile
    assert console.get("/console/workers/9999999?to=2025-03-31").status_code == 404
    flows = console.get("/console/organisations?to=2025-03-31").data.decode()
    assert re.search(r'<tr class="outside"><td>Uten Avtale AS</td>.*?1 utenfor avtale', flows, re.S)
    assert not re.search(r'<tr class="outside"><td>Oslo universitetssykehus HF', flows)
