"""The token service over HTTP: token, introspection, revocation, discovery and JWKS (HelseID paths)."""

from __future__ import annotations

from flask import Blueprint, Response, request

from auth.server import (
    INTROSPECTION_PATH,
    JWKS_PATH,
    REVOCATION_PATH,
    TOKEN_PATH,
    TokenRequest,
    TokenResponse,
)
from sharing_api.routes.common import json_response, services

bp = Blueprint("token", __name__)
FORM = "application/x-www-form-urlencoded"


def _request(path: str) -> TokenRequest:
    """The plain request the token service sees: the form body only (never the query string)."""
    is_form = (request.mimetype or "") == FORM
    return TokenRequest(
        url=services().settings.issuer_url + path,
        form=request.form.to_dict(flat=False) if is_form else {},
        headers={name: request.headers.getlist(name) for name in {k for k, _ in request.headers.items()}},
    )


def _respond(response: TokenResponse) -> Response:
    return json_response(dict(response.body), response.status, dict(response.headers))


@bp.post(TOKEN_PATH)
def token() -> Response:
    return _respond(services().token_service.token(_request(TOKEN_PATH)))


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
