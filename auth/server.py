"""Our token service: HelseID-shaped ``client_credentials`` tokens, DPoP-bound (framework-agnostic).

Built on authlib's authorization server through its hooks: a ``private_key_jwt`` client-authentication
method (:func:`auth.assertions.verify_client_assertion`, RFC 7523 with HelseID's rules) and a
``client_credentials`` grant that requires a DPoP proof (RFC 9449 §5) and issues an RFC 9068 JWT
(:func:`auth.tokens.issue_access_token`) carrying the clinician's attestation taken from the assertion's
``assertion_details``. authlib answers grant types we do not register with ``unsupported_grant_type``.

Also RFC 7662 introspection and RFC 7009 revocation (client-authenticated, own tokens only), and the
discovery document (RFC 8414 / OpenID Discovery). The web layer turns :class:`TokenRequest` and
:class:`TokenResponse` into HTTP.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientCredentialsGrant, OAuth2Payload, OAuth2Request

from auth.assertions import CLIENT_ASSERTION_ALGS, verify_client_assertion
from auth.attestation import ATTESTATION_TYPE, attestation_from_model, find_attestation
from auth.dpop import DPOP_ALGS, single_proof, verify_proof
from auth.errors import (
    AuthError,
    InvalidAuthorizationDetails,
    InvalidClient,
    InvalidDPoPProof,
    InvalidRequest,
    InvalidScope,
    Surface,
    UnauthorizedClient,
)
from auth.keys import SigningKeySet
from auth.replay import DeferredClaims, NoncePolicy, ReplayCache, claim_all
from auth.revocation import RevocationList
from auth.tokens import (
    DEFAULT_LIFETIME,
    OWN_AUDIENCE,
    SCOPES,
    TokenPolicy,
    VerifiedAccessToken,
    issue_access_token,
    verify_access_token,
)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_PATH = "/connect/token"  # noqa: S105 (a URL path, not a secret)
INTROSPECTION_PATH = "/connect/introspect"
REVOCATION_PATH = "/connect/revocation"
JWKS_PATH = "/.well-known/openid-configuration/jwks"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass(frozen=True, slots=True)
class RegisteredClient:
    """A client system as the registry knows it; implements the parts of authlib's ``ClientMixin`` used."""

    client_id: str
    orgnr: str
    jwks: Mapping[str, Any] = field(repr=False)
    scopes: frozenset[str]
    point_of_care: str | None = None
    enabled: bool = True

    def get_client_id(self) -> str:
        return self.client_id

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "private_key_jwt"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in scope.split() if s in self.scopes)


ClientLookup = Callable[[str], RegisteredClient | None]


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """A request to one of the token-service endpoints, as plain values.

    ``url`` is the endpoint's URL under the configured issuer (DPoP ``htu`` is checked against it);
    ``form`` holds the ``application/x-www-form-urlencoded`` body only (never the query string).
    """

    url: str
    form: Mapping[str, Sequence[str]]
    headers: Mapping[str, Sequence[str]]

    def header(self, name: str) -> list[str]:
        return [v for k, values in self.headers.items() if k.lower() == name.lower() for v in values]


@dataclass(frozen=True, slots=True)
class TokenResponse:
    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str]


class _FormPayload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, form: Mapping[str, Sequence[str]]):
        self._form = form
        # authlib reads `data` for every parameter it looks at: built once (issue 12).
        self._data = {k: v[0] for k, v in form.items() if v}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return defaultdict(list, {k: list(v) for k, v in self._form.items()})


class _Request(OAuth2Request):  # type: ignore[misc]
    def __init__(self, request: TokenRequest):
        super().__init__("POST", request.url, headers={k: ", ".join(v) for k, v in request.headers.items()})
        self.payload = _FormPayload(request.form)
        self.token_request = request
        self.assertion_details: Any = None
        self.dpop_jkt: str | None = None
        #: The ``jti`` claims of the client assertion and of the DPoP proof, recorded by the verifiers
        #: and made together by :meth:`TokenService.claim_verified` (token endpoint only; ``None``
        #: elsewhere: the assertion is claimed at once).
        self.assertion_claim: DeferredClaims | None = None
        self.proof_claim: DeferredClaims | None = None

    @property
    def form(self) -> dict[str, str]:
        return dict(self.payload.data)


class DPoPClientCredentialsGrant(ClientCredentialsGrant):  # type: ignore[misc]
    """``client_credentials`` with private_key_jwt only, a DPoP proof required, and the attestation."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt"]  # noqa: RUF012 (authlib's class attribute)

    def validate_token_request(self) -> None:
        """authlib's checks with client authentication, then the DPoP proof; the assertion's and the
        proof's ``jti`` are claimed at the end in one round trip (:meth:`TokenService.claim_verified`).
        When a check fails after the assertion was verified, the assertion's ``jti`` is claimed all the
        same before the refusal (a verified assertion is spent by the request that carried it)."""
        request: _Request = self.request
        service: TokenService = self.server
        request.assertion_claim, request.proof_claim = DeferredClaims(), DeferredClaims()
        try:
            super().validate_token_request()
            proofs = request.token_request.header("DPoP")
            if not proofs:
                raise InvalidDPoPProof("a DPoP proof is required at the token endpoint (RFC 9449 §5)")
            proof = verify_proof(
                single_proof(proofs),
                method="POST",
                url=service.token_url,
                replay=request.proof_claim,
                now=service.clock(),
                nonce=service.nonce,
                allowed_algs=service.dpop_algs,
                replay_namespace="dpop-as",
            )
        except Exception:
            service.claim_verified(request)
            raise
        service.claim_verified(request)
        request.dpop_jkt = proof.jkt

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        service: TokenService = self.server
        request: _Request = self.request
        client: RegisteredClient = request.client
        requested = set((request.payload.scope or "").split())
        if requested - client.scopes:
            lacking = ", ".join(f"`{s}`" for s in sorted(requested - client.scopes))
            raise InvalidScope(f"the client is not registered for the scope {lacking}")
        scopes = requested or set(client.scopes)
        details, pid, hpr = service.attestation_claims(client, request.assertion_details)
        assert request.dpop_jkt is not None
        issued = issue_access_token(
            service.keyset,
            issuer=service.issuer,
            client_id=client.client_id,
            scopes=sorted(scopes),
            jkt=request.dpop_jkt,
            now=service.clock(),
            lifetime=service.lifetime,
            audience=service.audience,
            subject=client.client_id,
            orgnr_parent=client.orgnr,
            orgnr_child=client.point_of_care,
            pid=pid,
            hpr_number=hpr,
            authorization_details=details,
        )
        service.issued(client.client_id, issued.jti)
        body = {
            "access_token": issued.token,
            "token_type": "DPoP",
            "expires_in": issued.lifetime,
            "scope": " ".join(sorted(scopes)),
        }
        return 200, body, list(_NO_STORE.items())


class TokenService(AuthorizationServer):  # type: ignore[misc]
    """The token endpoint, introspection, revocation and discovery of one issuer."""

    def __init__(
        self,
        *,
        issuer: str,
        keyset: Callable[[], SigningKeySet],
        clients: ClientLookup,
        replay: ReplayCache,
        revocations: RevocationList,
        clock: Callable[[], float],
        nonce: NoncePolicy | None = None,
        lifetime: int = DEFAULT_LIFETIME,
        audience: str = OWN_AUDIENCE,
        dpop_algs: tuple[str, ...] = DPOP_ALGS,
        on_issue: Callable[[str, str], None] | None = None,
    ):
        super().__init__(scopes_supported=sorted(SCOPES))
        self.issuer = issuer.rstrip("/")
        self._keyset = keyset
        self.clients = clients
        self.replay = replay
        self.revocations = revocations
        self.clock = clock
        self.nonce = nonce
        self.lifetime = lifetime
        self.audience = audience
        self.dpop_algs = dpop_algs
        self._on_issue = on_issue
        self.register_client_auth_method("private_key_jwt", self._authenticate_private_key_jwt)
        self.register_grant(DPoPClientCredentialsGrant)

    # -- authlib hooks ----------------------------------------------------------------------------

    @property
    def keyset(self) -> SigningKeySet:
        return self._keyset()

    @property
    def token_url(self) -> str:
        return self.issuer + TOKEN_PATH

    def query_client(self, client_id: str) -> RegisteredClient | None:
        client = self.clients(client_id)
        return client if client is not None and client.enabled else None

    def save_token(self, token: Mapping[str, Any], request: Any) -> None:
        """Nothing to save: tokens are self-contained JWTs (revocation keeps its own list)."""

    def create_oauth2_request(self, request: TokenRequest) -> _Request:
        for name, values in request.form.items():
            if len(values) != 1:
                raise InvalidRequest(f"parameter {name!r} must appear exactly once (RFC 6749 §3.2)")
        return _Request(request)

    def handle_response(self, status: int, body: Any, headers: Any) -> TokenResponse:
        return TokenResponse(status, dict(body), {**dict(headers or []), **_NO_STORE})

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """authlib's signals are not used."""

    def claim_verified(self, request: _Request) -> None:
        """Claim the ``jti`` of what the token request has verified so far, the client assertion's and
        then the DPoP proof's, in one round trip (:func:`auth.replay.claim_all`; issue 12) with the
        meaning of two claims in turn: a replayed assertion does not spend the proof, a replayed proof
        does spend the fresh assertion.

        :raise InvalidClient: the assertion was used before.
        :raise InvalidDPoPProof: the proof was used before.
        :raise StateUnavailable: the replay cache cannot answer, or the epoch rule refuses (503).
        """
        assertion = request.assertion_claim.claims if request.assertion_claim is not None else []
        proof = request.proof_claim.claims if request.proof_claim is not None else []
        request.assertion_claim = request.proof_claim = None  # claimed once, whatever happens next
        replayed = claim_all(self.replay, [*assertion, *proof])
        if replayed is None:
            return
        if replayed < len(assertion):
            raise InvalidClient("client assertion replayed")
        raise InvalidDPoPProof("DPoP proof replayed")

    def _authenticate_private_key_jwt(self, query_client: Any, request: _Request) -> RegisteredClient:
        form = request.payload.data
        if form.get("client_assertion_type") != ASSERTION_TYPE or not form.get("client_assertion"):
            raise InvalidClient("client authentication by private_key_jwt (client_assertion) is required")
        found: dict[str, RegisteredClient | None] = {}  # one registry lookup per request, not two

        def client_jwks(cid: str) -> Any:
            found[cid] = c = self.query_client(cid)
            return c.jwks if c is not None else None

        assertion = verify_client_assertion(
            form["client_assertion"],
            issuer=self.issuer,
            client_jwks=client_jwks,
            # At the token endpoint the claim is made later, with the proof's (claim_once).
            replay=self.replay if request.assertion_claim is None else request.assertion_claim,
            now=self.clock(),
            client_id=form.get("client_id") or None,
            allowed_algs=CLIENT_ASSERTION_ALGS,
        )
        cid = assertion.client_id
        client = found[cid] if cid in found else self.query_client(cid)
        if client is None:
            raise InvalidClient("unknown or disabled client")
        request.assertion_details = assertion.assertion_details
        return client

    # -- token contents ---------------------------------------------------------------------------

    def attestation_claims(
        self, client: RegisteredClient, assertion_details: Any
    ) -> tuple[list[dict[str, Any]] | None, str | None, str | None]:
        """The ``authorization_details`` (and person claims) for a token, from the assertion's details.

        The attestation must be valid and name the client's own legal entity: a client cannot attest
        on behalf of another organisation.
        """
        if assertion_details is None:
            return None, None, None
        found = find_attestation(assertion_details, "assertion_details")
        if found is None:
            return None, None, None
        attestation = attestation_from_model(*found)  # parse_attestation without finding it again
        if attestation.legal_entity.id != client.orgnr:
            raise InvalidAuthorizationDetails(
                "the attestation's legal entity is not the client's organisation",
                path="assertion_details.practitioner.legal_entity.id",
            )
        raw = dict(found[0])
        raw.setdefault("type", ATTESTATION_TYPE)
        return [raw], attestation.practitioner_pid, attestation.practitioner_hpr

    def issued(self, client_id: str, jti: str) -> None:
        if self._on_issue is not None:
            self._on_issue(client_id, jti)

    # -- endpoints --------------------------------------------------------------------------------

    def token(self, request: TokenRequest) -> TokenResponse:
        """``POST /connect/token``."""
        try:
            response: TokenResponse = self.create_token_response(request)
        except AuthError as exc:
            return _error(exc)
        return response

    def _authenticated(self, request: TokenRequest) -> RegisteredClient:
        return self._authenticate_private_key_jwt(None, self.create_oauth2_request(request))

    def _ours(self, token: str) -> VerifiedAccessToken | None:
        """``token`` verified as a live access token of this issuer, or ``None``."""
        try:
            return verify_access_token(
                token,
                policy=TokenPolicy.own(self.issuer, self.audience),
                keys=lambda kid: self.keyset.verification_key(kid, self.clock()),
                now=self.clock(),
            )
        except AuthError:
            return None

    def _own_token(self, client: RegisteredClient, token: str) -> Mapping[str, Any] | None:
        """The claims of ``token`` if it is a live token of ours issued to ``client``."""
        verified = self._ours(token)
        return verified.claims if verified is not None and verified.client_id == client.client_id else None

    def introspect(self, request: TokenRequest) -> TokenResponse:
        """``POST /connect/introspect`` (RFC 7662): a client may introspect its own tokens."""
        try:
            client = self._authenticated(request)
            token = self._single(request, "token")
        except AuthError as exc:
            return _error(exc, status=401 if isinstance(exc, InvalidClient) else None)
        claims = self._own_token(client, token)
        if claims is None or self.revocations.is_revoked(str(claims["jti"])):
            return TokenResponse(200, {"active": False}, dict(_NO_STORE))
        body = {
            "active": True,
            "token_type": "DPoP",
            **{k: v for k, v in claims.items() if k != "authorization_details"},
        }
        return TokenResponse(200, body, dict(_NO_STORE))

    def revoke(self, request: TokenRequest) -> TokenResponse:
        """``POST /connect/revocation`` (RFC 7009): only the client the token was issued to may revoke it."""
        try:
            client = self._authenticated(request)
            token = self._single(request, "token")
        except AuthError as exc:
            return _error(exc, status=401 if isinstance(exc, InvalidClient) else None)
        verified = self._ours(token)
        if verified is None:
            return TokenResponse(200, {}, dict(_NO_STORE))  # RFC 7009 §2.2: invalid tokens are not an error
        if verified.client_id != client.client_id:
            return _error(UnauthorizedClient("the token was issued to another client"))
        self.revocations.revoke(verified.jti, verified.expires_at, self.clock())
        return TokenResponse(200, {}, dict(_NO_STORE))

    @staticmethod
    def _single(request: TokenRequest, name: str) -> str:
        values = request.form.get(name) or []
        if len(values) != 1 or not values[0]:
            raise InvalidRequest(f"the {name!r} parameter is required once")
        return values[0]

    def discovery(self) -> dict[str, Any]:
        """RFC 8414 / OpenID Connect Discovery metadata."""
        return {
            "issuer": self.issuer,
            "token_endpoint": self.issuer + TOKEN_PATH,
            "jwks_uri": self.issuer + JWKS_PATH,
            "introspection_endpoint": self.issuer + INTROSPECTION_PATH,
            "revocation_endpoint": self.issuer + REVOCATION_PATH,
            "grant_types_supported": ["client_credentials"],
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": list(CLIENT_ASSERTION_ALGS),
            "introspection_endpoint_auth_methods_supported": ["private_key_jwt"],
            "revocation_endpoint_auth_methods_supported": ["private_key_jwt"],
            "dpop_signing_alg_values_supported": list(self.dpop_algs),
            "scopes_supported": sorted(SCOPES),
            "authorization_details_types_supported": [ATTESTATION_TYPE],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        }

    def jwks(self) -> dict[str, Any]:
        return self.keyset.public_jwks(self.clock())


def _error(exc: AuthError, status: int | None = None) -> TokenResponse:
    response = exc.response(Surface.TOKEN_ENDPOINT)
    return TokenResponse(status or response.status, dict(response.body or {}), dict(response.headers))
