"""Errors of authentication and authorisation, each knowing its wire form.

The same failure is written differently depending on where it happens. At the **token endpoint**
(RFC 6749 §5.2) an error is a JSON body ``{"error", "error_description"}``. At the **resource server**
(RFC 6750 §3, RFC 9449 §7.1) it is a ``WWW-Authenticate`` challenge; the FHIR layer adds the
``OperationOutcome`` body. Each class therefore carries one ``(status, error code)`` pair per
:class:`Surface`::

    AuthError                      token endpoint                       resource server
    ├── InvalidRequest             400 invalid_request                  400 invalid_request
    ├── InvalidClient              401 invalid_client                   401 invalid_token
    ├── InvalidGrant               400 invalid_grant                    401 invalid_token
    ├── UnauthorizedClient         400 unauthorized_client              403 insufficient_scope
    ├── UnsupportedGrantType       400 unsupported_grant_type           400 invalid_request
    ├── InvalidScope               400 invalid_scope                    403 insufficient_scope
    ├── InvalidAuthorizationDetails 400 invalid_authorization_details   403 insufficient_scope
    ├── InvalidToken               400 invalid_grant                    401 invalid_token
    ├── InsufficientScope          400 invalid_scope                    403 insufficient_scope
    ├── InvalidDPoPProof           400 invalid_dpop_proof               401 invalid_dpop_proof
    ├── UseDPoPNonce               400 use_dpop_nonce + DPoP-Nonce      401 use_dpop_nonce + DPoP-Nonce
    └── StateUnavailable           503 temporarily_unavailable          503 (no challenge), Retry-After

The first column is where an error is native for the OAuth errors (``invalid_client`` ...), the second
for the resource errors (``invalid_token``, ``insufficient_scope``); the other column is the mapping used
if one is ever raised on the "wrong" side, so that a handler never has to guess.

Descriptions are fixed phrases written in this package. They never echo a token, a proof, an assertion
or any claim value (AUD-04): they end up in logs and in responses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, NamedTuple

__all__ = [
    "AuthError",
    "ErrorResponse",
    "InsufficientScope",
    "InvalidAuthorizationDetails",
    "InvalidClient",
    "InvalidDPoPProof",
    "InvalidGrant",
    "InvalidRequest",
    "InvalidScope",
    "InvalidToken",
    "StateUnavailable",
    "Surface",
    "UnauthorizedClient",
    "UnsupportedGrantType",
    "UseDPoPNonce",
    "Wire",
    "www_authenticate",
]


class Surface(StrEnum):
    """Where an error is answered: decides the wire form (JSON body or ``WWW-Authenticate``)."""

    TOKEN_ENDPOINT = "token_endpoint"  # noqa: S105 - a surface name, not a secret; RFC 6749 §5.2
    RESOURCE = "resource"  # RFC 6750 §3, RFC 9449 §7.1


class Wire(NamedTuple):
    """An HTTP status and an OAuth ``error`` code."""

    status: int
    error: str


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """What to send: status, headers and, at the token endpoint, the JSON body.

    ``body`` is ``None`` on the resource surface; the FHIR layer writes its ``OperationOutcome`` there.
    """

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Mapping[str, str] | None = None


class AuthError(Exception):
    """Base of every authentication and authorisation failure.

    :param description: a fixed, human-readable phrase; goes into ``error_description``. Never put a
        token, proof, assertion or claim value into it.
    :param path: for errors about a JSON document (``authorization_details``), where in it the problem is.
    """

    token_endpoint: ClassVar[Wire] = Wire(400, "invalid_request")
    resource: ClassVar[Wire] = Wire(400, "invalid_request")

    def __init__(self, description: str, *, path: str | None = None) -> None:
        super().__init__(f"{description} @ {path}" if path else description)
        self.description = description
        self.path = path

    def wire(self, surface: Surface) -> Wire:
        """The ``(status, error)`` pair used on ``surface``."""
        return self.token_endpoint if surface is Surface.TOKEN_ENDPOINT else self.resource

    def extra_headers(self) -> dict[str, str]:
        """Headers this error adds on either surface (``DPoP-Nonce``, ``Retry-After``)."""
        return {}

    def response(
        self, surface: Surface, *, algs: Iterable[str] | None = None, scheme: str = "DPoP"
    ) -> ErrorResponse:
        """The complete wire form of this error on ``surface``.

        :param algs: on the resource surface, the DPoP algorithms to advertise (RFC 9449 §7.1 ``algs``).
        :param scheme: the challenge scheme on the resource surface (``DPoP``, or ``Bearer``).
        """
        status, error = self.wire(surface)
        description = str(self)
        headers = self.extra_headers()
        if surface is Surface.TOKEN_ENDPOINT:
            # RFC 6749 §5.1/§5.2: token responses are never cached.
            headers["Cache-Control"] = "no-store"
            return ErrorResponse(status, headers, {"error": error, "error_description": description})
        headers["WWW-Authenticate"] = www_authenticate(
            scheme, error=error, error_description=description, algs=algs, scope=self.challenge_scope()
        )
        return ErrorResponse(status, headers, None)

    def challenge_scope(self) -> str | None:
        """The ``scope`` attribute of the challenge (RFC 6750 §3), if this error names one."""
        return None


class InvalidRequest(AuthError):
    """A malformed request: missing or repeated parameter or header (RFC 6749 §5.2, RFC 6750 §3.1)."""

    token_endpoint = Wire(400, "invalid_request")
    resource = Wire(400, "invalid_request")


class InvalidClient(AuthError):
    """Client authentication failed: unknown client, bad or replayed assertion.

    RFC 6749 §5.2, RFC 7523 §3.2.
    """

    token_endpoint = Wire(401, "invalid_client")
    resource = Wire(401, "invalid_token")


class InvalidGrant(AuthError):
    """The grant (code, refresh token) is invalid, expired or bound to someone else (RFC 6749 §5.2)."""

    token_endpoint = Wire(400, "invalid_grant")
    resource = Wire(401, "invalid_token")


class UnauthorizedClient(AuthError):
    """The client may not use this grant type (RFC 6749 §5.2)."""

    token_endpoint = Wire(400, "unauthorized_client")
    resource = Wire(403, "insufficient_scope")


class UnsupportedGrantType(AuthError):
    """Grant type not supported: ROPC, implicit, anything unregistered (RFC 6749 §5.2, AS-02)."""

    token_endpoint = Wire(400, "unsupported_grant_type")
    resource = Wire(400, "invalid_request")


class InvalidScope(AuthError):
    """Requested scope unknown or beyond what the client may have (RFC 6749 §5.2)."""

    token_endpoint = Wire(400, "invalid_scope")
    resource = Wire(403, "insufficient_scope")


class InvalidAuthorizationDetails(AuthError):
    """``authorization_details`` (the attestation) is missing, malformed or inconsistent (RFC 9396 §5).

    ``path`` names the JSON path of the problem, e.g. ``authorization_details[1].care_relationship``.
    At the resource server the token then lacks the authority the request needs: 403 ``insufficient_scope``.
    """

    token_endpoint = Wire(400, "invalid_authorization_details")
    resource = Wire(403, "insufficient_scope")


class InvalidToken(AuthError):
    """The access token is malformed, expired, badly signed, for someone else, or bound to another key
    (RFC 6750 §3.1; RFC 9449 §7.1 for a ``cnf.jkt`` mismatch)."""

    token_endpoint = Wire(400, "invalid_grant")
    resource = Wire(401, "invalid_token")


class InsufficientScope(AuthError):
    """The token is valid but lacks the scope the request needs (RFC 6750 §3.1)."""

    token_endpoint = Wire(400, "invalid_scope")
    resource = Wire(403, "insufficient_scope")

    def __init__(self, description: str, *, scope: str | None = None, path: str | None = None) -> None:
        super().__init__(description, path=path)
        self.scope = scope

    def challenge_scope(self) -> str | None:
        return self.scope


class InvalidDPoPProof(AuthError):
    """The DPoP proof is missing, repeated, malformed, badly signed, replayed or for another request
    (RFC 9449 §4.3, §5 at the token endpoint, §7.1 at the resource server)."""

    token_endpoint = Wire(400, "invalid_dpop_proof")
    resource = Wire(401, "invalid_dpop_proof")


class UseDPoPNonce(AuthError):
    """The server requires a DPoP nonce and the proof had none, or a stale or forged one (RFC 9449 §8, §9).

    :param nonce: a fresh nonce for the ``DPoP-Nonce`` response header.
    """

    token_endpoint = Wire(400, "use_dpop_nonce")
    resource = Wire(401, "use_dpop_nonce")

    def __init__(self, description: str, *, nonce: str) -> None:
        super().__init__(description)
        self.nonce = nonce

    def extra_headers(self) -> dict[str, str]:
        return {"DPoP-Nonce": self.nonce}


class StateUnavailable(AuthError):
    """A store the security checks depend on (replay cache, revocation list) cannot be reached.

    We fail **closed**: the request is refused with 503 rather than let through unchecked (REL-01).
    It is not an authentication failure, so the resource surface sends no challenge.
    """

    token_endpoint = Wire(503, "temporarily_unavailable")
    resource = Wire(503, "temporarily_unavailable")
    retry_after_seconds: ClassVar[int] = 5

    def extra_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}

    def response(
        self, surface: Surface, *, algs: Iterable[str] | None = None, scheme: str = "DPoP"
    ) -> ErrorResponse:
        if surface is Surface.TOKEN_ENDPOINT:
            return super().response(surface, algs=algs, scheme=scheme)
        return ErrorResponse(self.resource.status, self.extra_headers(), None)


# RFC 6750 §3: error, error_description and scope values are limited to %x20-21 / %x23-5B / %x5D-7E,
# so a description can never break out of its quoted-string or inject a header line.
_UNSAFE_IN_QUOTED = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_MAX_DESCRIPTION = 200


def _quoted(value: str) -> str:
    cleaned = _UNSAFE_IN_QUOTED.sub("?", value.replace('"', "'").replace("\\", "/"))
    return f'"{cleaned[:_MAX_DESCRIPTION]}"'


def www_authenticate(
    scheme: str = "DPoP",
    *,
    error: str | None = None,
    error_description: str | None = None,
    algs: Iterable[str] | None = None,
    scope: str | None = None,
    realm: str | None = None,
) -> str:
    """The value of one ``WWW-Authenticate`` challenge (RFC 7235 §4.1, RFC 6750 §3, RFC 9449 §7.1).

    ``DPoP error="invalid_token", error_description="...", algs="ES256 ES384"``. With no error (no
    credentials at all, AUTH-01) the challenge still advertises ``algs``. Values are sanitised to the
    character set RFC 6750 §3 allows, so attacker-influenced text cannot inject header content.

    :raise ValueError: if ``scheme`` or ``error`` is not an RFC 7230 token (a programming error).
    """
    if not _TOKEN.fullmatch(scheme):
        raise ValueError("the scheme must be an HTTP token")
    params: list[str] = []
    if realm is not None:
        params.append(f"realm={_quoted(realm)}")
    if error is not None:
        if not _TOKEN.fullmatch(error):
            raise ValueError("the error code must be an HTTP token")
        params.append(f'error="{error}"')
    if error_description:
        params.append(f"error_description={_quoted(error_description)}")
    if scope:
        params.append(f"scope={_quoted(scope)}")
    if algs is not None:
        names = " ".join(algs)
        if names:
            params.append(f"algs={_quoted(names)}")
    return f"{scheme} {', '.join(params)}" if params else scheme
