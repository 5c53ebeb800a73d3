"""The resource-server check: a request's ``Authorization`` and ``DPoP`` headers -> a :class:`Caller`.

product.md §4 steps 1-2. The order matters for what an attacker learns and what state changes:
format checks first (cheap, no I/O), then the token's signature and claims, then revocation, then the
DPoP proof, whose ``jti`` is claimed last so an invalid request never burns it. With Redis
(``state``), revocation, the claim and the rate limit are one round trip after the proof's own checks,
in that order inside the script (auth/replaystate.py), so a revoked token still never burns a proof.

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
from auth.errors import InvalidDPoPProof, InvalidRequest, InvalidToken, StateUnavailable
from auth.ratelimit import RateDecision, decide, window
from auth.replay import NoncePolicy, ReplayCache
from auth.replaystate import REPLAYED, REVOKED, STALE, Claim, RedisState
from auth.tokens import (
    MAX_TOKEN_BYTES,
    MAX_TOKEN_HEADER_BYTES,
    KeyLookup,
    TokenPolicy,
    VerifiedAccessToken,
    VerifiedTokenCache,
    token_digest,
)

IssuerLookup = Callable[[str], tuple[TokenPolicy, KeyLookup] | None]
"""``iss`` (unverified) -> the policy and keys to verify with. ``iss`` only chooses; the signature decides."""


@dataclass(frozen=True, slots=True)
class Admission:
    """An authenticated request: who, and the rate-limit decision when the guard counted it."""

    caller: Caller
    rate: RateDecision | None


class _DeferredClaim:
    """A :class:`ReplayCache` that only records the claim, for :meth:`ResourceGuard.admit` to make it
    in the same Redis round trip as the revocation check and the rate limit (issue 12)."""

    claim_made: Claim | None = None

    def claim(
        self, namespace: str, key: str, ttl_seconds: int, *, acceptable_from: float | None = None
    ) -> bool:
        self.claim_made = Claim(namespace, key, ttl_seconds, acceptable_from)
        return True


@dataclass(frozen=True, slots=True)
class ResourceGuard:
    """Authenticates API requests. Stateless apart from the replay cache and revocation list it is given.

    With ``state`` (Redis), the revocation check, the proof's ``jti`` claim and the rate limit
    (``rate_limit = (limit, window_seconds)``) are one Redis round trip under the epoch rule
    (:mod:`auth.replaystate`); without it (one process) ``is_revoked`` and ``replay`` are asked in turn
    and the caller counts the rate limit itself.
    """

    issuers: IssuerLookup
    replay: ReplayCache
    is_revoked: Callable[[str], bool]
    clock: Callable[[], float]
    nonce: NoncePolicy | None = None
    dpop_algs: tuple[str, ...] = DPOP_ALGS
    verified_tokens: VerifiedTokenCache = field(default_factory=VerifiedTokenCache, compare=False)
    """Tokens already verified (signature, claims) until they expire; revocation and the proof are
    checked on every request regardless."""
    state: RedisState | None = None
    rate_limit: tuple[int, int] | None = None

    def authenticate(
        self, *, authorization: Sequence[str], dpop: Sequence[str], method: str, url: str
    ) -> Caller:
        """The caller behind one request, or an :class:`auth.errors.AuthError` saying why not."""
        return self.admit(
            authorization=authorization, dpop=dpop, method=method, url=url, count_rate=False
        ).caller

    def admit(
        self,
        *,
        authorization: Sequence[str],
        dpop: Sequence[str],
        method: str,
        url: str,
        count_rate: bool = True,
    ) -> Admission:
        """:meth:`authenticate`, plus one rate-limit hit for the client when the guard has ``state``
        and ``rate_limit`` (``Admission.rate`` is ``None`` otherwise: count it yourself).

        :raise StateUnavailable: the shared state cannot answer, or was reset after this proof could
            have been used (fail closed, 503: retry with a fresh proof).
        """
        token = self._token(authorization)
        now = self.clock()
        # Hashed once: the cache key below, and the proof's ``ath`` is its base64url.
        digest = token_digest(token)
        # A token verified before (same bytes, so the same ``iss``) is answered without parsing it
        # again, while its issuer is still one we trust; anything else takes the full path.
        verified = self.verified_tokens.live(token, now, digest=digest)
        if verified is None or self.issuers(str(verified.claims["iss"])) is None:
            verified = self._verified(token, now)
        if self.state is None and self.is_revoked(verified.jti):
            raise InvalidToken("the access token has been revoked")
        deferred = _DeferredClaim()
        verify_proof(
            single_proof(dpop),
            method=method,
            url=url,
            replay=self.replay if self.state is None else deferred,
            now=now,
            access_token=token,
            access_token_sha256=digest,
            expected_jkt=verified.jkt,
            nonce=self.nonce,
            allowed_algs=self.dpop_algs,
        )
        # Built once per cached token: the Caller is a pure function of the verified claims (issue 12).
        caller = self.verified_tokens.derived(token, verified, caller_from_claims, digest=digest)
        if self.state is None:
            return Admission(caller, None)
        rate = None
        if count_rate and self.rate_limit is not None:
            index, retry_after = window(now, self.rate_limit[1])
            rate = (f"{caller.issuer}|{caller.client_id}", index, self.rate_limit[1])
        verdict = self.state.admit(revoked_jti=verified.jti, claim=deferred.claim_made, rate=rate)
        if verdict.status == REVOKED:
            raise InvalidToken("the access token has been revoked")
        if verdict.status == STALE:
            raise StateUnavailable("the replay state was reset; retry with a fresh DPoP proof")
        if verdict.status == REPLAYED:
            raise InvalidDPoPProof("DPoP proof replayed")
        decision = (
            decide(verdict.count, self.rate_limit[0], retry_after) if rate and self.rate_limit else None
        )
        return Admission(caller, decision)

    def _verified(self, token: str, now: float) -> VerifiedAccessToken:
        """``token`` verified by the policy and keys its (unverified) ``iss`` selects."""
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
        return self.verified_tokens.verify(token, policy=policy, keys=keys, now=now)

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
