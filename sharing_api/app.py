"""The composition root: ``create_app(settings)`` builds every service and the Flask app around them."""

from __future__ import annotations

import logging
import re
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import redis
from flask import Flask, Request, Response, current_app, g, request
from flask.sessions import NullSession, SessionInterface
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException, NotFound

from auth.external import IssuerDirectory, IssuerKeys, TrustedIssuer
from auth.ratelimit import InMemoryRateLimiter, RateLimiter, RedisRateLimiter
from auth.replay import InMemoryReplayCache, NonceSource, ReplayCache
from auth.replaystate import CachedRevocationList, EpochReplayCache, RedisState
from auth.resource import ResourceGuard
from auth.revocation import InMemoryRevocationList, RevocationList
from auth.server import RegisteredClient, TokenService
from auth.tokens import HELSEID_TOKEN_ALGS, TokenPolicy
from sharing_api import redis_connection
from sharing_api.access import AccessPolicy
from sharing_api.audit import sequencer
from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.checkpoints import AuditSigner
from sharing_api.audit.log import AuditLog
from sharing_api.audit.pseudonym import PidHasher, load_or_create_secret
from sharing_api.auditing import Auditor, audit_facts
from sharing_api.body_limit import BodyLimit
from sharing_api.careplans.thresholds import breaches
from sharing_api.console import install_console
from sharing_api.console.persons import FileRegister, PersonRegister, RegisterError
from sharing_api.cursors import CursorKeys, LocalCursorKeys, PagingCursors, RedisCursorKeys
from sharing_api.errors import AccessRefused, FhirError, Issue, ServiceUnavailable, operation_outcome
from sharing_api.forwarded import TrustedProxies
from sharing_api.keyfiles import KeysetFile, derive_secret
from sharing_api.metrics import CONTENT_TYPE, Metrics, authorised
from sharing_api.publishing import Publisher
from sharing_api.request_log import RequestStart, log_request, route_of, tenant_of
from sharing_api.response_headers import SECURITY_HEADERS as SECURITY_HEADERS  # re-exported (tests)
from sharing_api.response_headers import ResponseHeaders, request_start
from sharing_api.routes.common import fhir_response, json_response, request_info
from sharing_api.searching import Searcher
from sharing_api.services import Services
from sharing_api.sessions import LocalSessions, RedisSessions, SearchSessions
from sharing_api.settings import Settings
from sharing_api.store.careplans import PlanStore
from sharing_api.store.clients import CLIENT_RECORD_MAX_AGE, ClientRegistry
from sharing_api.store.engine import is_current, make_engine
from sharing_api.store.observations import ObservationStore
from sharing_api.store.policy import PolicyStore
from sharing_api.store.revocations import RevocationLedger, deployment_name
from sharing_api.store.tenants import TenantDirectory
from sharing_api.subscriptions.delivery import Backoff, DeliveryWorker, ResourceLoader, Sender
from sharing_api.subscriptions.egress import EgressPolicy
from sharing_api.subscriptions.service import Notifications
from sharing_api.subscriptions.store import SubscriptionStore
from sharing_api.whole_response import WholeResponse

log = logging.getLogger("dho_share")
#: ``Retry-After`` seconds when the database cannot be reached (a failover takes about 1-5 s).
DATABASE_RETRY_AFTER = 2
_LONG_NUMBER = re.compile(r"\d{10,}")  # national identity numbers have 11 digits; org.nr 9


class NoSessions(SessionInterface):
    """Flask's cookie session is not used here (no secret key; callers authenticate per request, the
    console keeps its own sessions): every request gets the one null session, which refuses writes,
    instead of a new one made after a failed attempt to open a signed cookie (issue 12)."""

    null = NullSession()

    def open_session(self, app: Flask, request: Request) -> NullSession:
        return self.null

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        return None  # never called: Flask saves only a session that is not a null session


class SharingApp(Flask):
    """The Flask app, without two per-request costs it has no use for: a session per request
    (:class:`NoSessions`), and ``inspect.iscoroutinefunction`` on every hook and view of every request
    (``ensure_sync``, which Flask documents for overriding: the answer for a function is remembered)."""

    session_interface = NoSessions()
    response_class = WholeResponse

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._synced: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            synced = self._synced.get(func)
        except TypeError:  # an unhashable callable: asked every time, as Flask does
            return super().ensure_sync(func)
        if synced is None:
            synced = self._synced[func] = super().ensure_sync(func)
        return synced


def _clock() -> int:
    return time.time_ns() // 1000


def _registered(registry: ClientRegistry) -> Callable[[str], RegisteredClient | None]:
    def lookup(client_id: str) -> RegisteredClient | None:
        record = registry.get(client_id, max_age=CLIENT_RECORD_MAX_AGE)
        if record is None:
            return None
        return RegisteredClient(
            client_id=record.client_id,
            orgnr=record.orgnr,
            jwks=record.jwks,
            scopes=record.scopes,
            point_of_care=record.point_of_care,
            enabled=record.enabled,
        )

    return lookup


def _token_protection(
    settings: Settings, client: Any, registry: ClientRegistry, engine: Engine
) -> dict[str, Any]:
    """The token service, the resource guard and the shared state they use.

    With Redis configured, replay caches, revocations (durable in SQL, cached in Redis) and rate limits
    live there under the epoch rule (auth/replaystate.py) and fail closed (503) when it is unreachable;
    without it they live in this process (one worker only).
    """
    replay: ReplayCache
    revocations: RevocationList
    limiter: RateLimiter
    state: RedisState | None = None
    if client is not None:
        ledger = RevocationLedger(engine)
        state = RedisState(
            client,
            deployment=deployment_name(settings.redis_url or "", "{dho}:"),
            ledger=ledger,
            revocations=ledger,
            min_replica_acks=settings.redis_replica_acks,
            wait_ms=settings.redis_wait_ms,
        )
        replay = EpochReplayCache(state)
        revocations = CachedRevocationList(state)
        limiter = RedisRateLimiter(client, limit=settings.rate_limit, window_seconds=60)
    else:
        replay, revocations = InMemoryReplayCache(), InMemoryRevocationList()
        limiter = InMemoryRateLimiter(limit=settings.rate_limit, window_seconds=60)
    keyset = KeysetFile(settings.signing_keys_path)
    issuer = settings.issuer_url
    as_nonce = rs_nonce = None
    if settings.dpop_nonce:
        secret = keyset.derived_secret("dpop-nonce")
        generation = state.current_generation if state is not None else str
        as_nonce = NonceSource(secret, audience="token-endpoint", generation=generation)
        rs_nonce = NonceSource(secret, audience="resource", generation=generation)
    tokens = TokenService(
        issuer=issuer,
        keyset=keyset,
        clients=_registered(registry),
        replay=replay,
        revocations=revocations,
        clock=time.time,
        nonce=as_nonce,
        lifetime=settings.token_lifetime,
        audience=settings.audience,
    )
    own = (
        TokenPolicy.own(issuer, settings.audience),
        lambda kid: keyset().verification_key(kid, time.time()),
    )
    external = [
        IssuerKeys(
            TrustedIssuer(
                issuer=t.issuer,
                audience=t.audience,
                jwks_uri=t.jwks_uri,
                algorithms=t.algorithms or HELSEID_TOKEN_ALGS,
            )
        )
        for t in settings.trusted_issuers
    ]
    guard = ResourceGuard(
        issuers=IssuerDirectory(own=own, trusted=external),
        replay=replay,
        is_revoked=revocations.is_revoked,
        clock=time.time,
        nonce=rs_nonce,
        state=state,
        rate_limit=(settings.rate_limit, 60),
    )
    return {"token_service": tokens, "guard": guard, "rate_limiter": limiter}


def person_register_of(settings: Settings) -> PersonRegister | None:
    """Where rule R9 gets patients' family names: the file register ``DHO_PERSON_REGISTER`` names, read
    once here (a wrong mode or shape stops the start, naming the file). A Folkeregister adapter
    (Persontjenesten; sharing_api.console.persons) would be chosen here instead."""
    if settings.person_register is None:
        return None
    try:
        return FileRegister.load(settings.person_register)
    except RegisterError as exc:
        raise RuntimeError(str(exc)) from exc


def build_services(settings: Settings) -> Services:
    engine = make_engine(settings.database_url)
    if not is_current(engine):
        raise RuntimeError("the database is not at the newest migration; run `dho-share db upgrade`")
    sessions: SearchSessions
    cursor_keys: CursorKeys
    client = None
    if settings.redis_url:
        client = redis_connection.connect(settings.redis_url)
        sessions = RedisSessions(client, settings.search_session_ttl)
        cursor_keys = RedisCursorKeys(client, settings.search_session_ttl)
    else:
        sessions = LocalSessions(settings.search_session_ttl)
        cursor_keys = LocalCursorKeys()
    observations = ObservationStore(engine, _clock)
    registry = ClientRegistry(engine)
    policy = PolicyStore(engine, _clock)
    audit_log = AuditLog(
        engine,
        signer=AuditSigner.load_or_create(settings.audit_key_path),
        origin=settings.audit_log_origin,
    )
    # R8 (self-access) compares keyed hashes of identity numbers under the deployment's own secret: every
    # worker and the console read the same file, and rotating the signing keys leaves it alone. Before it
    # had a file, the secret was derived from the signing-key file; a deployment upgraded from then adopts
    # that secret (read before the token service makes a key file), so its earlier events keep matching
    # (docs/console-rules.md).
    keys = settings.signing_keys_path
    self_access = load_or_create_secret(
        settings.audit_self_access_key_path,
        adopt=lambda: derive_secret(keys, "audit-self-access") if keys.exists() else None,
    )
    protection = _token_protection(settings, client, registry, engine)
    publisher = Publisher(observations, max_entries=settings.max_bundle_entries)
    tenants = TenantDirectory(engine, clock_skew_seconds=settings.clock_skew)
    access = AccessPolicy(policy)
    auditor = Auditor(audit_log, PidHasher(self_access))
    subscriptions = SubscriptionStore(engine, _clock)
    notifications = Notifications(subscriptions)
    publisher.after_write = notifications.observations_written
    plans = PlanStore(engine, _clock)
    notifications.outside_plan = lambda tenant, patient, obs: bool(
        breaches(plans.active_goals(tenant, patient), obs)
    )
    token_service: TokenService = protection["token_service"]
    delivery = DeliveryWorker(
        subscriptions,
        tenants=tenants,
        access=access,
        auditor=auditor,
        sender=Sender(
            lambda: token_service.keyset,
            issuer=settings.issuer_url,
            timeout=settings.subscription_timeout,
            clock=time.time,
            egress=EgressPolicy(
                allow_loopback=settings.subscription_http_loopback,
                networks=settings.subscription_allowed_networks,
            ),
        ),
        backoff=Backoff(
            settings.subscription_retry_seconds,
            settings.subscription_retry_max_seconds,
            settings.subscription_max_attempts,
        ),
        loaders={
            "Observation": _observation_versions(observations),
            "CarePlan": _plan_versions(plans, "CarePlan"),
            "Goal": _plan_versions(plans, "Goal"),
        },
        base_url=settings.base_url,
    )
    return Services(
        settings=settings,
        engine=engine,
        tenants=tenants,
        observations=observations,
        sessions=sessions,
        publisher=publisher,
        searcher=Searcher(
            observations,
            PagingCursors(cursor_keys, sessions, settings.search_session_ttl),
            default_count=settings.default_page_size,
            max_count=settings.max_page_size,
            limits=settings.search_limits(),
        ),
        redis_url=settings.redis_url,
        redis_client=client,
        person_register=person_register_of(settings),
        clients=registry,
        clock=time.time,
        policy=policy,
        access=access,
        audit_log=audit_log,
        auditor=auditor,
        plans=plans,
        subscriptions=subscriptions,
        notifications=notifications,
        delivery=delivery,
        **protection,
    )


def _plan_versions(store: PlanStore, kind: str) -> ResourceLoader:
    """``CarePlan|Goal/<id>/_history/<n>`` -> that version's stored JSON (a notification's focus)."""

    def load(tenant: str, reference: str) -> bytes | None:
        parts = reference.split("/")
        if len(parts) != 4 or parts[0] != kind or parts[2] != "_history" or not parts[3].isdigit():
            return None
        stored = store.version(tenant, kind, parts[1], int(parts[3]))
        return stored.data if stored is not None else None

    return load


def _observation_versions(store: ObservationStore) -> ResourceLoader:
    """``Observation/<id>/_history/<n>`` -> that version's stored JSON (a notification's focus)."""

    def load(tenant: str, reference: str) -> bytes | None:
        parts = reference.split("/")
        if len(parts) != 4 or parts[0] != "Observation" or parts[2] != "_history" or not parts[3].isdigit():
            return None
        stored = store.version(tenant, parts[1], int(parts[3]))
        return stored.data if stored is not None else None

    return load


def create_app(settings: Settings | None = None) -> Flask:
    """A Flask app serving the FHIR API for every configured tenant."""
    settings = settings or Settings()
    app = SharingApp("sharing_api")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["dho"] = build_services(settings)
    app.wsgi_app = BodyLimit(  # type: ignore[method-assign]
        ResponseHeaders(app.wsgi_app), settings.max_body_bytes
    )
    if settings.trusted_proxies:
        app.wsgi_app = TrustedProxies(app.wsgi_app, settings.trusted_proxies)  # type: ignore[method-assign]
    metrics = Metrics()
    app.extensions["dho_metrics"] = metrics
    services: Services = app.extensions["dho"]
    services.access.observer = metrics.observe_decision
    services.auditor.timer = metrics.timing_audit_append

    # audit_api and consents register their routes on the FHIR blueprint when imported.
    from sharing_api.routes import (  # noqa: F401
        agreements,
        audit_api,
        careplans,
        consents,
        observations,
        patients,
        subscriptions,
        system,
        token,
    )

    app.register_blueprint(observations.bp)
    app.register_blueprint(agreements.bp)
    app.register_blueprint(system.bp)
    app.register_blueprint(token.bp)
    install_console(app, settings, app.extensions["dho"].redis_client)

    @app.get("/metrics")
    def metrics_exposition() -> Response:
        """Prometheus text format (sharing_api/metrics.py); 404 unless DHO_METRICS_TOKEN is set."""
        token = settings.metrics_token
        if token is None:
            raise NotFound()
        if not authorised(request.headers.get("Authorization"), token.get_secret_value()):
            body = {"error": "invalid_token", "error_description": "/metrics needs the metrics bearer token"}
            return json_response(body, 401, {"WWW-Authenticate": 'Bearer realm="metrics"'})
        return Response(metrics.exposition(), 200, content_type=CONTENT_TYPE)

    @app.before_request
    def _begin() -> None:
        # One hook for what every request is given: its start time, id and trace context (made at the
        # WSGI edge with the answer's headers: sharing_api/response_headers.py).
        state = g._get_current_object()
        state.request_started = time.perf_counter()
        start = request_start(request.environ)
        state.request_start = start
        state.correlation_id = start.correlation_id
        state.trace = start.trace

    @app.errorhandler(FhirError)
    def _fhir_error(exc: FhirError) -> Response:
        # Every refusal of access (authentication, authorisation, rate limit) is audited (AUD-02).
        refusal = isinstance(exc, AccessRefused) or exc.status in (401, 403, 429) or exc.audited
        if refusal and not isinstance(exc, ServiceUnavailable) and exc.status != 503:
            try:
                record_refusal(exc)
            except SQLAlchemyError:
                unavailable = ServiceUnavailable("the audit log cannot be written")
                return fhir_response(unavailable.outcome(), 503, {"Retry-After": str(DATABASE_RETRY_AFTER)})
        headers = dict(exc.headers)
        if exc.status == 503:
            backend = _failed_backend(exc)
            if backend is not None:
                metrics.backend_errors.labels(backend).inc()
            headers.setdefault("Retry-After", str(DATABASE_RETRY_AFTER))
        return fhir_response(exc.outcome(), exc.status, headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        code = {404: "not-found", 405: "not-supported", 413: "too-costly"}.get(exc.code or 500, "exception")
        # Werkzeug's own texts name neither the path nor the method: say which (issue 9), with any
        # run of ten or more digits (a national identity number) left out: never echo one back.
        path = _LONG_NUMBER.sub("…", request.path)
        text = {
            404: f"no such path: {path} (what a tenant serves: GET /ORGNR/fhir/metadata)",
            405: f"{request.method} is not supported on {path}",
        }.get(exc.code or 500, exc.description or exc.name)
        issue = Issue(text, None, code)
        return fhir_response(operation_outcome([issue]), exc.code or 500)

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    @app.errorhandler(PoolTimeout)
    def _database_unavailable(exc: Exception) -> Response:
        # The database is down, restarting, failing over or out of connections: a transient fault of
        # ours, never a 500 (issue 13). Nothing was committed by this request (a commit that raised is
        # rolled back; a read commits its audit event before any data is sent).
        log.warning("database unavailable: %s", type(exc).__name__)
        metrics.backend_errors.labels("database").inc()
        retry = {"Retry-After": str(DATABASE_RETRY_AFTER), "Cache-Control": "no-store"}
        if request.path.startswith("/connect/"):  # the token service speaks OAuth (RFC 6749 §5.2)
            body = {"error": "temporarily_unavailable", "error_description": "the database is unavailable"}
            return json_response(body, 503, retry)
        unavailable = ServiceUnavailable("the database is unavailable; retry shortly")
        return fhir_response(unavailable.outcome(), 503, retry)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # Never a stack trace to the client; the log gets the type only (no request data, no PHI).
        # Exception messages can quote SQL parameters (identity numbers, values): log where, not what.
        frames = traceback.extract_tb(exc.__traceback__)
        where = ", ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in frames[-4:])
        log.error("unhandled %s at %s", type(exc).__name__, where)
        issue = Issue("internal error", None, "exception")
        return fhir_response(operation_outcome([issue]), 500)

    @app.after_request
    def _end(response: Response) -> Response:
        # One hook for what every answer gets: its count and latency in the metrics, and its log line
        # (sharing_api/request_log.py); its id, span and security headers are added at the WSGI edge
        # (sharing_api/response_headers.py).
        state = g._get_current_object()
        req = request._get_current_object()  # type: ignore[attr-defined]
        start: RequestStart | None = state.get("request_start")
        started = state.get("request_started")
        elapsed = time.perf_counter() - started if started is not None else None
        route, status = route_of(req.url_rule), response.status_code
        if elapsed is not None:
            metrics.observe_request(route, req.method, status, elapsed)
        caller = state.get("caller")
        log_request(
            start,
            req.method,
            route,
            status,
            round(elapsed * 1000, 3) if elapsed is not None else None,
            getattr(caller, "client_id", None) or state.get("token_client_id"),
            tenant_of(state.get("tenant"), state.get("orgnr")),
        )
        return response

    if settings.audit_sequencer_interval > 0:
        _start_sequencer(services.audit_log, settings.audit_sequencer_interval, metrics)
    if settings.subscription_delivery_interval > 0:
        app.extensions["dho_delivery"] = _start_delivery(
            services.delivery, settings.subscription_delivery_interval
        )
    return app


def _failed_backend(exc: BaseException) -> str | None:
    """``redis`` or ``database`` when that is what the exception (or one it was raised from) came from."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, redis.RedisError):
            return "redis"
        if isinstance(seen, SQLAlchemyError):
            return "database"
        seen = seen.__cause__ or seen.__context__
    return None


def _start_sequencer(log: AuditLog, interval: float, metrics: Metrics) -> None:
    """Sequence and checkpoint the audit log in the background of this process (several processes may
    run it at once: each batch takes the tenant's head row lock). Errors are logged and retried."""

    def loop() -> None:
        while True:
            try:
                sequencer.run(log, loop=True, interval=interval, observe=metrics.observe_sequencer)
            except Exception as exc:  # the sequencer must outlive a database outage
                log_error = logging.getLogger("dho_share.audit")
                log_error.warning("audit sequencer paused: %s", type(exc).__name__)
                time.sleep(interval)

    threading.Thread(target=loop, name="audit-sequencer", daemon=True).start()


class BackgroundDelivery:
    """The delivery thread of this process; :meth:`stop` ends it after its current pass."""

    def __init__(self, worker: DeliveryWorker, interval: float):
        self._stopping = threading.Event()
        self._worker = worker
        self._interval = interval
        self._thread = threading.Thread(target=self._loop, name="notification-delivery", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._worker.step(time.time())
            except Exception as exc:  # delivery must outlive a database outage
                logging.getLogger("dho_share.subscriptions").warning(
                    "notification delivery paused: %s", type(exc).__name__
                )
            self._stopping.wait(self._interval)

    def stop(self, timeout: float | None = None) -> None:
        self._stopping.set()
        self._thread.join(timeout)


def _start_delivery(worker: DeliveryWorker, interval: float) -> BackgroundDelivery:
    """Deliver notifications in the background of this process, like the audit sequencer: every worker
    process may run it (outbox entries are leased, so each is sent by one at a time); the outbox is in
    SQL, so what one process did not get to, another (or this one after a restart) delivers."""
    return BackgroundDelivery(worker, interval)


def record_refusal(exc: FhirError) -> None:
    """A refused request goes into the audit log of the tenant it was addressed to (AUD-02)."""
    orgnr = g.get("orgnr")
    svc: Services = current_app.extensions["dho"]
    record = svc.tenants.get(orgnr) if orgnr else None
    if record is None:
        return
    decision = g.get("decision")
    facts = audit_facts(
        action=AuditAction.REQUEST_REFUSED,
        outcome=Outcome.MINOR_FAILURE,
        tenant=record.orgnr,
        caller=g.get("caller"),
        request=request_info(with_body=False),
        decision=decision,
        description=f"{exc.status}: {exc.issues[0].diagnostics}"[:200],
        pid_hash=svc.auditor.pid_hash,
    )
    svc.auditor.record(facts)
