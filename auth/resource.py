"""The resource-server check: a request's ``Authorization`` and ``DPoP`` headers -> a :class:`Caller`.

product.md §4 steps 1-2. The order matters for what an attacker learns and what state changes:
format checks first (cheap, no I/O), then the token's signature and claims, then revocation, then the
DPoP proof, whose ``jti`` is claimed last so an invalid request never burns it.

* Only the ``DPoP`` scheme is accepted (case-insensitive, RFC 9110 §11.1). Every token this API
  accepts is DPoP-bound (``cnf.jkt`` required), so a token presented as ``Bearer`` is refused: RFC 9449
  §7.2 (DPOP-01).
* Exactly one ``Authorization`` and one ``DPoP`` header (AUTH-16, DPOP-02).
* ``url`` is built by the caller from the CONFIGURED public base URL and the request path, never from
  ``Host`` or ``X-Forwarded-*`` (DPOP-17).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from auth._jose import JoseFormatError, split_compact
from auth.caller import Caller, caller_from_claims
from auth.dpop import DPOP_ALGS, single_proof, verify_proof
from auth.errors import InvalidRequest, InvalidToken
from auth.replay import NoncePolicy, ReplayCache
from auth.tokens import (
    MAX_TOKEN_BYTES,
    MAX_TOKEN_HEADER_BYTES,
    KeyLookup,
    TokenPolicy,
    VerifiedTokenCache,
)

IssuerLookup = Callable[[str], tuple[TokenPolicy, KeyLookup] | None]
"""``iss`` (unverified) -> the policy and keys to verify with. ``iss`` only chooses; the signature decides."""


@dataclass(frozen=True, slots=True)
class ResourceGuard:
    """Authenticates API requests. Stateless apart from the replay cache and revocation list it is given."""

    issuers: IssuerLookup
    replay: ReplayCache
    is_revoked: Callable[[str], bool]
    clock: Callable[[], float]
    nonce: NoncePolicy | None = None
    dpop_algs: tuple[str, ...] = DPOP_ALGS
    verified_tokens: VerifiedTokenCache = field(default_factory=VerifiedTokenCache, compare=False)
    """Tokens already verified (signature, claims) until they expire; revocation and the proof are
    checked on every request regardless."""

    def authenticate(
        self, *, authorization: Sequence[str], dpop: Sequence[str], method: str, url: str
    ) -> Caller:
        """The caller behind one request, or an :class:`auth.errors.AuthError` saying why not."""
        token = self._token(authorization)
        try:
            unverified_iss = (
                split_compact(token, max_bytes=MAX_TOKEN_BYTES, max_header_bytes=MAX_TOKEN_HEADER_BYTES)
                .unverified_claims()
                .get("iss")
            )
        except (JoseFormatError, ValueError) as exc:
            raise InvalidToken("the access token is malformed") from exc
        selected = self.issuers(unverified_iss) if isinstance(unverified_iss, str) else None
        if selected is None:
            raise InvalidToken("the access token is not from a trusted issuer")
        policy, keys = selected
        now = self.clock()
        verified = self.verified_tokens.verify(token, policy=policy, keys=keys, now=now)
        if self.is_revoked(verified.jti):
            raise InvalidToken("the access token has been revoked")
        verify_proof(
            single_proof(dpop),
            method=method,
            url=url,
            replay=self.replay,
            now=now,
            access_token=token,
            expected_jkt=verified.jkt,
            nonce=self.nonce,
            allowed_algs=self.dpop_algs,
        )
        return caller_from_claims(verified.claims)

    @staticmethod
    def _token(authorization: Sequence[str]) -> str:
        if not authorization:
            raise InvalidToken("an access token is required (Authorization: DPoP <token>)")
        if len(authorization) != 1:
            raise InvalidRequest("exactly one Authorization header is allowed")
        scheme, _, token = authorization[0].strip().partition(" ")
        if scheme.lower() == "bearer":
            raise InvalidToken("this API accepts DPoP-bound tokens only; send Authorization: DPoP <token>")
        if scheme.lower() != "dpop" or not token.strip() or " " in token.strip():
            raise InvalidToken("the Authorization header must be 'DPoP <token>'")
        return token.strip()
