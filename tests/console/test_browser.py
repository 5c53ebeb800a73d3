"""The auditor console in a real browser: Debian's ``chromium`` driven by Playwright (issue 10,
console.md §5.6). The app runs in this process on a loopback port (so tests can move the session clock
and tamper with a stored row); each backend gets its own server. Screenshots of every page go to
``var/screenshots`` (or ``DHO_SCREENSHOT_DIR``), a build artefact outside the repository.

Prerequisites (``tests.prerequisites.require``: skipped locally when missing, a failure in CI):
``chromium`` on the PATH (apt ``chromium chromium-driver``, installed by ``.ci/run``), the ``playwright``
package (dev extras) and ``node_modules/axe-core/axe.min.js`` (``npm ci``, run by ``make test``).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from pydantic import AnyHttpUrl
from sqlalchemy import select, update
from werkzeug.serving import WSGIRequestHandler, make_server

from consent.model import PurposeOfUse
from sharing_api.app import create_app
from sharing_api.console.accounts import AuditorAccounts
from sharing_api.services import Services
from sharing_api.settings import Settings
from sharing_api.store.schema import audit_entries
from tests.api_client import HOSPITAL
from tests.audit.factories import tampering
from tests.conftest import TENANT_A, TENANT_B
from tests.console.conftest import AUDITOR_A, AUDITOR_B, FNR, PASSWORD, access, record, utc
from tests.live_server import free_port
from tests.prerequisites import require

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
SHOTS = Path(os.environ.get("DHO_SCREENSHOT_DIR", ROOT / "var" / "screenshots"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HOSTILE_NAME = "<script>alert('xss')</script>"
HOSTILE_ORG = '"><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = shutil.which("chromium")
    require(executable, "chromium is not installed (apt-get install chromium chromium-driver; .ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "the playwright package is missing (pip install -e '.[dev]')")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


class _Quiet(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:  # the test output stays readable
        return None


def _read_whole(app: Flask) -> Any:
    """``app`` with every answer read (and its iterator closed) before Werkzeug's development server
    writes it: when the browser drops a connection mid-answer (an aborted favicon fetch), that server's
    clean-up reads the dead socket, fails, and never closes the iterator, leaving a static file open
    (a ResourceWarning, an error under our warning filter). The app streams only static files and
    exports; the pages under test do not depend on it."""

    def whole(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        answer = app(environ, start_response)
        try:
            return [b"".join(answer)]
        finally:
            close = getattr(answer, "close", None)
            if close is not None:
                close()

    return whole


class Live:
    def __init__(self, app: Flask, base: str):
        self.app = app
        self.base = base
        self.services: Services = app.extensions["dho"]


@pytest.fixture
def live(settings: Settings) -> Iterator[Live]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = create_app(settings.model_copy(update={"public_url": AnyHttpUrl(base)}))
    svc: Services = app.extensions["dho"]
    for tenant, name in ((TENANT_A, "Kommune A"), (TENANT_B, "Kommune B")):
        svc.tenants.add(tenant, name)
        svc.policy.add_agreement(
            controller=tenant,
            consumer=HOSPITAL,
            categories=frozenset({"vital-signs"}),
            purposes=frozenset(PurposeOfUse),
            valid_from=utc(2020, 1, 1),
        )
    accounts = AuditorAccounts(svc.engine)
    accounts.add(AUDITOR_A, TENANT_A, "Rita Revisor", PASSWORD)
    accounts.add(AUDITOR_B, TENANT_B, "Bjørn Revisor", PASSWORD)
    server = make_server("127.0.0.1", port, _read_whole(app), threaded=True, request_handler=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Live(app, base)
    finally:
        server.shutdown()
        thread.join()
        svc.engine.dispose()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(locale="nb-NO", timezone_id="Europe/Oslo")
    opened = context.new_page()
    yield opened
    context.close()


def _login(page: Any, live: Live, username: str = AUDITOR_A) -> None:
    page.goto(f"{live.base}/console/login")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live.base}/console/")


def _shot(page: Any, name: str, request: pytest.FixtureRequest) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    backend = (
        request.node.callspec.params.get("database_url", "db") if hasattr(request.node, "callspec") else ""
    )
    page.screenshot(
        path=str(SHOTS / f"{name}-{'pg' if 'postgres' in str(backend) else 'sqlite'}.png"), full_page=True
    )


def test_login_logout_and_back_shows_nothing(page: Any, live: Live) -> None:
    record(live.services, [access(TENANT_A, utc(2025, 3, 3, 9), "01816900001", name="Synlig Lege")])
    response = page.goto(f"{live.base}/console/login")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    _login(page, live)
    page.click("text=Hendelser")
    page.click("form.filters button[type=submit]")
    # a GET page with the health worker's name on it (the newest row is the auditor's own login)
    page.locator("#events-table tr", has_text="Synlig Lege").locator("a").first.click()
    assert "Synlig Lege" in page.content()
    page.click("text=Logg ut")
    page.wait_for_url(f"{live.base}/console/login")
    page.go_back()
    assert "Synlig Lege" not in page.content()
    assert page.locator("h1").inner_text() == "Logg inn"


def test_the_session_times_out_in_the_browser(page: Any, live: Live) -> None:
    store = live.app.extensions["dho_console_sessions"]
    now = [5_000_000.0]
    store.clock = lambda: now[0]
    _login(page, live)
    now[0] += store.timeout + 1
    page.reload()
    assert page.url == f"{live.base}/console/login"


def test_another_tenants_entry_is_out_of_reach(page: Any, live: Live) -> None:
    record(live.services, [access(TENANT_A, utc(2025, 3, 3, 9), "01816900001")])
    record(
        live.services,
        [access(TENANT_B, utc(2025, 3, 3, 9, i), "02816900002", name="Kun B") for i in range(5)],
    )
    _login(page, live, AUDITOR_A)
    response = page.goto(f"{live.base}/console/events/8")  # exists in B's log only
    assert response.status == 404
    assert "Kun B" not in page.content()


def test_hostile_strings_render_as_text_and_no_script_runs(
    page: Any, live: Live, request: pytest.FixtureRequest
) -> None:
    record(
        live.services,
        [access(TENANT_A, utc(2025, 3, 3, 9), "01816900001", name=HOSTILE_NAME, org_name=HOSTILE_ORG)],
    )
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    _login(page, live)
    page.click("text=Hendelser")
    page.click("form.filters button[type=submit]")
    assert HOSTILE_NAME in page.locator("#events-table").inner_text()
    page.locator("#events-table tr", has_text=HOSTILE_NAME).locator("a").first.click()
    assert HOSTILE_ORG in page.locator("main").inner_text()
    page.click("text=Pasient")
    page.fill("#p-patient", f"{FNR}|01816900001")
    page.click("form.filters button[type=submit] >> nth=0")
    assert HOSTILE_NAME in page.locator("#patient-copy").inner_text()
    assert page.locator("img").count() == 0
    assert page.locator("script").count() == 0
    assert dialogs == []


def test_the_patient_number_never_reaches_a_url_or_referer(page: Any, live: Live) -> None:
    fnr = "01816900001"
    record(live.services, [access(TENANT_A, utc(2025, 3, 3, 9), fnr)])
    seen: list[str] = []
    page.on("request", lambda r: seen.extend([r.url, r.headers.get("referer", "")]))
    _login(page, live)
    page.click("text=Hendelser")
    page.fill("#f-patient", f"{FNR}|{fnr}")
    page.click("form.filters button[type=submit]")
    page.click("#events-table a >> nth=0")
    page.click("text=Pasient")
    page.fill("#p-patient", f"{FNR}|{fnr}")
    page.click("form.filters button[type=submit] >> nth=0")
    assert seen
    assert not [u for u in seen if fnr in u]
    assert fnr not in page.url


def test_tampering_turns_the_badge_red_with_the_index(
    page: Any, live: Live, request: pytest.FixtureRequest
) -> None:
    record(live.services, [access(TENANT_A, utc(2025, 3, 3, 9, i), f"0181690{i:04d}", n=i) for i in range(5)])
    _login(page, live)
    page.click("text=Integritet")
    page.click("#verify-now")
    assert page.locator("#integrity-badge").get_attribute("data-state") == "verified"
    target = 3
    with tampering(live.services.engine) as conn:
        where = (audit_entries.c.tenant == TENANT_A, audit_entries.c.seq == target)
        event = conn.execute(select(audit_entries.c.event).where(*where)).scalar_one()
        conn.execute(
            update(audit_entries).where(*where).values(event=bytes(event).replace(b"August", b"Augustus"))
        )
    page.click("#verify-now")
    badge = page.locator("#integrity-badge")
    assert badge.get_attribute("data-state") == "failed"
    assert f"indeks {target}" in badge.inner_text()
    assert page.locator("#bad-index").inner_text() == str(target)
    _shot(page, "integrity-failed", request)
    page.click("text=Oversikt")
    assert f"indeks {target}" in page.locator("#integrity-badge").inner_text()


def test_every_page_passes_axe_and_the_chart_matches_its_table(
    browser: Any, live: Live, request: pytest.FixtureRequest
) -> None:
    require(AXE.is_file(), f"axe-core is missing at {AXE} (npm ci; make test runs it)")
    record(
        live.services,
        [
            access(
                TENANT_A,
                utc(2025, 3, 3 + i % 20, 9),
                f"0181690{i:04d}",
                n=i,
                permit=i % 4 != 0,
                purpose="ETREAT" if i % 9 == 0 else "TREAT",
            )
            for i in range(60)
        ],
    )
    context = browser.new_context(bypass_csp=True, locale="nb-NO")  # only so axe can be injected
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        _login(page, live)
        visits = [
            ("dashboard", f"{live.base}/console/?to=2025-03-31", None),
            ("events", f"{live.base}/console/events", "form.filters button[type=submit]"),
            ("patient", f"{live.base}/console/patient", None),
            ("integrity", f"{live.base}/console/integrity", "#verify-now"),
            ("review", f"{live.base}/console/review?to=2025-03-31", None),
            ("case", f"{live.base}/console/review?to=2025-03-31", "#flags button[value=escalated] >> nth=0"),
            ("cases", f"{live.base}/console/cases", None),
            ("report", f"{live.base}/console/report?to=2025-03-31", None),
            ("workers", f"{live.base}/console/workers?to=2025-03-31", None),
            ("worker", f"{live.base}/console/workers/9144897?to=2025-03-31", None),
            ("organisations", f"{live.base}/console/organisations?to=2025-03-31", None),
        ]
        for name, url, click in visits:
            page.goto(url)
            if name == "patient":
                page.fill("#p-patient", f"{FNR}|01816900000")
                page.click("form.filters button[type=submit] >> nth=0")
            if click:
                page.click(click)
            if name == "case":  # "Opprett sak" opened the hit as a case
                page.wait_for_url("**/console/cases/*")
            page.add_script_tag(path=str(AXE))
            result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
            serious = [
                (v["id"], v["impact"]) for v in result["violations"] if v["impact"] in ("serious", "critical")
            ]
            assert serious == [], f"{name}: {serious}"
            _shot(page, name, request)
        page.goto(f"{live.base}/console/?to=2025-03-31")
        days = page.request.get(f"{live.base}/console/api/daily?to=2025-03-31").json()["days"]
        rows = page.locator("#daily-table tbody tr")
        assert rows.count() == len(days)
        for i, day in enumerate(days):
            cells = rows.nth(i).locator("td").all_inner_texts()
            assert [int(c) for c in cells] == [day["permitted"], day["refused"], day["emergency"]]
        assert page.locator("svg.chart rect.permitted").count() == len(days)
        assert errors == []
    finally:
        context.close()
