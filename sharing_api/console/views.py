"""The auditor console's pages (issue 10, console.md §5): server-rendered, no script at all.

Every page needs a console session (``sessions``) and shows only the session's tenant: the tenant
comes from the auditor's account, never from the URL or a form, so a URL naming another tenant's entry
is a 404. Every POST carries the session's CSRF token (``csrf`` form field), checked in constant time;
a missing or wrong token is a 400 and nothing is done. A patient is searched only by POST, so a
national identity number never lands in a URL, the history or a Referer. Every response carries a
strict Content-Security-Policy (no script, no inline style, no framing), ``Cache-Control: no-store``
(so the back button after logout shows nothing), ``Referrer-Policy: no-referrer`` and
``X-Frame-Options: DENY``.

Reads go through the API's own code: the search filters are ``routes.audit_api.search_filters`` and the
rows come from ``AuditLog.search``; the log-control report is ``AuditLog.report`` (as
``dho-share audit report``); "verify now" is ``audit.verify``.
"""

from __future__ import annotations

import csv
import hmac
import io
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from functools import wraps
from typing import Any, TypeVar, cast

import orjson
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)

from sharing_api.audit.actions import PURPOSES_OF_USE, AuditAction, Outcome
from sharing_api.audit.events import AuditFacts
from sharing_api.audit.log import Entry
from sharing_api.console import actors, aggregates, cases, charts, flows, integrity, rules, workforce
from sharing_api.console.accounts import Auditor, AuditorAccounts
from sharing_api.console.disclosure import DISCLOSED_ACTIONS, episodes
from sharing_api.console.lockout import Lock, LoginGuard, LoginGuardUnavailable
from sharing_api.console.reading import EntryView, view_of
from sharing_api.console.sessions import ConsoleSession, ConsoleSessions
from sharing_api.errors import InvalidSearch
from sharing_api.routes.audit_api import search_filters
from sharing_api.services import Services

bp = Blueprint(
    "console", __name__, url_prefix="/console", template_folder="templates", static_folder="static"
)

COOKIE = "dho_console"
PAGE = 50
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
F = TypeVar("F", bound=Callable[..., Any])


def services() -> Services:
    svc: Services = current_app.extensions["dho"]
    return svc


def sessions() -> ConsoleSessions:
    store: ConsoleSessions = current_app.extensions["dho_console_sessions"]
    return store


def session() -> ConsoleSession:
    found: ConsoleSession = g.console_session
    return found


def login_required(view: F) -> F:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        found = sessions().resume(request.cookies.get(COOKIE, ""))
        if found is None:
            return redirect(url_for("console.login"))
        g.console_session = found
        if request.method == "POST" and not hmac.compare_digest(request.form.get("csrf", ""), found.csrf):
            abort(400, "the form's CSRF token is missing or wrong; reload the page")
        return view(*args, **kwargs)

    return cast(F, wrapper)


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    return response


@bp.errorhandler(400)
@bp.errorhandler(404)
@bp.errorhandler(503)
def _error(exc: Any) -> tuple[str, int]:
    code = int(getattr(exc, "code", 400) or 400)
    return render_template("console/error.html", code=code, message=getattr(exc, "description", "")), code


@bp.app_template_filter("oslo")
def _oslo(when: datetime | None) -> str:
    if when is None:
        return ""
    return when.astimezone(aggregates.OSLO).strftime("%d.%m.%Y %H:%M:%S")


@bp.app_template_filter("oslo_time")
def _oslo_time(when: datetime | None) -> str:
    return "" if when is None else when.astimezone(aggregates.OSLO).strftime("%H:%M")


@bp.app_template_filter("oslo_date")
def _oslo_date(when: datetime | None) -> str:
    return "" if when is None else when.astimezone(aggregates.OSLO).strftime("%d.%m.%Y")


@bp.context_processor
def _context() -> dict[str, Any]:
    found = g.get("console_session")
    return {"me": found, "csrf": found.csrf if found else "", "purposes": PURPOSES_OF_USE}


# -- login -------------------------------------------------------------------------------------------


@bp.get("/login")
def login() -> str:
    return render_template("console/login.html", failed=False, locked=None)


def login_guard() -> LoginGuard:
    guard: LoginGuard = current_app.extensions["dho_console_login_guard"]
    return guard


def _record_login(auditor: Auditor, outcome: Outcome, description: str) -> None:
    """Audit a login attempt for a known account in its tenant's log (``console.login``). Attempts for
    a username no account has are in no controller's log (lockout.py says how they are still braked)."""
    facts = AuditFacts(
        action=AuditAction.CONSOLE_LOGIN,
        outcome=outcome,
        recorded=datetime.now(UTC),
        tenant=auditor.tenant,
        client_id=f"console:{auditor.username}",
        organisation=auditor.tenant,
        practitioner_name=auditor.name,
        description=description,
        correlation_id=g.get("correlation_id"),
        source_address=request.remote_addr,
        server=str(services().settings.public_url).rstrip("/"),
    )
    services().auditor.record(facts)


def _locked(lock: Lock) -> tuple[str, int, dict[str, str]]:
    minutes = max(1, -(-lock.retry_after // 60))
    page = render_template("console/login.html", failed=False, locked=lock, minutes=minutes)
    return page, 429, {"Retry-After": str(lock.retry_after)}


@bp.post("/login")
def login_post() -> Any:
    """Log in, unless this account or this address has failed too often in the window (lockout.py):
    then 429 with ``Retry-After``, and the password is not even checked. Every attempt on a known
    account is audited in its tenant's log: accepted, refused, locked."""
    accounts = AuditorAccounts(services().engine)
    username, password = request.form.get("username", ""), request.form.get("password", "")
    address = request.remote_addr or "unknown"
    guard = login_guard()
    try:
        lock = guard.locked(username, address)
        if lock is not None:
            known = accounts.get(username)
            if known is not None:
                _record_login(known, Outcome.MINOR_FAILURE, f"console login refused: {lock.kind} locked")
            return _locked(lock)
        auditor = accounts.authenticate(username, password)
        if auditor is None:
            lock = guard.failed(username, address)
            known = accounts.get(username)
            if known is not None:
                what = "console login refused: wrong password or account disabled"
                if lock is not None:
                    what += f"; {lock.kind} locked for {lock.retry_after} s"
                _record_login(known, Outcome.SERIOUS_FAILURE if lock else Outcome.MINOR_FAILURE, what)
            if lock is not None:
                return _locked(lock)
            return render_template("console/login.html", failed=True, locked=None), 401
        guard.succeeded(username, address)
    except LoginGuardUnavailable:
        abort(503, "login is unavailable: the failed-login counters cannot be reached; try again later")
    _record_login(auditor, Outcome.SUCCESS, "console login")
    started = sessions().start(auditor.username, auditor.tenant, auditor.name)
    response = redirect(url_for("console.dashboard"))
    secure = str(services().settings.public_url).startswith("https:")
    response.set_cookie(COOKIE, started.id, httponly=True, samesite="Strict", secure=secure, path="/console")
    return response


@bp.post("/logout")
@login_required
def logout() -> Any:
    sessions().end(session().id)
    response = redirect(url_for("console.login"))
    response.delete_cookie(COOKIE, path="/console")
    return response


# -- dashboard -----------------------------------------------------------------------------------------


def _period(days: int = 30) -> tuple[datetime, datetime]:
    today = datetime.now(aggregates.OSLO).date()
    raw = request.args.get("to", "")
    try:
        last = date.fromisoformat(raw) if raw else today
    except ValueError:
        abort(400, "to: a date as YYYY-MM-DD")
    end = datetime.combine(last + timedelta(days=1), time(), aggregates.OSLO)
    start = datetime.combine(last - timedelta(days=days - 1), time(), aggregates.OSLO)
    return start, end


@bp.get("/")
@login_required
def dashboard() -> str:
    tenant = session().tenant
    start, end = _period()
    services().audit_log.drain(tenant)
    daily, tiles = aggregates.dashboard(services().engine, tenant, start, end)
    status = integrity.badge(services().audit_log, tenant)
    return render_template(
        "console/dashboard.html",
        daily=daily,
        tiles=tiles,
        badge=status,
        chart=charts.daily_bars(daily),
        start=start,
        end=end - timedelta(days=1),
    )


@bp.get("/api/daily")
@login_required
def daily_json() -> Response:
    """The dashboard's aggregates as JSON (the chart and its table are drawn from the same numbers)."""
    tenant = session().tenant
    start, end = _period()
    services().audit_log.drain(tenant)
    daily, tiles = aggregates.dashboard(services().engine, tenant, start, end)
    body = {"tenant": tenant, "days": [d.to_json() for d in daily], "overview": tiles.to_json()}
    return Response(orjson.dumps(body), mimetype="application/json")


# -- event search ------------------------------------------------------------------------------------

_FORM_FIELDS = ("patient", "agent", "organisation", "purpose", "outcome", "action", "from", "to")


def _local_day(raw: str, name: str) -> datetime:
    try:
        return datetime.combine(date.fromisoformat(raw), time(), aggregates.OSLO)
    except ValueError as exc:
        raise InvalidSearch(f"{name}: a date as YYYY-MM-DD", name) from exc


def _api_params(form: dict[str, str]) -> list[tuple[str, str]]:
    """The console's form as the API's search parameters. Dates are local days in Europe/Oslo: ``from``
    inclusive, ``to`` inclusive of the whole day (the API's ``lt`` the next midnight)."""
    params: list[tuple[str, str]] = []
    for name in ("patient", "agent", "organisation", "purpose", "outcome", "action"):
        if form.get(name):
            params.append((name, form[name]))
    if form.get("from"):
        params.append(("date", "ge" + _local_day(form["from"], "from").isoformat()))
    if form.get("to"):
        params.append(("date", "lt" + (_local_day(form["to"], "to") + timedelta(days=1)).isoformat()))
    return params


def _search(form: dict[str, str], count: int, after: int | None) -> tuple[list[Entry], bool]:
    filters, _, _ = search_filters(_api_params(form))
    entries = services().audit_log.search(
        session().tenant, count=count + 1, after_seq=after, newest_first=True, **filters
    )
    return entries[:count], len(entries) > count


def _record(action: AuditAction, description: str, patient: tuple[str, str] | None = None) -> None:
    """Audit what the auditor did in the console, in their tenant's log (like the API's own audit)."""
    me = session()
    facts = AuditFacts(
        action=action,
        outcome=Outcome.SUCCESS,
        recorded=datetime.now(UTC),
        tenant=me.tenant,
        client_id=f"console:{me.username}",
        organisation=me.tenant,
        practitioner_name=me.name,
        patient=patient,
        description=description[:200],
        correlation_id=g.get("correlation_id"),
        server=str(services().settings.public_url).rstrip("/"),
    )
    services().auditor.record(facts)


def _patient_of(value: str) -> tuple[str, str] | None:
    system, _, number = value.partition("|")
    return (system, number) if number and system else None


@bp.get("/events")
@login_required
def events() -> str:
    return render_template("console/events.html", form={}, rows=None, more=False, error=None)


def _form() -> dict[str, str]:
    return {name: request.form.get(name, "").strip() for name in _FORM_FIELDS}


@bp.post("/events")
@login_required
def events_post() -> tuple[str, int] | str:
    form = _form()
    after = request.form.get("after", "")
    try:
        rows, more = _search(form, PAGE, int(after) if after.isdigit() else None)
    except InvalidSearch as exc:
        error = exc.issues[0].diagnostics if exc.issues else str(exc)
        return render_template("console/events.html", form=form, rows=None, more=False, error=error), 400
    _record(AuditAction.AUDIT_SEARCH, "console event search", _patient_of(form["patient"]))
    views = [view_of(e) for e in rows]
    return render_template("console/events.html", form=form, rows=views, more=more, error=None)


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text: a leading ``= + - @`` (or tab/CR) gets a ``'`` before it
    (OWASP "CSV injection")."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA) else text


@bp.post("/events.csv")
@login_required
def events_csv() -> Response:
    form = _form()
    try:
        rows, _ = _search(form, 1000, None)
    except InvalidSearch as exc:
        abort(400, exc.issues[0].diagnostics if exc.issues else str(exc))
    _record(AuditAction.AUDIT_EXPORT, "console CSV export", _patient_of(form["patient"]))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "seq",
            "recorded (Europe/Oslo)",
            "action",
            "outcome",
            "purpose",
            "organisation",
            "organisation name",
            "HPR",
            "health worker",
            "service",
            "categories",
        ]
    )
    for view in (view_of(e) for e in rows):
        writer.writerow(
            csv_cell(c)
            for c in (
                view.seq,
                _oslo(view.recorded),
                view.action,
                view.outcome,
                view.purpose,
                view.organisation,
                view.organisation_name,
                view.agent_hpr,
                view.practitioner_name,
                view.healthcare_service,
                " ".join(view.categories),
            )
        )
    return Response(
        out.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": "attachment; filename=audit-events.csv"},
    )


@bp.get("/events/<int:seq>")
@login_required
def event_detail(seq: int) -> str:
    found = services().audit_log.search(session().tenant, after_seq=seq - 1, count=1)
    if not found or found[0].seq != seq:
        abort(404, "no such entry in your log")
    entry = found[0]
    pretty = orjson.dumps(orjson.loads(entry.event), option=orjson.OPT_INDENT_2).decode()
    return render_template("console/event.html", view=view_of(entry), raw=pretty)


# -- patient disclosure report -----------------------------------------------------------------------


def _patient_entries(patient: str) -> list[EntryView]:
    filters, _, _ = search_filters([("patient", patient)])
    found: list[EntryView] = []
    after = None
    while True:
        page = services().audit_log.search(
            session().tenant, count=1000, after_seq=after, action=sorted(DISCLOSED_ACTIONS), **filters
        )
        found += [view_of(e) for e in page]
        if len(page) < 1000:
            return found
        after = page[-1].seq


@bp.get("/patient")
@login_required
def patient() -> str:
    return render_template("console/patient.html", patient="", report=None)


def _report() -> tuple[str, list[Any]]:
    patient_id = request.form.get("patient", "").strip()
    if not patient_id:
        abort(400, "patient: the patient's identifier (system|value or the value)")
    report = episodes(_patient_entries(patient_id))
    _record(AuditAction.AUDIT_SEARCH, "console disclosure report", _patient_of(patient_id))
    return patient_id, report


@bp.post("/patient")
@login_required
def patient_post() -> str:
    patient_id, report = _report()
    return render_template("console/patient.html", patient=patient_id, report=report)


_STATIC_TYPES = {".css": "text/css", ".svg": "image/svg+xml"}
_PDF_BASE = "https://console.invalid/"


def _static_only(url: str) -> Any:
    """weasyprint's URL fetcher: our own static files, nothing from the network."""
    from weasyprint.urls import URLFetcherResponse

    name = url.removeprefix(_PDF_BASE + "console/static/")
    kind = _STATIC_TYPES.get(name[name.rfind(".") :] if "." in name else "")
    if "/" in name or kind is None or url == name:
        raise ValueError(f"the PDF renderer fetches only the console's own files, not {url!r}")
    with current_app.open_resource(f"console/static/{name}", "rb") as f:
        return URLFetcherResponse(url, body=f.read(), headers={"Content-Type": kind})


def _pdf(html: str, filename: str) -> Response:
    """``html`` as PDF (weasyprint, print stylesheet), as a download."""
    from weasyprint import CSS, HTML

    with current_app.open_resource("console/static/print.css") as f:
        css = f.read()
    pdf = HTML(string=html, base_url=_PDF_BASE, url_fetcher=_static_only).write_pdf(
        stylesheets=[CSS(string=css)]
    )
    return Response(
        pdf, mimetype="application/pdf", headers={"Content-Disposition": f"attachment; filename={filename}"}
    )


@bp.post("/patient.pdf")
@login_required
def patient_pdf() -> Response:
    """The patient's copy as PDF (the print page): no internal ids, no identity number."""
    _, report = _report()
    return _pdf(render_template("console/patient_print.html", report=report, standalone=True), "innsyn.pdf")


# -- integrity ---------------------------------------------------------------------------------------


@bp.get("/integrity")
@login_required
def integrity_page() -> str:
    log = services().audit_log
    tenant = session().tenant
    checkpoints = log.checkpoints(tenant)[-10:]
    return render_template(
        "console/integrity.html",
        badge=integrity.badge(log, tenant),
        head=log.head(tenant),
        latest=checkpoints[-1] if checkpoints else None,
        checkpoints=list(reversed(checkpoints)),
        at=lambda us: datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us),
    )


@bp.post("/integrity/verify")
@login_required
def integrity_verify() -> Any:
    integrity.verify_now(services().audit_log, session().tenant)
    return redirect(url_for("console.integrity_page"), code=303)


# -- health workers and organisation flows ----------------------------------------------------------


@bp.get("/workers")
@login_required
def workers_page() -> str:
    start, end = _period()
    found = workforce.rows(services(), session().tenant, start, end)
    return render_template("console/workers.html", rows=found, start=start, end=end)


@bp.get("/workers/<hpr>")
@login_required
def worker_page(hpr: str) -> str:
    if not hpr.isdigit() or len(hpr) > 16:
        abort(404, "no such health worker in your log")
    start, end = _period()
    profile = workforce.profile(services(), session().tenant, start, end, hpr)
    if profile is None:
        abort(404, "no such health worker in your log in this period")
    return render_template("console/worker.html", p=profile, weekdays=actors.WEEKDAYS, start=start, end=end)


@bp.get("/organisations")
@login_required
def organisations_page() -> str:
    start, end = _period()
    tenant = session().tenant
    found = flows.flows(services(), tenant, start, end, rules.covers(services(), tenant))
    return render_template(
        "console/organisations.html",
        flows=found,
        agreements=rules.covers(services(), tenant),
        start=start,
        end=end,
    )


# -- review queue and log-control report ---------------------------------------------------------------


REVIEW_PAGE = 100
"""Rule hits shown per page of the review queue (most severe first); the counts cover them all."""


@bp.get("/review")
@login_required
def review() -> str:
    tenant = session().tenant
    start, end = _period()
    result = rules.run(services(), tenant, start, end, explain_all=False)
    triage = rules.triage_states(services().engine, tenant)
    pages = max(1, -(-len(result.flags) // REVIEW_PAGE))
    try:
        page = min(max(1, int(request.args.get("page", "1"))), pages)
    except ValueError:
        abort(400, "page: a page number")
    shown = result.flags[(page - 1) * REVIEW_PAGE : page * REVIEW_PAGE]
    rules.explain_shown(services(), tenant, shown)
    return render_template(
        "console/review.html",
        result=result,
        flags=shown,
        page=page,
        pages=pages,
        first=(page - 1) * REVIEW_PAGE,
        triage=triage,
        start=start,
        end=end,
        rules=rules.RULES,
    )


@bp.post("/review/triage")
@login_required
def review_triage() -> Any:
    flag = request.form.get("flag", "")
    state = request.form.get("state", "")
    note = request.form.get("note", "").strip()
    if state not in rules.TRIAGE_STATES or not flag or len(flag) > 128:
        abort(400, "state: explained, escalated or open; flag: a rule hit")
    if state == "explained" and not note:
        abort(400, "note: an explanation is required to mark a hit explained")
    rules.set_triage(services().engine, session().tenant, flag, state, note, session().username)
    _record(AuditAction.AUDIT_TRIAGE, f"triage {flag} -> {state}: {note}")
    if state == "escalated":  # "Opprett sak": the hit becomes a case with its events attached
        try:
            seqs = [int(s) for s in request.form.get("seqs", "").split()]
            case_id = cases.open_case(
                services().engine, session().tenant, flag, seqs, note or "sak opprettet", session().username
            )
        except (ValueError, cases.CaseError) as exc:
            abort(400, str(exc) if isinstance(exc, cases.CaseError) else "seqs: event indexes")
        _record(AuditAction.AUDIT_TRIAGE, f"case {case_id} opened from {flag}")
        return redirect(url_for("console.case_page", case_id=case_id), code=303)
    return redirect(url_for("console.review"), code=303)


@bp.get("/cases")
@login_required
def cases_page() -> str:
    found = cases.cases(services().engine, session().tenant)
    return render_template(
        "console/cases.html", cases=found, states=cases.STATES, outcomes=cases.OUTCOMES, at=_at
    )


@bp.get("/cases/<int:case_id>")
@login_required
def case_page(case_id: int) -> str:
    found = cases.case(services().engine, session().tenant, case_id)
    if found is None:
        abort(404, "no such case in your log control")
    return render_template(
        "console/case.html", case=found, states=cases.STATES, outcomes=cases.OUTCOMES, at=_at
    )


@bp.post("/cases/<int:case_id>")
@login_required
def case_change(case_id: int) -> Any:
    state = request.form.get("state", "")
    outcome = request.form.get("outcome") or None
    note = request.form.get("note", "")
    try:
        cases.change(services().engine, session().tenant, case_id, state, outcome, note, session().username)
    except cases.CaseError as exc:
        abort(400, str(exc))
    except LookupError:
        abort(404, "no such case in your log control")
    closed = f" ({outcome})" if outcome and state == "closed" else ""
    _record(AuditAction.AUDIT_TRIAGE, f"case {case_id} -> {state}{closed}: {note}")
    return redirect(url_for("console.case_page", case_id=case_id), code=303)


def _at(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


@bp.get("/report")
@login_required
def report() -> str | Response:
    tenant = session().tenant
    start, end = _period()
    log = services().audit_log
    result = log.report(tenant, start, end, agreements=rules.agreement_periods(services(), tenant))
    status = integrity.badge(log, tenant)
    if request.args.get("format") == "json":
        body = result.to_json()
        body["integrity"] = {"state": status.state, "text": status.text}
        checkpoint = log.latest_checkpoint(tenant)
        body["checkpoint"] = checkpoint.note if checkpoint else None
        return Response(orjson.dumps(body), mimetype="application/json")
    html = render_template("console/report.html", result=result, badge=status, start=start, end=end)
    if request.args.get("format") == "pdf":
        return _pdf(html, "loggkontroll.pdf")
    return html
