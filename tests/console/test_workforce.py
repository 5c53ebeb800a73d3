"""The health-worker and organisation-flow pages count in SQL (sharing_api/console/workforce.py,
flows.py); what they show must be what
the reference computes from every parsed event of the period (``actors.workers`` and
``actors.worker_profile`` over ``rules.views_in``, the AuditEvent API's search). A seeded month
(self-selected care relations, refusals, emergency access, planted look-ups) across the spring DST
change, plus health workers whose first event names nobody. On SQLite and PostgreSQL."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import date, datetime, time, timedelta

import pytest
from flask.testing import FlaskClient
from markupsafe import escape

from sharing_api.console import actors, flows, rules, workforce
from sharing_api.console import views as console_views
from sharing_api.console.aggregates import OSLO
from sharing_api.console.seeding import CONSUMERS, NO_AGREEMENT, seed_month
from sharing_api.services import Services
from tests.conftest import TENANT_A, TENANT_B
from tests.console.conftest import access, login, record, utc

END = utc(2025, 4, 3)
START = END - timedelta(days=12)


def _seed(services: Services) -> None:
    seed_month(services.audit_log, TENANT_A, 10, seed=3, end=END - timedelta(days=1))
    seed_month(services.audit_log, TENANT_B, 2, seed=4, end=END - timedelta(days=1))
    unnamed = [
        access(TENANT_A, utc(2025, 3, 30, 1, 30), "01816900001", n=900, hpr="9777001", name=""),
        access(TENANT_A, utc(2025, 3, 30, 2, 30), "01816900002", n=901, hpr="9777001", name="Sent Navn"),
        access(TENANT_A, utc(2025, 3, 30, 3, 0), "01816900003", n=902, hpr="9777002", name="", permit=False),
    ]
    record(services, unnamed)


def test_the_worker_list_is_what_every_parsed_event_gives(services: Services) -> None:
    _seed(services)
    views = list(rules.views_in(services, TENANT_A, START, END))
    expected = actors.workers(views)
    assert len(expected) > 5
    assert any(r.self_selected for r in expected)
    assert any(r.refused for r in expected)
    assert workforce.rows(services, TENANT_A, START, END) == expected
    names = {r.hpr: r.name for r in expected}
    assert names["9777001"] == "Sent Navn"
    assert names["9777002"] == "9777002"


def test_every_profile_is_what_every_parsed_event_gives(services: Services) -> None:
    _seed(services)
    views = list(rules.views_in(services, TENANT_A, START, END))
    hprs = sorted({v.agent_hpr for v in views if v.agent_hpr})
    for hpr in hprs:
        assert workforce.profile(services, TENANT_A, START, END, hpr) == actors.worker_profile(views, hpr), (
            hpr
        )
    assert workforce.profile(services, TENANT_A, START, END, "9999999") is None


def test_the_pages_show_the_reference_numbers(console: FlaskClient, services: Services) -> None:
    _seed(services)
    login(console)
    last = date(2025, 4, 2)
    html = console.get(f"/console/workers?to={last}").data.decode()
    shown = re.findall(
        r"<tr><td><a [^>]*>[^<]*</a></td><td>(\d+)</td><td>[^<]*</td>((?:<td>\d+</td>){5})", html
    )
    assert shown
    page_start = datetime.combine(last - timedelta(days=29), time(), OSLO)
    page_end = datetime.combine(last + timedelta(days=1), time(), OSLO)
    views = list(rules.views_in(services, TENANT_A, page_start, page_end))
    expected = {r.hpr: r for r in actors.workers(views)}
    for hpr, cells in shown:
        numbers = [int(n) for n in re.findall(r"\d+", cells)]
        r = expected[hpr]
        assert numbers == [r.accesses, r.max_patients_per_day, r.refused, r.emergency, r.self_selected]
    assert {hpr for hpr, _ in shown} == set(expected)


def test_the_flows_are_what_every_parsed_event_gives(console: FlaskClient, services: Services) -> None:
    """Agreements that start and end inside the period, reads with two categories, with a category the
    agreement does not hold, and with a category whose text looks like the end of the details array
    (read one by one): grouped in SQL, the flows are the reference's, on the page too."""
    _seed(services)
    hospital, bergen = CONSUMERS[0][0], CONSUMERS[1][0]
    services.policy.add_agreement(
        controller=TENANT_A,
        consumer=hospital,
        categories=frozenset({"vital-signs", "survey"}),
        purposes=frozenset({"TREAT", "COC"}),  # type: ignore[arg-type]
        valid_from=utc(2025, 3, 25),
        valid_to=utc(2025, 3, 29, 12),
    )
    services.policy.add_agreement(
        controller=TENANT_A,
        consumer=bergen,
        categories=frozenset({"vital-signs"}),
        purposes=frozenset({"TREAT"}),  # type: ignore[arg-type]
        valid_from=utc(2025, 3, 20),
    )
    odd = 'x"}],"name":"data-categories"}'
    extra = []
    for i, (org, cats) in enumerate(
        [
            (hospital, ("vital-signs", "survey")),
            (hospital, ("survey",)),
            (bergen, ("vital-signs", "survey")),
            (bergen, (odd,)),
            (NO_AGREEMENT[0], ("vital-signs", odd)),
        ]
    ):
        for day in (24, 27, 30):
            facts = access(TENANT_A, utc(2025, 3, day, 10, i), f"0181690{i:04d}", n=700 + i, org=org)
            extra.append(replace(facts, data_categories=cats))
    record(services, extra)
    agreements = rules.covers(services, TENANT_A)
    views = list(rules.views_in(services, TENANT_A, START, END))
    expected = actors.flows(views, TENANT_A, agreements)
    assert any(f.outside for f in expected)
    assert any(f.accesses > f.outside for f in expected)
    assert any(f.category == odd for f in expected)
    assert flows.flows(services, TENANT_A, START, END, agreements) == expected
    login(console)
    html = console.get("/console/organisations?to=2025-04-02").data.decode()
    page_start = datetime.combine(date(2025, 4, 2) - timedelta(days=29), time(), OSLO)
    page = actors.flows(list(rules.views_in(services, TENANT_A, page_start, END)), TENANT_A, agreements)
    for f in page:
        assert f"{f.accesses}" in html
        assert escape(f.category) in html


@pytest.mark.long  # every page runs the rules over the seeded month: seconds per page, scheduled first
def test_the_review_queue_pages_through_every_rule_hit(
    console: FlaskClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review page shows its hits a page at a time: every hit of ``rules.run`` on exactly one page,
    in its order, and the totals of the whole run on each."""
    _seed(services)
    monkeypatch.setattr(console_views, "REVIEW_PAGE", 7)
    last = date(2025, 4, 2)
    start = datetime.combine(last - timedelta(days=29), time(), OSLO)
    end = datetime.combine(last + timedelta(days=1), time(), OSLO)
    expected = [f.key for f in rules.run(services, TENANT_A, start, end).flags]
    assert len(expected) > 7
    login(console)
    shown: list[str] = []
    for page in range(1, -(-len(expected) // 7) + 1):
        html = console.get(f"/console/review?to={last}&page={page}").data.decode()
        assert f"av {len(expected)}</caption>" in html
        shown += re.findall(r'<tr data-flag="([^"]+)">', html)
    assert shown == expected
    assert console.get(f"/console/review?to={last}&page=x").status_code == 400
