"""Several replay claims in one step (``auth.replay.claim_all``; issue 12): the token endpoint claims the
client assertion's ``jti`` and the DPoP proof's in one Redis round trip, with the meaning of two claims
in turn. The contract runs against the in-memory cache, the plain Redis cache and the epoch cache the
server uses (``auth.replaystate.EpochReplayCache``), and against a cache that only has ``claim``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import redis

from auth.errors import StateUnavailable
from auth.replay import (
    Claim,
    DeferredClaims,
    InMemoryReplayCache,
    RedisReplayCache,
    ReplayCache,
    claim_all,
)
from auth.replaystate import EpochReplayCache, RedisState
from tests.auth.conftest import REDIS_URL


class _Ledger:
    """An epoch ledger in memory: the first epoch admits everything, a later one starts now."""

    def __init__(self) -> None:
        self.epochs = 0
        self.lock = threading.Lock()  # the SQL ledger serialises epoch starts with a row lock

    def begin_epoch(self, deployment: str, run_id: str, now: float, start: Callable[[float], None]) -> float:
        with self.lock:
            began = 0.0 if self.epochs == 0 else now
            self.epochs += 1
            start(began)
            return began

    def add(self, digest: str, expires_at: float) -> None:
        """No revocations in these tests."""

    def live(self, now: float) -> Sequence[tuple[str, float]]:
        return []


class _OneAtATime:
    """A third-party cache with ``claim`` only: :func:`claim_all` asks it claim by claim."""

    def __init__(self) -> None:
        self.inner = InMemoryReplayCache()
        self.calls = 0

    def claim(
        self, namespace: str, key: str, ttl_seconds: int, *, acceptable_from: float | None = None
    ) -> bool:
        self.calls += 1
        return self.inner.claim(namespace, key, ttl_seconds, acceptable_from=acceptable_from)


@pytest.fixture
def epoch_state(redis_client: redis.Redis) -> Iterator[RedisState]:
    prefix = f"{{dho-test-{uuid.uuid4().hex}}}:"
    yield RedisState(redis_client, deployment="test", ledger=_Ledger(), revocations=_Ledger(), prefix=prefix)
    keys = list(redis_client.scan_iter(match=f"{prefix}*", count=500))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture(params=["memory", "redis", "epoch", "claim-only"])
def cache(request: pytest.FixtureRequest) -> ReplayCache:
    if request.param == "memory":
        return InMemoryReplayCache()
    if request.param == "redis":
        replay: ReplayCache = request.getfixturevalue("redis_replay")
        return replay
    if request.param == "epoch":
        return EpochReplayCache(request.getfixturevalue("epoch_state"))
    return _OneAtATime()


def claim(key: str, namespace: str = "dpop-as", ttl: int = 60, acceptable_from: float | None = None) -> Claim:
    return Claim(namespace, key, ttl, acceptable_from if acceptable_from is not None else time.time())


def recorded(cache: ReplayCache, c: Claim) -> bool:
    """Whether ``c`` is already claimed (a fresh claim of it fails; it is recorded either way after)."""
    return not cache.claim(c.namespace, c.key, c.ttl, acceptable_from=c.acceptable_from)


def test_fresh_values_are_all_claimed(cache: ReplayCache) -> None:
    assertion, proof = claim("a", "client-assertion"), claim("p")
    assert claim_all(cache, [assertion, proof]) is None
    assert recorded(cache, assertion)
    assert recorded(cache, proof)


def test_the_same_pair_again_is_a_replay_of_the_first(cache: ReplayCache) -> None:
    pair = [claim("a", "client-assertion"), claim("p")]
    assert claim_all(cache, pair) is None
    assert claim_all(cache, pair) == 0


def test_a_replayed_first_value_leaves_the_second_unclaimed(cache: ReplayCache) -> None:
    """A replayed assertion does not spend the fresh proof sent with it."""
    assertion, proof = claim("a", "client-assertion"), claim("p")
    assert cache.claim(assertion.namespace, assertion.key, 60)
    assert claim_all(cache, [assertion, proof]) == 0
    assert not recorded(cache, proof)


def test_a_replayed_second_value_still_spends_the_first(cache: ReplayCache) -> None:
    """A fresh assertion sent with a replayed proof is spent, as with two claims in turn."""
    assertion, proof = claim("a", "client-assertion"), claim("p")
    assert cache.claim(proof.namespace, proof.key, 60)
    assert claim_all(cache, [assertion, proof]) == 1
    assert recorded(cache, assertion)


def test_one_value_twice_in_one_call_is_a_replay(cache: ReplayCache) -> None:
    assert claim_all(cache, [claim("same"), claim("same")]) == 1


def test_namespaces_keep_equal_keys_apart(cache: ReplayCache) -> None:
    assert claim_all(cache, [claim("k", "client-assertion"), claim("k", "dpop-as")]) is None


def test_nothing_to_claim_is_no_replay(cache: ReplayCache) -> None:
    assert claim_all(cache, []) is None


@pytest.mark.parametrize(("namespace", "ttl"), [("Bad Namespace", 60), ("dpop", 0), ("dpop", 10**9)])
def test_bad_arguments_are_programming_errors(cache: ReplayCache, namespace: str, ttl: int) -> None:
    with pytest.raises(ValueError, match=r"namespace|ttl_seconds"):
        claim_all(cache, [claim("k", namespace, ttl)])


def test_concurrent_requests_sharing_one_value_have_one_winner(cache: ReplayCache) -> None:
    """Fifty requests, each with its own assertion and the same proof: exactly one gets both claims."""
    assert claim_all(cache, [claim("warm")]) is None  # the epoch exists before the race
    barrier = threading.Barrier(50)
    results: list[int | None] = []
    lock = threading.Lock()

    def request(i: int) -> None:
        barrier.wait()
        outcome = claim_all(cache, [claim(f"assertion-{i}", "client-assertion"), claim("shared-proof")])
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(None) == 1
    assert results.count(1) == 49


def test_the_caches_of_this_package_claim_in_one_step(
    redis_client: redis.Redis, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plain Redis cache answers a pair with one command (EVALSHA), not one per claim.

    Counted on this client (what it sends), not in the server's ``commandstats``: those are the whole
    server's, and the suite's other worker sends EVALSHAs at the same time."""
    cache = RedisReplayCache(redis_client, prefix=redis_prefix)
    claim_all(cache, [claim("warm")])  # loads the script
    sent: list[str] = []
    send = redis_client.execute_command

    def counted(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]).upper())
        return send(*args, **options)

    monkeypatch.setattr(redis_client, "execute_command", counted)
    assertion, proof = claim("a", "client-assertion"), claim("p")
    assert claim_all(cache, [assertion, proof]) is None
    assert sent == ["EVALSHA"]
    monkeypatch.undo()
    assert recorded(cache, assertion)  # both claims were made by that one command
    assert recorded(cache, proof)


def test_a_cache_with_claim_only_is_asked_claim_by_claim() -> None:
    cache = _OneAtATime()
    assert claim_all(cache, [claim("a", "client-assertion"), claim("p")]) is None
    assert cache.calls == 2


def test_deferred_claims_record_without_claiming(cache: ReplayCache) -> None:
    deferred = DeferredClaims()
    assert deferred.claim("dpop-as", "jti", 71, acceptable_from=1.0) is True
    assert deferred.claims == [Claim("dpop-as", "jti", 71, 1.0)]
    assert claim_all(cache, deferred.claims) is None
    assert claim_all(cache, deferred.claims) == 0


def test_deferred_claims_check_their_arguments() -> None:
    with pytest.raises(ValueError, match="namespace"):
        DeferredClaims().claim("Bad Namespace", "jti", 71)


# --- the epoch rule (auth/replaystate.py) -------------------------------------------------------------


def test_a_value_acceptable_before_a_reset_epoch_is_refused(
    epoch_state: RedisState, redis_client: redis.Redis
) -> None:
    """After a reset (a second epoch, begun now) a value that could have been accepted before it is
    refused with StateUnavailable (503) and not recorded; the fresh claim before it in the same call
    is made, as with two claims in turn."""
    cache = EpochReplayCache(epoch_state)
    assert claim_all(cache, [claim("first-epoch")]) is None  # starts the deployment's first epoch
    redis_client.delete(epoch_state.epoch_key)  # the state is lost: the next call starts a new epoch
    later = time.time() + 5
    fresh = claim("fresh", "client-assertion", acceptable_from=later)
    old = claim("old", acceptable_from=time.time() - 60)
    with pytest.raises(StateUnavailable):
        claim_all(cache, [fresh, old])
    assert recorded(cache, fresh)
    assert not recorded(cache, Claim(old.namespace, old.key, old.ttl, later))


def test_a_retried_script_is_not_a_replay_of_itself(epoch_state: RedisState) -> None:
    """The same attempt sent twice (redis-py retries after a lost reply) is admitted twice; another
    attempt with the same values is a replay."""
    assert epoch_state.claim_all([claim("warm")])[0] == "ok"  # the epoch exists
    pair = [claim("a", "client-assertion"), claim("p")]
    keys = [epoch_state.epoch_key, *(epoch_state.claim_key(c) for c in pair)]
    args: list[object] = ["attempt-1"]
    for c in pair:
        args += [repr(float(c.acceptable_from or 0.0)), c.ttl]
    script = redis_script(epoch_state)
    assert script(keys=keys, args=args)[0] == b"ok"
    assert script(keys=keys, args=args)[0] == b"ok"
    assert script(keys=keys, args=["attempt-2", *args[1:]])[0] == b"replayed"


def test_a_server_that_does_not_know_the_script_still_admits(epoch_state: RedisState) -> None:
    """A Redis restarted or with its scripts flushed answers NOSCRIPT: the admission loads the script
    and is made, once (the claim counts, a second attempt is a replay)."""
    assert epoch_state.admit().status == "ok"  # the epoch exists
    epoch_state._admit.sha = "0" * 40  # a script this server never saw (its cache is shared: no flush)
    once = claim("after-noscript")
    assert epoch_state.admit(claim=once).status == "ok"
    assert epoch_state.admit(claim=once).status == "replayed"


def test_a_connection_the_server_closed_is_replaced(redis_client: redis.Redis) -> None:
    """An idle pooled connection cut by the server (a timeout, a restart) is dropped and the admission
    made on a fresh one, not answered 503."""
    prefix = f"{{dho-test-{uuid.uuid4().hex}}}:"
    with redis.Redis.from_url(REDIS_URL, socket_timeout=2) as client:
        state = RedisState(client, deployment="test", ledger=_Ledger(), revocations=_Ledger(), prefix=prefix)
        try:
            assert state.admit().status == "ok"
            cut = client.client_id()  # the pool's one connection, the one the admission used
            assert redis_client.client_kill_filter(_id=cut) == 1
            assert state.admit(claim=claim("after-cut")).status == "ok"
            assert client.client_id() != cut
        finally:
            client.delete(*client.scan_iter(match=f"{prefix}*"))


def redis_script(state: RedisState) -> Any:
    """The registered claim script of ``state``."""
    return state._claim_all  # the retry cannot be provoked from outside


def test_the_epoch_names_the_redis_server_process_exactly(
    epoch_state: RedisState, redis_client: redis.Redis
) -> None:
    """The scripts read the server's ``run_id`` out of ``INFO server`` (a plain find, issue 12): the
    epoch they start names the whole run_id, so a restarted or promoted server (another run_id) is told
    apart, and this server is not taken for another one (no reset on the next admission)."""
    assert epoch_state.admit().status == "ok"
    run_id = redis_client.info("server")["run_id"]
    assert len(run_id) == 40
    stored = redis_client.get(epoch_state.epoch_key)
    assert stored is not None
    assert stored.decode().split(" ")[1] == run_id
    assert epoch_state.generation == stored.decode()
    assert epoch_state.admit().status == "ok"
    assert redis_client.get(epoch_state.epoch_key) == stored  # the same epoch: not reset
