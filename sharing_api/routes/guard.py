"""Every FHIR route is protected: token + DPoP proof -> Caller, rate limit, scope, tenant rules.

Runs before any route of the FHIR blueprint (product.md §4 steps 1-2). What each endpoint needs:

============================  =============================  ==========================================
endpoint                      scope                          more
============================  =============================  ==========================================
metadata                      (public)                       the CapabilityStatement
create, update, bundle        dho-share/observation.write    the caller's organisation is the tenant
read, history, search, lastn  dho-share/observation.read     an attestation bound to the one patient
============================  =============================  ==========================================

Failures of the shared state (Redis) surface as 503 and never let a request through unchecked.
"""

from __future__ import annotations

from flask import g, request

from auth.dpop import DPOP_ALGS
from auth.errors import AuthError, InsufficientScope, InvalidRequest, Surface
from sharing_api.errors import AccessRefused, Forbidden
from sharing_api.routes.common import resolve_tenant, services

READ = "dho-share/observation.read"
WRITE = "dho-share/observation.write"
SCOPES = {
    "observations.create": WRITE,
    "observations.update": WRITE,
    "observations.bundle": WRITE,
    "observations.read": READ,
    "observations.vread": READ,
    "observations.history": READ,
    "observations.search_get": READ,
    "observations.search_post": READ,
    "observations.lastn": READ,
}
PUBLIC = frozenset({"observations.metadata"})
WRITES = frozenset(e for e, s in SCOPES.items() if s == WRITE)


def refused(exc: AuthError) -> AccessRefused:
    response = exc.response(Surface.RESOURCE, algs=DPOP_ALGS)
    return AccessRefused(exc.description, status=response.status, headers=dict(response.headers))


def protect() -> None:
    """``before_request`` of the FHIR blueprint: authenticate, limit, authorise, then bind the tenant."""
    endpoint = request.endpoint or ""
    if endpoint in PUBLIC:
        g.tenant = resolve_tenant(g.orgnr)
        return
    svc = services()
    try:
        if "access_token" in request.args or "access_token" in request.form:
            raise InvalidRequest("access tokens are accepted in the Authorization header only")
        who = svc.guard.authenticate(
            authorization=request.headers.getlist("Authorization"),
            dpop=request.headers.getlist("DPoP"),
            method=request.method,
            url=svc.settings.base_url + request.path,
        )
        decision = svc.rate_limiter.hit(f"{who.issuer}|{who.client_id}", svc.clock())
        if not decision.allowed:
            raise AccessRefused(
                "too many requests from this client; slow down",
                status=429,
                headers={"Retry-After": str(max(1, decision.retry_after))},
            )
        scope = SCOPES.get(endpoint)
        if scope is None or not who.has_scope(scope):
            raise InsufficientScope("the token lacks the scope this request needs", scope=scope or "")
    except AuthError as exc:
        raise refused(exc) from exc
    g.caller = who
    g.tenant = resolve_tenant(g.orgnr)
    if (
        endpoint in WRITES
        and who.organisation != g.tenant.orgnr
        and who.organisation not in g.tenant.processors
    ):
        raise Forbidden(
            "a client publishes only into its own organisation's data (or as its registered processor)"
        )
