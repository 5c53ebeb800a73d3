"""The verified-token cache answers only what ``verify_access_token`` would (issue 12): a token stops
being accepted when it expires, a token is never served for another issuer's policy, and a token that
fails verification is never remembered."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from joserfc.jwk import ECKey, Key

from auth.errors import InvalidToken
from auth.tokens import TokenPolicy, VerifiedTokenCache
from tests.auth.factories import ISSUER, NOW, ec_key, make_token


@pytest.fixture(scope="module")
def as_key() -> ECKey:
    return ECKey.generate_key("P-256", private=True, auto_kid=True)


def _public(key: ECKey) -> Key:
    return ECKey.import_key(key.as_dict(private=False))


def test_a_cached_token_is_refused_once_expired(as_key: ECKey) -> None:
    cache, policy = VerifiedTokenCache(), TokenPolicy.own(ISSUER)
    token = make_token(as_key, jkt=ec_key().thumbprint())
    keys = {as_key.kid: _public(as_key)}.get
    first = cache.verify(token, policy=policy, keys=keys, now=NOW)
    assert cache.verify(token, policy=policy, keys=keys, now=NOW + 1) is first  # served from the cache
    expires = first.expires_at + policy.leeway
    with pytest.raises(InvalidToken, match="expired"):
        cache.verify(token, policy=policy, keys=keys, now=expires)


def test_a_cached_token_is_not_served_for_another_issuer(as_key: ECKey) -> None:
    cache = VerifiedTokenCache()
    token = make_token(as_key, jkt=ec_key().thumbprint())
    keys = {as_key.kid: _public(as_key)}.get
    cache.verify(token, policy=TokenPolicy.own(ISSUER), keys=keys, now=NOW)
    with pytest.raises(InvalidToken, match="issuer"):
        cache.verify(token, policy=TokenPolicy.own("https://other.example.test"), keys=keys, now=NOW)


def test_a_refused_token_is_not_remembered(as_key: ECKey) -> None:
    cache, policy = VerifiedTokenCache(), TokenPolicy.own(ISSUER)
    forged = make_token(ec_key(), jkt=ec_key().thumbprint(), kid=as_key.kid)  # right kid, wrong signer
    keys = {as_key.kid: _public(as_key)}.get
    for _ in range(2):
        with pytest.raises(InvalidToken, match="signature"):
            cache.verify(forged, policy=policy, keys=keys, now=NOW)


def test_a_full_cache_keeps_verifying(as_key: ECKey) -> None:
    cache, policy = VerifiedTokenCache(max_entries=2), TokenPolicy.own(ISSUER)
    keys = {as_key.kid: _public(as_key)}.get
    tokens = [make_token(as_key, jkt=ec_key().thumbprint()) for _ in range(5)]
    verified = [cache.verify(t, policy=policy, keys=keys, now=NOW) for t in tokens]
    assert [v.jti for v in verified] == [
        cache.verify(t, policy=policy, keys=keys, now=NOW).jti for t in tokens
    ]


def test_the_caller_is_built_once_per_cached_token_and_a_failure_is_not_remembered(as_key: ECKey) -> None:
    cache, policy = VerifiedTokenCache(), TokenPolicy.own(ISSUER)
    keys = {as_key.kid: _public(as_key)}.get
    token = make_token(as_key, jkt=ec_key().thumbprint())
    built: list[str] = []

    def derive(claims: Mapping[str, Any]) -> str:
        built.append(claims["jti"])
        if len(built) == 1:
            raise InvalidToken("the first build fails")
        return f"caller of {claims['jti']}"

    verified = cache.verify(token, policy=policy, keys=keys, now=NOW)
    with pytest.raises(InvalidToken, match="first build"):
        cache.derived(token, verified, derive)
    first = cache.derived(token, cache.verify(token, policy=policy, keys=keys, now=NOW + 1), derive)
    again = cache.derived(token, cache.verify(token, policy=policy, keys=keys, now=NOW + 2), derive)
    assert first == again == f"caller of {verified.jti}"
    assert len(built) == 2  # the failure, then one build for every later request


def test_a_derived_caller_ends_with_its_token(as_key: ECKey) -> None:
    cache, policy = VerifiedTokenCache(), TokenPolicy.own(ISSUER)
    keys = {as_key.kid: _public(as_key)}.get
    token = make_token(as_key, jkt=ec_key().thumbprint())
    verified = cache.verify(token, policy=policy, keys=keys, now=NOW)
    assert cache.derived(token, verified, lambda c: c["jti"]) == verified.jti
    with pytest.raises(InvalidToken, match="expired"):
        cache.verify(token, policy=policy, keys=keys, now=verified.expires_at + policy.leeway)
    other = make_token(as_key, jkt=ec_key().thumbprint())
    # A token the cache does not hold (here: another one) is derived afresh from its own claims.
    assert cache.derived(other, verified, lambda c: "fresh") == "fresh"


def test_live_answers_only_a_verified_unexpired_token(as_key: ECKey) -> None:
    """What the resource guard asks before parsing a token: the earlier verification, while it holds."""
    cache, policy = VerifiedTokenCache(), TokenPolicy.own(ISSUER)
    token = make_token(as_key, jkt=ec_key().thumbprint())
    keys = {as_key.kid: _public(as_key)}.get
    assert cache.live(token, NOW) is None  # never verified here
    verified = cache.verify(token, policy=policy, keys=keys, now=NOW)
    assert cache.live(token, NOW + 1) is verified
    assert cache.live(token + "x", NOW + 1) is None  # other bytes, another token
    assert cache.live(token, verified.expires_at + policy.leeway) is None


def test_expired_tokens_are_swept_so_a_long_run_holds_only_the_live_ones(as_key: ECKey) -> None:
    """A worker that sees a new token every few seconds for hours holds about the tokens still live,
    not every token it has seen (issue 12 soak: memory crept up by the expired entries), and answers
    each token exactly as before: live tokens verified, an expired one refused."""
    cache, policy = VerifiedTokenCache(sweep_seconds=30), TokenPolicy.own(ISSUER)
    keys = {as_key.kid: _public(as_key)}.get
    step, lifetime = 5, 300
    # Live at any moment: tokens issued in the last lifetime + leeway; plus those since the last sweep.
    bound = (lifetime + policy.leeway + cache.sweep_seconds) // step + 1
    held = []
    earlier: list[tuple[str, str]] = []
    for n in range(400):  # 2,000 s of tokens, seven lifetimes
        now = NOW + n * step
        token = make_token(as_key, jkt=ec_key().thumbprint(), now=now)
        verified = cache.verify(token, policy=policy, keys=keys, now=now)
        assert verified.claims["iat"] == now
        earlier.append((token, verified.jti))
        held.append(cache.held())
    assert max(held) <= bound
    assert held[-1] >= lifetime // step  # the live ones are kept: they are served from the cache
    last_token, last_jti = earlier[-1]
    assert cache.verify(last_token, policy=policy, keys=keys, now=now + 1).jti == last_jti
    assert cache.live(last_token, now + 1) is not None
    first_token, _ = earlier[0]
    with pytest.raises(InvalidToken, match="expired"):
        cache.verify(first_token, policy=policy, keys=keys, now=now)
