"""Trusting an external issuer (a real HelseID) by configuration: discovery, JWKS caching with bounded
staleness, rotation (REL-06), no fetch storm and no fetch named by a token (AUTH-10), fail closed
(REL-01).

The issuer is a small HTTP server on 127.0.0.1 started by each test; nothing leaves the machine. The
key cache runs on an injected clock, so ages and intervals are set, never slept through.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from joserfc.jwk import ECKey, Key, RSAKey

from auth.errors import InvalidToken, StateUnavailable
from auth.external import (
    DISCOVERY_PATH,
    MAX_DOCUMENT_BYTES,
    IssuerDirectory,
    IssuerKeys,
    TrustedIssuer,
)
from auth.keys import SigningKeySet
from auth.replay import InMemoryReplayCache
from auth.resource import ResourceGuard
from auth.revocation import InMemoryRevocationList
from auth.tokens import HELSEID_TOKEN_ALGS, TokenPolicy, VerifiedAccessToken, verify_access_token
from tests.auth.factories import (
    API_URL,
    CLIENT_ID,
    HELSEID_AUDIENCE,
    ISSUER,
    NOW,
    ORGNR_PARENT,
    b64url,
    ec_key,
    jwks_of,
    make_helseid_token,
    make_proof,
    make_token,
    public_jwk,
    rsa_key,
)

JWKS_PATH = "/jwks"


# --- a loopback issuer ---------------------------------------------------------------------------------


class IssuerServer:
    """Serves a discovery document and a JWK Set on 127.0.0.1, and records every request path.

    ``routes`` overrides a path with ``(status, headers, body)``; ``stall`` makes every request wait
    (until ``release`` is set) after setting ``stalled``.
    """

    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.issuer = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.jwks: dict[str, Any] = {"keys": []}
        self.discovery: dict[str, Any] = {
            "issuer": self.url,
            "jwks_uri": self.url + JWKS_PATH,
            "token_endpoint": self.url + "/connect/token",
            "id_token_signing_alg_values_supported": ["RS256"],
        }
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.requests: list[str] = []
        self.stall = False
        self.trickle: float | None = None  # seconds between single bytes of every body
        self.stalled = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._recorded = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        self._running = True

    def count(self, path: str) -> int:
        with self._lock:
            return self.requests.count(path)

    def record(self, path: str) -> None:
        with self._recorded:
            self.requests.append(path)
            self._recorded.notify_all()

    def requests_once(self, n: int) -> list[str]:
        """The recorded paths once ``n`` requests have reached the handler (at most 10 s): a client that
        gave up can finish before the server thread gets to a request it already sent."""
        with self._recorded:
            self._recorded.wait_for(lambda: len(self.requests) >= n, timeout=10)
            return list(self.requests)

    def stop(self) -> None:
        """Shut down: later fetches meet a refused connection."""
        if self._running:
            self._running = False
            self.release.set()
            self.httpd.shutdown()
            self.httpd.server_close()
            self._thread.join()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        issuer: IssuerServer = self.server.issuer  # type: ignore[attr-defined]
        issuer.record(self.path)
        if issuer.stall:
            issuer.stalled.set()
            issuer.release.wait(10)
            return
        if self.path in issuer.routes:
            status, headers, body = issuer.routes[self.path]
        elif self.path == DISCOVERY_PATH:
            status, headers, body = 200, {}, json.dumps(issuer.discovery).encode()
        elif self.path == JWKS_PATH:
            status, headers, body = 200, {}, json.dumps(issuer.jwks).encode()
        else:
            status, headers, body = 404, {}, b"{}"
        self.send_response(status)
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if issuer.trickle is None:
            self.wfile.write(body)
            return
        for i in range(len(body)):  # a peer that is slow but never slow enough for a read timeout
            self.wfile.write(body[i : i + 1])
            self.wfile.flush()
            if issuer.release.wait(issuer.trickle):
                return

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet


class Clock:
    """The key cache's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[IssuerServer]:
    issuer = IssuerServer()
    yield issuer
    issuer.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def helseid_key() -> RSAKey:
    """HelseID signs with RSA (RS256); tests share one 2048-bit key, given a HelseID-style kid."""
    return RSAKey.import_key({**rsa_key().as_dict(private=True), "kid": "helseid-2026-01"})


@pytest.fixture(scope="module")
def dpop_key() -> ECKey:
    return ec_key()


@pytest.fixture(scope="module")
def jkt(dpop_key: ECKey) -> str:
    return dpop_key.thumbprint()


MakeKeys = Callable[..., IssuerKeys]


@pytest.fixture
def make_keys(server: IssuerServer, clock: Clock) -> MakeKeys:
    def make(*, audience: str = HELSEID_AUDIENCE, jwks_uri: str | None = None, **options: Any) -> IssuerKeys:
        options = {"max_age": 600, "max_stale": 3600, "min_refresh_interval": 60, **options}
        trusted = TrustedIssuer(issuer=server.url, audience=audience, jwks_uri=jwks_uri)
        return IssuerKeys(trusted, clock=clock, **options)

    return make


def new_ec_key() -> ECKey:
    return ECKey.generate_key("P-256", private=True, auto_kid=True)


def public(key: ECKey) -> ECKey:
    return ECKey.import_key(key.as_dict(private=False))


def verify(token: str, keys: IssuerKeys) -> VerifiedAccessToken:
    return verify_access_token(token, policy=keys.policy, keys=keys.key, now=NOW)


# --- verification through the directory --------------------------------------------------------------


def test_helseid_token_verifies_through_the_directory(
    server: IssuerServer, make_keys: MakeKeys, helseid_key: RSAKey, jkt: str
) -> None:
    server.jwks = jwks_of(helseid_key, use="sig", alg="RS256")
    keyset = SigningKeySet.generate()
    own = (TokenPolicy.own(ISSUER), lambda kid: keyset.verification_key(kid, NOW))
    directory = IssuerDirectory(own=own, trusted=[make_keys()])
    assert directory.issuers == (ISSUER, server.url)

    token = make_helseid_token(helseid_key, jkt=jkt, issuer=server.url)
    selected = directory(server.url)
    assert selected is not None
    policy, keys = selected
    verified = verify_access_token(token, policy=policy, keys=keys, now=NOW)

    assert verified.alg == "RS256"
    assert verified.kid == "helseid-2026-01"
    assert verified.client_id == CLIENT_ID
    assert verified.jkt == jkt
    assert verified.scopes == {"dho-share/observation.read"}  # HelseID's array form
    assert "sub" not in verified.claims
    assert verified.claims["helseid://claims/client/claims/orgnr_parent"] == ORGNR_PARENT
    assert server.count(DISCOVERY_PATH) == 1
    assert server.count(JWKS_PATH) == 1


def test_own_tokens_still_verify_through_the_directory(
    server: IssuerServer, make_keys: MakeKeys, jkt: str
) -> None:
    as_key = new_ec_key()
    own = (TokenPolicy.own(ISSUER), lambda kid: public(as_key) if kid == as_key.kid else None)
    directory = IssuerDirectory(own=own, trusted=[make_keys()])
    selected = directory(ISSUER)
    assert selected is not None
    verified = verify_access_token(make_token(as_key, jkt=jkt), policy=selected[0], keys=selected[1], now=NOW)
    assert verified.claims["iss"] == ISSUER
    assert server.requests == []  # our own issuer's keys never touch the external fetcher


def test_a_guarded_request_with_a_helseid_token_succeeds(
    server: IssuerServer, make_keys: MakeKeys, helseid_key: RSAKey, dpop_key: ECKey, jkt: str
) -> None:
    """End to end at the resource server: the directory plugs into ResourceGuard as ``issuers``."""
    server.jwks = jwks_of(helseid_key)
    revocations = InMemoryRevocationList()
    guard = ResourceGuard(
        issuers=IssuerDirectory(trusted=[make_keys()]),
        replay=InMemoryReplayCache(),
        is_revoked=revocations.is_revoked,
        clock=lambda: NOW,
    )
    token = make_helseid_token(helseid_key, jkt=jkt, issuer=server.url)

    def call() -> Any:
        proof = make_proof(dpop_key, access_token=token)
        return guard.authenticate(authorization=[f"DPoP {token}"], dpop=[proof], method="GET", url=API_URL)

    caller = call()
    assert caller.issuer == server.url
    assert caller.organisation == ORGNR_PARENT
    assert caller.has_scope("dho-share/observation.read")

    verified = verify(token, make_keys())
    revocations.revoke(verified.jti, verified.expires_at, NOW)  # AUTH-13
    with pytest.raises(InvalidToken, match="revoked"):
        call()


def test_a_token_for_another_audience_fails(
    server: IssuerServer, make_keys: MakeKeys, helseid_key: RSAKey, jkt: str
) -> None:
    server.jwks = jwks_of(helseid_key)
    token = make_helseid_token(helseid_key, jkt=jkt, issuer=server.url, audience="nhn:kjernejournal")
    with pytest.raises(InvalidToken, match="audience"):
        verify(token, make_keys())


def test_a_token_signed_by_an_untrusted_key_fails(
    server: IssuerServer, make_keys: MakeKeys, helseid_key: RSAKey, jkt: str
) -> None:
    server.jwks = jwks_of(helseid_key)
    keys = make_keys()
    forger = new_ec_key()
    # The forger's own kid: the issuer publishes no such key.
    with pytest.raises(InvalidToken, match="unknown key"):
        verify(make_helseid_token(forger, jkt=jkt, issuer=server.url, alg="ES256"), keys)
    # The issuer's kid on a forged signature: the published key does not verify it.
    forged = make_helseid_token(forger, jkt=jkt, issuer=server.url, alg="ES256", kid="helseid-2026-01")
    with pytest.raises(InvalidToken, match="signature"):
        verify(forged, keys)


def test_iss_only_selects_the_keys_the_signature_decides(
    server: IssuerServer, make_keys: MakeKeys, helseid_key: RSAKey, jkt: str
) -> None:
    """A token naming HelseID but signed with our key, and one naming us but signed by HelseID's key,
    both fail: each issuer's policy is tried only with that issuer's keys."""
    server.jwks = jwks_of(helseid_key)
    as_key = new_ec_key()
    own = (TokenPolicy.own(ISSUER), lambda kid: public(as_key) if kid == as_key.kid else None)
    directory = IssuerDirectory(own=own, trusted=[make_keys()])

    claims_helseid_signed_by_us = make_helseid_token(as_key, jkt=jkt, issuer=server.url, alg="ES256")
    selected = directory(server.url)
    assert selected is not None
    with pytest.raises(InvalidToken):
        verify_access_token(claims_helseid_signed_by_us, policy=selected[0], keys=selected[1], now=NOW)

    claims_us_signed_by_helseid = make_token(helseid_key, jkt=jkt, alg="RS256")
    selected = directory(ISSUER)
    assert selected is not None
    with pytest.raises(InvalidToken):
        verify_access_token(claims_us_signed_by_helseid, policy=selected[0], keys=selected[1], now=NOW)


@pytest.mark.parametrize(
    "iss", ["https://evil.example", "", "HTTPS://DHO.EXAMPLE.TEST", ISSUER + "/", "http://127.0.0.1:1"]
)
def test_an_untrusted_iss_selects_nothing_and_fetches_nothing(
    server: IssuerServer, make_keys: MakeKeys, iss: str
) -> None:
    directory = IssuerDirectory(own=(TokenPolicy.own(ISSUER), lambda kid: None), trusted=[make_keys()])
    assert directory(iss) is None
    assert server.requests == []


def test_an_issuer_is_configured_once(make_keys: MakeKeys, server: IssuerServer) -> None:
    with pytest.raises(ValueError, match="only once"):
        IssuerDirectory(trusted=[make_keys(), make_keys()])
    with pytest.raises(ValueError, match="only once"):
        IssuerDirectory(own=(TokenPolicy.own(server.url), lambda kid: None), trusted=[make_keys()])


# --- rotation and the unknown-kid refresh (REL-06) ------------------------------------------------------


def test_key_rotation_is_picked_up_by_the_unknown_kid_refresh(
    server: IssuerServer, make_keys: MakeKeys, clock: Clock, helseid_key: RSAKey, jkt: str
) -> None:
    old, new = helseid_key, new_ec_key()
    server.jwks = jwks_of(old)
    keys = make_keys()
    verify(make_helseid_token(old, jkt=jkt, issuer=server.url), keys)
    assert server.count(JWKS_PATH) == 1

    clock.now += 60  # the cache is fresh (max_age 600) but the last fetch is an interval ago
    server.jwks = jwks_of(new, old)  # the issuer publishes a new key and starts signing with it
    verified = verify(make_helseid_token(new, jkt=jkt, issuer=server.url, alg="ES256"), keys)
    assert verified.kid == new.kid
    assert server.count(JWKS_PATH) == 2
    verify(make_helseid_token(old, jkt=jkt, issuer=server.url), keys)  # old tokens still verify
    assert server.count(JWKS_PATH) == 2


def test_a_new_kid_within_the_interval_waits_for_the_next_one(
    server: IssuerServer, make_keys: MakeKeys, clock: Clock, helseid_key: RSAKey, jkt: str
) -> None:
    server.jwks = jwks_of(helseid_key)
    keys = make_keys()
    assert keys.key("helseid-2026-01") is not None
    new = new_ec_key()
    server.jwks = jwks_of(new, helseid_key)
    clock.now += 59
    assert keys.key(str(new.kid)) is None  # 401 for now, no fetch
    assert server.count(JWKS_PATH) == 1
    clock.now += 1
    assert keys.key(str(new.kid)) is not None
    assert server.count(JWKS_PATH) == 2


def test_random_kids_cause_at_most_one_fetch_per_interval(
    server: IssuerServer, make_keys: MakeKeys, clock: Clock, helseid_key: RSAKey, jkt: str
) -> None:
    """REL-06: an attacker sending tokens with random kids causes no fetch storm."""
    server.jwks = jwks_of(helseid_key)
    keys = make_keys()
    assert keys.key("helseid-2026-01") is not None
    fetches = server.count(JWKS_PATH) + server.count(DISCOVERY_PATH)

    for interval in range(3):
        clock.now += 60
        for _ in range(100):
            clock.now += 0.5 / 100  # the attack takes half a second of each interval
            token = make_helseid_token(helseid_key, jkt=jkt, issuer=server.url, kid=uuid.uuid4().hex)
            with pytest.raises(InvalidToken, match="unknown key"):
                verify(token, keys)
        assert server.count(JWKS_PATH) == 2 + interval
    assert server.count(JWKS_PATH) + server.count(DISCOVERY_PATH) == fetches + 2 * 3


def test_concurrent_unknown_kids_cause_one_fetch(
    server: IssuerServer, make_keys: MakeKeys, clock: Clock, helseid_key: RSAKey
) -> None:
    server.jwks = jwks_of(helseid_key)
    keys = make_keys()
    assert keys.key("helseid-2026-01") is not None
    clock.now += 60
    barrier = threading.Barrier(32)
    results: list[Key | None] = []

    def worker(i: int) -> None:
        barrier.wait()
        results.append(keys.key(f"unknown-{i}"))

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert results == [None] * 32
    assert server.count(JWKS_PATH) == 2


def test_concurrent_first_use_fetches_once(
    server: IssuerServer, make_keys: MakeKeys, helseid_key: RSAKey
) -> None:
    server.jwks = jwks_of(helseid_key)
    keys = make_keys()
    barrier = threading.Barrier(16)
    results: list[Key | None] = []

    def worker() -> None:
        barrier.wait()
        results.append(keys.key("helseid-2026-01"))

    pool = [threading.Thread(target=worker) for _ in range(16)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert len(results) == 16
    assert all(r is not None for r in results)
    assert server.count(JWKS_PATH) == 1


# --- AUTH-10: nothing named by a token is fetched -------------------------------------------------------


@pytest.mark.parametrize(
    "kid", ["../../etc/passwd", "' OR 1=1 --", "/jwks?x=1", "http://127.0.0.1:1/evil", "%2e%2e%2fjwks"]
)
def test_a_kid_is_compared_never_fetched(
    server: IssuerServer, make_keys: MakeKeys, clock: Clock, helseid_key: RSAKey, kid: str
) -> None:
    server.jwks = jwks_of(helseid_key)
    keys = make_keys()
    clock.now += 60
    assert keys.key(kid) is None
    assert keys.key(server.url + "/evil") is None
    assert set(server.requests) == {DISCOVERY_PATH, JWKS_PATH}


@pytest.mark.parametrize("member", ["jku", "x5u"])
def test_a_key_url_in_the_token_is_never_fetched(
    server: IssuerServer, make_keys: MakeKeys, helseid_key: RSAKey, jkt: str, member: str
) -> None:
    server.jwks = jwks_of(helseid_key)
    evil = new_ec_key()
    server.routes["/evil-jwks"] = (200, {}, json.dumps(jwks_of(evil)).encode())
    token = make_helseid_token(
        evil, jkt=jkt, issuer=server.url, alg="ES256", header={member: server.url + "/evil-jwks"}
    )
    with pytest.raises(InvalidToken, match="forbidden"):
        verify(token, make_keys())
    assert server.requests == []  # refused before any key lookup


def test_a_key_in_the_token_header_is_not_trusted(
    server: IssuerServer, make_keys: MakeKeys, helseid_key: RSAKey, jkt: str
) -> None:
    server.jwks = jwks_of(helseid_key)
    evil = new_ec_key()
    token = make_helseid_token(
        evil, jkt=jkt, issuer=server.url, alg="ES256", header={"jwk": public_jwk(evil)}
    )
    with pytest.raises(InvalidToken, match="forbidden"):
        verify(token, make_keys())


# --- staleness and fail-closed ---------------------------------------------------------------------------


def test_a_stale_cache_is_refreshed_and_a_removed_key_stops_working(
    server: IssuerServer, make_keys: MakeKeys, clock: Clock, helseid_key: RSAKey, jkt: str
) -> None:
    server.jwks = jwks_of(helseid_key)
    keys = make_keys()
    token = make_helseid_token(helseid_key, jkt=jkt, issuer=server.url)
    verify(token, keys)
    clock.now += 599
    verify(token, keys)
    assert server.count(JWKS_PATH) == 1
    server.jwks = jwks_of(new_ec_key())  # the issuer withdraws its key (e.g. compromised)
    clock.now += 1
    with pytest.raises(InvalidToken, match="unknown key"):
        verify(token, keys)
    assert server.count(JWKS_PATH) == 2


def test_server_down_with_a_fresh_cache_still_works(
    server: IssuerServer, make_keys: MakeKeys, clock: Clock, helseid_key: RSAKey, jkt: str
) -> None:
    server.jwks = jwks_of(helseid_key)
    keys = make_keys()
    token = make_helseid_token(helseid_key, jkt=jkt, issuer=server.url)
    verify(token, keys)
    server.stop()
    clock.now += 599
    assert verify(token, keys).kid == "helseid-2026-01"


def test_server_down_serves_stale_keys_until_max_stale_then_fails_closed(
    server: IssuerServer, make_keys: MakeKeys, clock: Clock, helseid_key: RSAKey, jkt: str
) -> None:
    server.jwks = jwks_of(helseid_key)
    keys = make_keys()
    token = make_helseid_token(helseid_key, jkt=jkt, issuer=server.url)
    verify(token, keys)
    server.stop()

    clock.now += 600  # stale: the refresh fails, the last keys are kept
    assert verify(token, keys).kid == "helseid-2026-01"
    clock.now += 2999  # 3599 s after the last good fetch
    assert verify(token, keys).kid == "helseid-2026-01"
    clock.now += 1  # max_stale reached: fail closed (503), never accept unchecked
    with pytest.raises(StateUnavailable) as caught:
        verify(token, keys)
    assert caught.value.resource.status == 503


def test_failing_refreshes_are_rate_limited_too(
    server: IssuerServer, make_keys: MakeKeys, clock: Clock, helseid_key: RSAKey
) -> None:
    server.jwks = jwks_of(helseid_key)
    keys = make_keys()
    assert keys.key("helseid-2026-01") is not None
    server.routes[JWKS_PATH] = (500, {}, b"{}")
    clock.now += 600
    for _ in range(50):
        assert keys.key("helseid-2026-01") is not None
        assert keys.key("unknown") is None
        clock.now += 1
    assert server.count(JWKS_PATH) == 2  # the first fetch and one failed refresh in these 50 s
    del server.routes[JWKS_PATH]
    clock.now += 10  # an interval after the failed attempt: refreshed, fresh again
    assert keys.key("helseid-2026-01") is not None
    assert server.count(JWKS_PATH) == 3
    clock.now += 3599
    assert keys.key("helseid-2026-01") is not None


def test_no_keys_at_all_fails_closed_without_a_fetch_storm(server: IssuerServer, make_keys: MakeKeys) -> None:
    server.stop()
    keys = make_keys()
    for _ in range(20):
        with pytest.raises(StateUnavailable):
            keys.key("helseid-2026-01")
    with pytest.raises(StateUnavailable):
        keys.refresh()


def test_refresh_fetches_at_once_and_reports_failure(
    server: IssuerServer, make_keys: MakeKeys, helseid_key: RSAKey
) -> None:
    server.jwks = jwks_of(helseid_key)
    keys = make_keys()
    assert keys.refresh() is True
    assert keys.refresh() is True  # explicit refreshes ignore the interval
    assert server.count(JWKS_PATH) == 2
    server.routes[JWKS_PATH] = (503, {}, b"")
    assert keys.refresh() is False  # failed, but the previous keys are still young enough
    assert keys.key("helseid-2026-01") is not None


def test_a_stale_cache_does_not_wait_for_a_slow_refresh(
    server: IssuerServer, make_keys: MakeKeys, clock: Clock, helseid_key: RSAKey
) -> None:
    """While one thread waits on a hanging issuer, requests with known kids go on with the last keys."""
    server.jwks = jwks_of(helseid_key)
    keys = make_keys(timeout=10)
    assert keys.key("helseid-2026-01") is not None
    clock.now += 600
    server.stall = True
    refresher = threading.Thread(target=keys.key, args=("helseid-2026-01",))
    refresher.start()
    assert server.stalled.wait(5)
    assert keys.key("helseid-2026-01") is not None  # served at once from the stale cache
    assert refresher.is_alive()  # ... while the refresh is still hanging
    server.release.set()
    refresher.join()


# --- what is fetched, and how --------------------------------------------------------------------------


def test_a_configured_jwks_uri_skips_discovery(
    server: IssuerServer, make_keys: MakeKeys, helseid_key: RSAKey
) -> None:
    server.routes["/keys"] = (200, {}, json.dumps(jwks_of(helseid_key)).encode())
    keys = make_keys(jwks_uri=server.url + "/keys")
    assert keys.key("helseid-2026-01") is not None
    assert server.requests == ["/keys"]


def test_discovery_for_another_issuer_is_refused(
    server: IssuerServer, make_keys: MakeKeys, helseid_key: RSAKey
) -> None:
    server.jwks = jwks_of(helseid_key)
    server.discovery["issuer"] = server.url + "/"  # exact match required, not "equivalent"
    with pytest.raises(StateUnavailable):
        make_keys().key("helseid-2026-01")
    assert server.count(JWKS_PATH) == 0


@pytest.mark.parametrize(
    "jwks_uri", ["http://keys.example/jwks", "file:///etc/passwd", "ftp://127.0.0.1/jwks", "", None, 42]
)
def test_an_unacceptable_jwks_uri_in_discovery_is_refused(
    server: IssuerServer, make_keys: MakeKeys, helseid_key: RSAKey, jwks_uri: Any
) -> None:
    server.jwks = jwks_of(helseid_key)
    server.discovery["jwks_uri"] = jwks_uri
    with pytest.raises(StateUnavailable):
        make_keys().key("helseid-2026-01")
    assert server.requests == [DISCOVERY_PATH]


def test_redirects_are_not_followed(server: IssuerServer, make_keys: MakeKeys, helseid_key: RSAKey) -> None:
    server.routes[DISCOVERY_PATH] = (302, {"Location": server.url + "/elsewhere"}, b"")
    server.routes["/elsewhere"] = (200, {}, json.dumps(server.discovery).encode())
    server.jwks = jwks_of(helseid_key)
    with pytest.raises(StateUnavailable):
        make_keys().key("helseid-2026-01")
    assert server.requests == [DISCOVERY_PATH]


@pytest.mark.parametrize("declared", [True, False])
def test_oversized_documents_are_refused(
    server: IssuerServer, make_keys: MakeKeys, helseid_key: RSAKey, declared: bool
) -> None:
    padding = "x" * MAX_DOCUMENT_BYTES
    body = json.dumps({**jwks_of(helseid_key), "padding": padding}).encode()
    headers = {} if declared else {"Content-Length": str(MAX_DOCUMENT_BYTES // 2)}  # a lying length
    server.routes[JWKS_PATH] = (200, headers, body)
    with pytest.raises(StateUnavailable):
        make_keys().key("helseid-2026-01")


def test_a_compressed_bomb_is_cut_off_at_the_cap(
    server: IssuerServer, make_keys: MakeKeys, helseid_key: RSAKey
) -> None:
    document = json.dumps({**jwks_of(helseid_key), "padding": " " * (8 * MAX_DOCUMENT_BYTES)}).encode()
    body = gzip.compress(document)
    assert len(body) < MAX_DOCUMENT_BYTES // 10
    server.routes[JWKS_PATH] = (200, {"Content-Encoding": "gzip"}, body)
    with pytest.raises(StateUnavailable):
        make_keys().key("helseid-2026-01")


def test_a_small_compressed_document_is_read(
    server: IssuerServer, make_keys: MakeKeys, helseid_key: RSAKey
) -> None:
    server.routes[JWKS_PATH] = (
        200,
        {"Content-Encoding": "gzip"},
        gzip.compress(json.dumps(jwks_of(helseid_key)).encode()),
    )
    assert make_keys().key("helseid-2026-01") is not None


def test_a_hanging_issuer_times_out(server: IssuerServer, make_keys: MakeKeys) -> None:
    server.stall = True
    with pytest.raises(StateUnavailable):
        make_keys(timeout=0.3).key("helseid-2026-01")


def test_a_trickling_issuer_is_cut_off_by_the_total_budget(
    server: IssuerServer, make_keys: MakeKeys, helseid_key: RSAKey
) -> None:
    """Every byte arrives within the per-read timeout, but the document as a whole takes too long."""
    server.jwks = jwks_of(helseid_key)
    server.trickle = 0.02  # the JWK Set (~500 bytes) would take ~10 s
    with pytest.raises(StateUnavailable):
        make_keys(timeout=0.3).key("helseid-2026-01")
    assert server.requests_once(1) == [DISCOVERY_PATH]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"keys": [], "keys": []}',  # duplicate member
        b'{"keys": {}}',
        b'{"keys": []}',  # no usable key
        json.dumps({"keys": [{"kty": "RSA"}] * 65}).encode(),  # too many
    ],
)
def test_malformed_key_sets_are_refused(server: IssuerServer, make_keys: MakeKeys, body: bytes) -> None:
    server.routes[JWKS_PATH] = (200, {}, body)
    with pytest.raises(StateUnavailable):
        make_keys().key("any")


def test_a_malformed_key_set_keeps_the_last_good_keys(
    server: IssuerServer, make_keys: MakeKeys, clock: Clock, helseid_key: RSAKey
) -> None:
    server.jwks = jwks_of(helseid_key)
    keys = make_keys()
    assert keys.key("helseid-2026-01") is not None
    server.jwks = {"keys": []}
    clock.now += 600
    assert keys.key("helseid-2026-01") is not None
    assert server.count(JWKS_PATH) == 2


def test_only_usable_public_signing_keys_are_taken(
    server: IssuerServer, make_keys: MakeKeys, helseid_key: RSAKey
) -> None:
    weak = {"kty": "RSA", "n": b64url(b"\xc1" + bytes(range(127))), "e": "AQAB", "kid": "weak"}  # 1024 bits
    good_ec = new_ec_key()
    p384 = ECKey.generate_key("P-384", private=True, auto_kid=True)
    entries = [
        public_jwk(helseid_key),
        {**public_jwk(new_ec_key()), "kid": "enc", "use": "enc"},
        {**public_jwk(new_ec_key()), "kid": "wrap-only", "key_ops": ["wrapKey"]},
        {**public_jwk(new_ec_key()), "kid": "hs", "alg": "HS256"},
        weak,
        {**public_jwk(p384), "kid": "p384"},  # ES384 is not in HELSEID_TOKEN_ALGS
        {**new_ec_key().as_dict(private=True), "kid": "leaked"},
        {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "kid": "oct"},
        {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "broken"},
        {k: v for k, v in public_jwk(new_ec_key()).items() if k != "kid"},
        {**public_jwk(new_ec_key()), "kid": "helseid-2026-01"},  # duplicate kid: the first wins
        public_jwk(good_ec),
        "not an object",
    ]
    server.jwks = {"keys": entries}
    keys = make_keys()
    for kid in ("enc", "wrap-only", "hs", "weak", "p384", "leaked", "oct", "broken"):
        assert keys.key(kid) is None, kid
    first = keys.key("helseid-2026-01")
    assert isinstance(first, RSAKey)
    assert not first.is_private
    found = keys.key(str(good_ec.kid))
    assert isinstance(found, ECKey)
    assert not found.is_private


# --- configuration -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "issuer",
    [
        "http://helseid-sts.test.nhn.no",
        "https://helseid-sts.test.nhn.no?tenant=1",
        "https://helseid-sts.test.nhn.no#x",
        "https://user:pass@helseid-sts.test.nhn.no",
        "https://",
        "helseid-sts.test.nhn.no",
        "https://helseid sts.test.nhn.no",
        "https://helseid-sts.test.nhn.no:99999",
        "",
    ],
)
def test_unacceptable_issuer_urls_are_refused(issuer: str) -> None:
    with pytest.raises(ValueError, match="issuer URL"):
        TrustedIssuer(issuer=issuer, audience=HELSEID_AUDIENCE)


@pytest.mark.parametrize("issuer", ["http://127.0.0.1:8080", "http://[::1]:8080", "http://localhost:1"])
def test_plain_http_is_accepted_for_loopback_only(issuer: str) -> None:
    assert TrustedIssuer(issuer=issuer, audience=HELSEID_AUDIENCE).discovery_url == issuer + DISCOVERY_PATH


def test_trusted_issuer_defaults_and_policy() -> None:
    trusted = TrustedIssuer(issuer="https://helseid-sts.test.nhn.no/", audience=HELSEID_AUDIENCE)
    assert trusted.discovery_url == "https://helseid-sts.test.nhn.no/.well-known/openid-configuration"
    policy = trusted.policy()
    assert policy.issuer == "https://helseid-sts.test.nhn.no/"  # exactly as configured
    assert policy.algorithms == HELSEID_TOKEN_ALGS
    assert policy.require_cnf is True
    assert policy.require_sub is False


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"algorithms": ("HS256",)}, "may not be allowed"),
        ({"algorithms": ("none",)}, "may not be allowed"),
        ({"algorithms": ()}, "empty"),
        ({"audience": ""}, "required"),
        ({"leeway": 301}, "leeway"),
        ({"jwks_uri": "http://keys.example/jwks"}, "jwks_uri"),
    ],
)
def test_bad_trusted_issuer_configuration_is_refused(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrustedIssuer(
            **{"issuer": "https://helseid-sts.test.nhn.no", "audience": HELSEID_AUDIENCE, **options}
        )


@pytest.mark.parametrize(
    "options",
    [
        {"min_refresh_interval": 0},
        {"min_refresh_interval": 700},
        {"max_age": 4000},
        {"max_stale": float("inf"), "max_age": 600},
        {"timeout": 0},
        {"timeout": 61},
    ],
)
def test_bad_cache_configuration_is_refused(options: dict[str, Any]) -> None:
    trusted = TrustedIssuer(issuer="https://helseid-sts.test.nhn.no", audience=HELSEID_AUDIENCE)
    settings = {"max_age": 600, "max_stale": 3600, "min_refresh_interval": 60, **options}
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        IssuerKeys(trusted, **settings)


def test_the_new_modules_stay_web_free() -> None:
    """Like tests/auth/test_package.py, for revocation, ratelimit and external."""
    imports = "import auth.revocation, auth.ratelimit, auth.external"
    forbidden = {"flask", "werkzeug", "sharing_api", "consent", "sqlalchemy"}
    check = f"import sys; print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r})))"
    result = subprocess.run(
        [sys.executable, "-c", f"{imports}; {check}"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
