"""The token service over HTTP: token, introspection, revocation, discovery and JWKS (HelseID paths)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from flask import Blueprint, Response, current_app, g, request
from sqlalchemy.exc import SQLAlchemyError

from auth.server import (
    INTROSPECTION_PATH,
    JWKS_PATH,
    REVOCATION_PATH,
    TOKEN_PATH,
    TokenRequest,
    TokenResponse,
)
from auth.tokens import CLAIM_ORGNR_PARENT
from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.events import AuditFacts
from sharing_api.errors import ServiceUnavailable
from sharing_api.routes.common import json_response, services

bp = Blueprint("token", __name__)
FORM = "application/x-www-form-urlencoded"
#: OAuth error codes a refusal is counted under (RFC 6749 §5.2, RFC 9449 §12.2); anything else: "other"
OAUTH_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_dpop_proof",
        "use_dpop_nonce",
        "temporarily_unavailable",
        "server_error",
    }
)


def _form() -> dict[str, list[str]]:
    """The ``application/x-www-form-urlencoded`` body as werkzeug's ``request.form`` parses it (the same
    ``parse_qsl`` call; a body that is not UTF-8 is an empty form), without building its MultiDict and
    form parser for one request (issue 12)."""
    try:
        pairs = parse_qsl(request.get_data().decode(), keep_blank_values=True, errors="werkzeug.url_quote")
    except ValueError:
        return {}
    form: dict[str, list[str]] = {}
    for name, value in pairs:
        form.setdefault(name, []).append(value)
    return form


def _request(path: str) -> TokenRequest:
    """The plain request the token service sees: the form body only (never the query string)."""
    is_form = (request.mimetype or "") == FORM
    headers: dict[str, list[str]] = {}
    for name, value in request.headers.items():  # one pass (getlist per name would rescan them all)
        headers.setdefault(name, []).append(value)
    return TokenRequest(
        url=services().settings.issuer_url + path,
        form=_form() if is_form else {},
        headers=headers,
    )


def _respond(response: TokenResponse) -> Response:
    return json_response(dict(response.body), response.status, dict(response.headers))


TOKEN_LOG = "token-service"  # noqa: S105 (a log name, not a secret)
"""The audit log of the token service itself (issued and refused tokens belong to no tenant)."""


def _audit_token(response: TokenResponse) -> None:
    """Record an issued or refused token in the token service's own log; fail closed (503)."""
    issued = response.status == 200
    claims: dict[str, Any] = {}
    if issued:
        payload = str(response.body["access_token"]).split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        g.token_client_id = claims.get("client_id")  # the request log line's client (issued only)
    error = str(response.body.get("error", ""))
    metrics = current_app.extensions.get("dho_metrics")
    if metrics is not None:
        metrics.observe_token(issued, error if error in OAUTH_ERRORS else "other")
    facts = AuditFacts(
        action=AuditAction.TOKEN_ISSUE if issued else AuditAction.TOKEN_REFUSED,
        outcome=Outcome.SUCCESS if issued else Outcome.MINOR_FAILURE,
        recorded=datetime.now(UTC),
        tenant=TOKEN_LOG,
        client_id=claims.get("client_id"),
        organisation=claims.get(CLAIM_ORGNR_PARENT),
        token_jti=claims.get("jti"),
        query=f"POST {TOKEN_PATH}".encode(),  # never the form: it holds the client assertion
        correlation_id=g.get("correlation_id", ""),
        source_address=request.remote_addr,
        description=None if issued else f"{response.status} {response.body.get('error', '')}",
        server=services().settings.base_url,
    )
    try:
        services().auditor.record(facts)
    except SQLAlchemyError as exc:
        raise ServiceUnavailable("the audit log cannot be written; no token is issued without it") from exc


@bp.post(TOKEN_PATH)
def token() -> Response:
    response = services().token_service.token(_request(TOKEN_PATH))
    _audit_token(response)
    return _respond(response)


@bp.post(INTROSPECTION_PATH)
def introspect() -> Response:
    return _respond(services().token_service.introspect(_request(INTROSPECTION_PATH)))


@bp.post(REVOCATION_PATH)
def revoke() -> Response:
    return _respond(services().token_service.revoke(_request(REVOCATION_PATH)))


@bp.get("/.well-known/openid-configuration")
@bp.get("/.well-known/oauth-authorization-server")
def discovery() -> Response:
    return json_response(services().token_service.discovery())


@bp.get(JWKS_PATH)
def jwks() -> Response:
    return json_response(services().token_service.jwks())
