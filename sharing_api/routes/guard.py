"""Every API route is protected: token + DPoP proof -> Caller, rate limit, scope, organisation rules.

Runs before any route of the FHIR and admin blueprints (product.md §4 steps 1-2). What each needs:

===========================================  ==========================  ===================================
endpoints                                    scope                       who
===========================================  ==========================  ===================================
metadata                                     (public)                    anyone: the CapabilityStatement
create, update, bundle                       dho-share/observation.write the tenant or its processor
read, history, search, lastn                 dho-share/observation.read  attestation for the one patient,
                                                                         then the sharing decision (route)
Consent create, update, revoke               dho-share/consent.write     the tenant, or the patient (route)
Consent read, search                         dho-share/consent.read      the tenant, or the patient (route)
admin: agreements                            consent.read / .write       the tenant itself
AuditEvent search, read, $export, proofs     dho-share/audit.read        the tenant itself (its own log)
AuditEvent/$access-log                       dho-share/audit.read        the patient (route checks)
Subscription create, delete                  (dho-share/) subscription   the subscriber's organisation;
                                             .write                      create: topic scope, attested
Subscription read, search                    subscription.read           patient, agreement (route)
CarePlan, Goal create, update                dho-share/careplan.write    attestation for the one patient,
                                                                         then the sharing decision for a
                                                                         write of category ``plan``
CarePlan, Goal read, history, search         dho-share/careplan.read     as Observation reads, ``plan``
Observation/$evaluate                        observation.read (and       both decisions (route)
                                             careplan.read, route)
===========================================  ==========================  ===================================

Failures of the shared state (Redis) surface as 503 and never let a request through unchecked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import g

from auth.dpop import DPOP_ALGS
from auth.errors import AuthError, InsufficientScope, InvalidRequest, Surface
from sharing_api.errors import AccessRefused, Forbidden
from sharing_api.routes.common import current_request, resolve_tenant, services

READ = "dho-share/observation.read"
WRITE = "dho-share/observation.write"
CONSENT_READ = "dho-share/consent.read"
CONSENT_WRITE = "dho-share/consent.write"
AUDIT = "dho-share/audit.read"
SUBSCRIPTION_READ = "dho-share/subscription.read"
SUBSCRIPTION_WRITE = "dho-share/subscription.write"
PLAN_READ = "dho-share/careplan.read"
PLAN_WRITE = "dho-share/careplan.write"
PUBLISHER, CONTROLLER, ANYONE = "publisher", "controller", "anyone"
RULES: dict[str, tuple[str, str]] = {
    "fhir.create": (WRITE, PUBLISHER),
    "fhir.update": (WRITE, PUBLISHER),
    "fhir.bundle": (WRITE, PUBLISHER),
    "fhir.read": (READ, ANYONE),
    "fhir.vread": (READ, ANYONE),
    "fhir.history": (READ, ANYONE),
    "fhir.search_get": (READ, ANYONE),
    "fhir.search_post": (READ, ANYONE),
    "fhir.lastn": (READ, ANYONE),
    "fhir.patient_match": (READ, ANYONE),
    "fhir.patient_search": (READ, ANYONE),
    "fhir.patient_read": (READ, ANYONE),
    "fhir.consent_create": (CONSENT_WRITE, ANYONE),
    "fhir.consent_update": (CONSENT_WRITE, ANYONE),
    "fhir.consent_revoke": (CONSENT_WRITE, ANYONE),
    "fhir.consent_read": (CONSENT_READ, ANYONE),
    "fhir.consent_search": (CONSENT_READ, ANYONE),
    "fhir.audit_search_get": (AUDIT, CONTROLLER),
    "fhir.audit_search_post": (AUDIT, CONTROLLER),
    "fhir.audit_read": (AUDIT, CONTROLLER),
    "fhir.audit_export": (AUDIT, CONTROLLER),
    "fhir.audit_checkpoint": (AUDIT, CONTROLLER),
    "fhir.audit_inclusion": (AUDIT, CONTROLLER),
    "fhir.audit_consistency": (AUDIT, CONTROLLER),
    "fhir.access_log": (AUDIT, ANYONE),
    "fhir.subscription_create": (SUBSCRIPTION_WRITE, ANYONE),
    "fhir.subscription_delete": (SUBSCRIPTION_WRITE, ANYONE),
    "fhir.subscription_read": (SUBSCRIPTION_READ, ANYONE),
    "fhir.subscription_search": (SUBSCRIPTION_READ, ANYONE),
    "fhir.careplan_create": (PLAN_WRITE, ANYONE),
    "fhir.careplan_update": (PLAN_WRITE, ANYONE),
    "fhir.careplan_read": (PLAN_READ, ANYONE),
    "fhir.careplan_vread": (PLAN_READ, ANYONE),
    "fhir.careplan_history": (PLAN_READ, ANYONE),
    "fhir.careplan_search": (PLAN_READ, ANYONE),
    "fhir.goal_create": (PLAN_WRITE, ANYONE),
    "fhir.goal_update": (PLAN_WRITE, ANYONE),
    "fhir.goal_read": (PLAN_READ, ANYONE),
    "fhir.goal_vread": (PLAN_READ, ANYONE),
    "fhir.goal_history": (PLAN_READ, ANYONE),
    "fhir.evaluate": (READ, ANYONE),
    "admin.agreements_list": (CONSENT_READ, CONTROLLER),
    "admin.agreements_add": (CONSENT_WRITE, CONTROLLER),
    "admin.agreements_end": (CONSENT_WRITE, CONTROLLER),
}
"""Scope and organisation rule per endpoint; an endpoint missing here is refused (fail closed)."""
PUBLIC = frozenset({"fhir.metadata"})


def credentials(environ: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The ``Authorization`` and the ``DPoP`` header values, as ``request.headers.getlist`` gives them
    (every value, in order; the guard refuses anything but one of each), found in one pass over the
    WSGI environ: each ``getlist`` walks and renames all of it (issue 12). A header ``X-Y`` is the
    environ key ``HTTP_X_Y`` (PEP 3333); neither name has a ``-``, so no ``_`` spelling matches."""
    authorization: list[str] = []
    dpop: list[str] = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].lower()
            if name == "authorization":
                authorization.append(value)
            elif name == "dpop":
                dpop.append(value)
    return authorization, dpop


def refused(exc: AuthError) -> AccessRefused:
    response = exc.response(Surface.RESOURCE, algs=DPOP_ALGS)
    return AccessRefused(exc.description, status=response.status, headers=dict(response.headers))


def protect() -> None:
    """``before_request`` of the FHIR and admin routes: authenticate, limit, authorise, bind the tenant."""
    req = current_request()
    state = g._get_current_object()
    endpoint = req.endpoint or ""
    if req.mimetype == "application/x-www-form-urlencoded":
        req.get_data(cache=True)  # keep the raw form for the audit record (entity.query, AUD-03)
    if endpoint in PUBLIC:
        state.tenant = resolve_tenant(state.orgnr)
        return
    svc = services()
    try:
        if "access_token" in req.args or "access_token" in req.form:
            raise InvalidRequest("access tokens are accepted in the Authorization header only")
        authorization, dpop = credentials(req.environ)
        admission = svc.guard.admit(
            authorization=authorization,
            dpop=dpop,
            method=req.method,
            url=svc.settings.base_url + req.path,
        )
        who = admission.caller
        # With Redis the guard counted the rate limit in its one round trip (issue 12).
        decision = admission.rate or svc.rate_limiter.hit(f"{who.issuer}|{who.client_id}", svc.clock())
        if not decision.allowed:
            raise AccessRefused(
                "too many requests from this client; slow down",
                status=429,
                headers={"Retry-After": str(max(1, decision.retry_after))},
            )
        scope, rule = RULES.get(endpoint, ("", CONTROLLER))
        if not scope or not who.has_scope(scope):
            lacking = f"the token lacks the scope `{scope}`" if scope else "no scope grants this endpoint"
            raise InsufficientScope(lacking, scope=scope or None)
    except AuthError as exc:
        raise refused(exc) from exc
    state.caller = who
    tenant = state.tenant = resolve_tenant(state.orgnr)
    own = who.organisation == tenant.orgnr
    if rule == PUBLISHER and not own and who.organisation not in tenant.processors:
        raise Forbidden(
            "a client publishes only into its own organisation's data (or as its registered processor)"
        )
    if rule == CONTROLLER and not own:
        raise Forbidden("only the data controller itself may do this (its agreements, its audit log)")
