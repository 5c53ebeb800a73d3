"""Request state in Redis that survives Redis loss: the replay epoch and the one-round-trip admission.

security-tests REL-01/REL-03, issue 13 item 1, issue 12 ("one Redis round trip for replay claim +
revocation + rate limit").

**The epoch rule.** Redis may lose what it holds: a restart without persistence comes back empty, and a
Sentinel or Cluster failover promotes a replica that may miss the last writes it acknowledged
(asynchronous replication). Either way the replay cache could re-admit a proof or client assertion that
was already used. So every piece of replay state belongs to an *epoch*: the key ``<prefix>epoch`` holds
``"<began> <run_id>"``, the wall-clock second the state began and the ``run_id`` of the Redis server
that holds it. A restarted server or a promoted replica has another ``run_id``, so the first request
after the event finds the epoch stale and starts a new one. From then on a one-time value is refused
(:data:`STALE`, answered 503 "retry with a fresh proof") if it *could have been accepted before the
epoch began*: its caller passes ``acceptable_from`` (for a DPoP proof ``iat - max_skew``, for a client
assertion ``iat - skew``) and the value is refused while ``acceptable_from < began``. A used value
always has ``acceptable_from`` before its use, so no value used under an old epoch is ever admitted
under a new one. The price: for ``max_skew`` seconds after a reset (10 s for DPoP) requests fail with
503 and clients retry.

The very first epoch of a deployment refuses nothing (nothing can have been accepted before it): the
:class:`EpochLedger` (SQL) remembers per deployment whether an epoch ever began. A restart, a failover,
a flushed database or a server swap under the same ``DHO_REDIS_URL`` is a *reset*. (Pointing
``DHO_REDIS_URL`` at another Redis starts that deployment's first epoch: change it only with the API
stopped for the proof window, 71 s.)

**Revocations** are durable in SQL (:class:`DurableRevocations`); Redis is a cache of the live ones.
Starting an epoch copies every live revocation from SQL into Redis before the epoch key is written, in
one script, so a revoked token is refused again the moment the new epoch exists. Revoking writes SQL
first, then Redis.

**DPoP nonces rotate** with the epoch: :attr:`RedisState.generation` is mixed into the nonce MAC
(:class:`~auth.replay.NonceSource`), so nonces issued before a failover are refused after it.

**One round trip.** :meth:`RedisState.admit` runs one Lua script that checks the epoch, the revocation
of the access token, claims the proof's ``jti`` (``SET NX GET`` with a per-attempt id, so a client-side
retry of the same script is not mistaken for a replay) and counts the rate limit, then, with
``min_replica_acks`` set, ``WAIT <n> <ms>`` on the same connection (one pipeline): a claim no replica
acknowledged does not count (503; the client retries with a fresh proof). All keys share the hash tag
``{dho}`` so the script also runs on Redis Cluster (one slot).

Failure policy: **closed**. Any Redis error, a missing replica acknowledgement or an unreachable ledger
raises :class:`~auth.errors.StateUnavailable` (503 with ``Retry-After``).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import hiredis
import redis
import redis.exceptions

from auth.errors import StateUnavailable
from auth.replay import Claim, check_claim

__all__ = [
    "ADMITTED",
    "REPLAYED",
    "REVOKED",
    "STALE",
    "Claim",
    "DurableRevocations",
    "EpochLedger",
    "RedisState",
    "Verdict",
    "revocation_digest",
]

ADMITTED = "ok"
REVOKED = "revoked"
REPLAYED = "replayed"
STALE = "stale"
_RESET = "reset"

# The server process's run_id (sets `run_id`; nil if INFO has none). A plain find of 'run_id:' and a
# match anchored after it: ``string.match(info, 'run_id:(%w+)')`` tried the pattern at each of the
# ~400 bytes before it. Redis 7.0's CPU per script of INFO and the run_id, 5,000 pipelined EVALSHA
# per round, 3 rounds: 8.2-13.0 µs with that pattern, 6.1-7.8 µs so, INFO alone 5.4-5.7 µs.
_SERVER_RUN_ID = """
local info = redis.call('INFO', 'server')
local at = string.find(info, 'run_id:', 1, true)
local run_id = at and string.match(info, '^%w+', at + 7)
"""

# The epoch check every admission starts with (KEYS[1] is the epoch key): {'reset', run_id} when the
# epoch is missing or was begun by another server process; else `epoch` and `began` are set.
_EPOCH = (
    _SERVER_RUN_ID
    + """
local epoch = redis.call('GET', KEYS[1])
if not epoch then return {'reset', run_id} end
local began, owner = string.match(epoch, '^(%S+) (%w+)$')
if owner ~= run_id then return {'reset', run_id} end
"""
)

# KEYS: 1 epoch, 2 revocation, 3 claim, 4 rate counter (unused ones repeat the epoch key).
# ARGV: 1 acceptable_from ('' = none), 2 claim ttl, 3 attempt id, 4 rate window, 5 parts ('r','c','l').
_ADMIT = (
    _EPOCH
    + """
local parts = ARGV[5]
if ARGV[1] ~= '' and tonumber(ARGV[1]) < tonumber(began) then return {'stale', epoch} end
if string.find(parts, 'r', 1, true) and redis.call('EXISTS', KEYS[2]) == 1 then
  return {'revoked', epoch}
end
if string.find(parts, 'c', 1, true) then
  local prev = redis.call('SET', KEYS[3], ARGV[3], 'NX', 'EX', ARGV[2], 'GET')
  if prev and prev ~= ARGV[3] then return {'replayed', epoch} end
end
local count = 0
if string.find(parts, 'l', 1, true) then
  count = redis.call('INCR', KEYS[4])
  redis.call('EXPIRE', KEYS[4], ARGV[4])
end
return {'ok', epoch, count}
"""
)

# Several claims in order (auth.replay.claim_all), each as _ADMIT makes one. KEYS: 1 epoch, 2.. the
# claims. ARGV: 1 attempt id, then per claim its acceptable_from ('' = none) and its ttl. The first stale
# or replayed claim stops the script (the claims before it stay made); the third element is its 1-based
# index. A key holding this attempt's own value for it is not a replay (a retry after a lost reply).
_CLAIM_ALL = (
    _EPOCH
    + """
for i = 1, #KEYS - 1 do
  local from = ARGV[2 * i]
  if from ~= '' and tonumber(from) < tonumber(began) then return {'stale', epoch, i} end
  local mine = ARGV[1] .. ':' .. i
  local prev = redis.call('SET', KEYS[i + 1], mine, 'NX', 'EX', ARGV[2 * i + 1], 'GET')
  if prev and prev ~= mine then return {'replayed', epoch, i} end
end
return {'ok', epoch, 0}
"""
)

# KEYS: 1 epoch, 2.. revocation keys. ARGV: 1 began, 2.. their ttls.
_BEGIN = (
    _SERVER_RUN_ID
    + """
local epoch = redis.call('GET', KEYS[1])
if epoch then
  local _, owner = string.match(epoch, '^(%S+) (%w+)$')
  if owner == run_id then return epoch end
end
for i = 2, #KEYS do redis.call('SET', KEYS[i], '1', 'EX', ARGV[i]) end
epoch = ARGV[1] .. ' ' .. run_id
redis.call('SET', KEYS[1], epoch)
return epoch
"""
)

_RUN_ID = _SERVER_RUN_ID + "return run_id"


class EpochLedger(Protocol):
    """Durable record (SQL) of the replay epochs of each deployment."""

    def begin_epoch(self, deployment: str, run_id: str, now: float, start: Callable[[float], None]) -> float:
        """Record that ``deployment``'s replay state now lives in the server ``run_id``; return the
        second from which values are admitted: ``0.0`` for the deployment's first epoch ever, else
        ``now`` (a reset: the state was lost, whatever the reason).

        ``start(began)`` writes the epoch to Redis; it is called while the record is locked, so the
        epoch starts of one deployment are serialised (two workers that find the same empty Redis at
        once: the second one's reset epoch must not overtake the first epoch in Redis). The record is
        kept even when ``start`` raises (it re-raises after the commit): the epoch may be in Redis."""
        ...


class DurableRevocations(Protocol):
    """Revoked access tokens in durable storage (SQL), by SHA-256 of their ``jti``."""

    def add(self, digest: str, expires_at: float) -> None:
        """Remember ``digest`` as revoked until ``expires_at`` (epoch seconds, grace included)."""
        ...

    def live(self, now: float) -> Sequence[tuple[str, float]]:
        """Every revocation whose ``expires_at`` is after ``now``."""
        ...


def revocation_digest(jti: str) -> str:
    """The stored name of a revoked ``jti``: its SHA-256 hex (fixed size, no raw identifier stored)."""
    if not isinstance(jti, str) or not jti:
        raise ValueError("jti must be a non-empty string")
    return hashlib.sha256(jti.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer of one admission: :data:`ADMITTED`, :data:`REVOKED`, :data:`REPLAYED` or :data:`STALE`,
    and the rate counter after this hit (0 when no rate limit was counted)."""

    status: str
    count: int


class RedisState:
    """Replay claims, revocations and rate counters of one deployment in one Redis (or Sentinel
    master, or Cluster slot), under the epoch rule.

    :param client: ``redis.Redis`` (also from ``Sentinel.master_for``) or ``redis.cluster.RedisCluster``;
        give it short socket timeouts and few retries.
    :param deployment: names this deployment's Redis in the :class:`EpochLedger` (the Redis URL).
    :param ledger: durable epochs.
    :param revocations: durable revocations.
    :param prefix: key prefix; must contain a hash tag (``{...}``) so every key lands in one slot.
    :param min_replica_acks: with ``n > 0``, a write counts only when ``WAIT n wait_ms`` says ``n``
        replicas have it (Sentinel deployments); otherwise 503.
    :param wait_ms: how long ``WAIT`` may block.
    :param clock: wall-clock seconds (the epoch start is in the same terms as ``iat``).
    """

    def __init__(
        self,
        client: Any,
        *,
        deployment: str,
        ledger: EpochLedger,
        revocations: DurableRevocations,
        prefix: str = "{dho}:",
        min_replica_acks: int = 0,
        wait_ms: int = 200,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if "{" not in prefix or "}" not in prefix:
            raise ValueError("the key prefix needs a hash tag such as {dho} (Redis Cluster: one slot)")
        self._client = client
        self._deployment = deployment
        self._ledger = ledger
        self._revocations = revocations
        self._prefix = prefix
        self._acks = min_replica_acks
        self._wait_ms = wait_ms
        self._clock = clock
        # One server or a Sentinel master (``Sentinel.master_for`` makes a ``redis.Redis``): scripts go
        # straight to a connection of its pool (``_direct``); Cluster clients route by slot and
        # anything else goes through redis-py's own calls.
        plain = type(client) is redis.Redis and client.connection is None
        self._pool: Any = client.connection_pool if plain else None
        self._admit = client.register_script(_ADMIT)
        self._claim_all = client.register_script(_CLAIM_ALL)
        self._begin = client.register_script(_BEGIN)
        self._run_id = client.register_script(_RUN_ID)
        self.generation = ""
        """The current epoch as last seen by this process (``"<began> <run_id>"``); mixed into nonces."""

    @property
    def epoch_key(self) -> str:
        return self._prefix + "epoch"

    def revocation_key(self, jti: str) -> str:
        return f"{self._prefix}revoked:{revocation_digest(jti)}"

    def claim_key(self, claim: Claim) -> str:
        digest = hashlib.sha256(claim.key.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{self._prefix}replay:{claim.namespace}:{digest}"

    def rate_key(self, key: str, window_index: int) -> str:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"{self._prefix}ratelimit:{digest}:{window_index}"

    def admit(
        self,
        *,
        revoked_jti: str | None = None,
        claim: Claim | None = None,
        rate: tuple[str, int, int] | None = None,
    ) -> Verdict:
        """One round trip: epoch, then revocation of ``revoked_jti``, then ``claim``, then one hit on
        the rate counter ``rate = (key, window_index, window_seconds)``. A refused step stops the
        script, so a revoked token never burns its proof and neither counts against the rate limit.

        :raise StateUnavailable: Redis, the ledger or the replica acknowledgement failed.
        """
        epoch = self.epoch_key
        keys = [
            self.revocation_key(revoked_jti) if revoked_jti else epoch,
            self.claim_key(claim) if claim else epoch,
            self.rate_key(rate[0], rate[1]) if rate else epoch,
        ]
        parts = ("r" if revoked_jti else "") + ("c" if claim else "") + ("l" if rate else "")
        args = [
            "" if claim is None or claim.acceptable_from is None else repr(float(claim.acceptable_from)),
            claim.ttl if claim else 1,
            _attempt_id(),
            rate[2] if rate else 1,
            parts,
        ]
        for _ in range(3):
            reply = self._run(self._admit, keys=[epoch, *keys], args=args, writes=claim is not None)
            status = _text(reply[0])
            if status != _RESET:
                self.generation = _text(reply[1])
                count = int(reply[2]) if len(reply) > 2 else 0
                return Verdict(status, count)
            self._start_epoch(_text(reply[1]))
        raise StateUnavailable("the replay state keeps being reset")

    def claim_all(self, claims: Sequence[Claim]) -> tuple[str, int]:
        """One round trip: the epoch, then ``claims`` in order (:func:`auth.replay.claim_all`).
        Returns :data:`ADMITTED` (all recorded), or :data:`STALE` / :data:`REPLAYED` with the index of
        the first such claim (the ones before it are recorded, it and the ones after are not).

        :raise StateUnavailable: Redis, the ledger or the replica acknowledgement failed.
        """
        epoch = self.epoch_key
        keys = [epoch, *(self.claim_key(c) for c in claims)]
        args: list[Any] = [_attempt_id()]
        for c in claims:
            args += ["" if c.acceptable_from is None else repr(float(c.acceptable_from)), c.ttl]
        for _ in range(3):
            reply = self._run(self._claim_all, keys=keys, args=args, writes=True)
            status = _text(reply[0])
            if status != _RESET:
                self.generation = _text(reply[1])
                return status, int(reply[2]) - 1
            self._start_epoch(_text(reply[1]))
        raise StateUnavailable("the replay state keeps being reset")

    def current_generation(self) -> str:
        """:attr:`generation` for the nonce MAC; a process that has not seen the epoch yet reads it
        (one admission without a claim, starting the epoch if there is none) instead of using ``""``.
        Otherwise a fresh worker would issue or check nonces under another generation than a worker
        that has admitted a request, and refuse the nonces of the other.

        :raise StateUnavailable: Redis or the ledger failed.
        """
        if not self.generation:
            self.admit()
        return self.generation

    def revoke(self, jti: str, expires_at: float) -> None:
        """Revoke ``jti`` until ``expires_at`` (grace included): SQL first, then the Redis cache.

        If Redis fails after the SQL commit the revocation is durable anyway (the next epoch loads it)
        and :class:`StateUnavailable` tells the caller to retry.
        """
        ttl = math.ceil(expires_at - self._clock())
        if ttl <= 0:
            return
        self._revocations.add(revocation_digest(jti), expires_at)
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.set(self.revocation_key(jti), b"1", ex=ttl)
            if self._acks:
                pipe.execute_command("WAIT", self._acks, self._wait_ms)
            replies = pipe.execute()
        except redis.exceptions.RedisError as err:
            raise StateUnavailable("revocation cache unavailable") from err
        if self._acks and int(replies[-1]) < self._acks:
            raise StateUnavailable("the revocation was not acknowledged by a replica")

    def _run(self, script: Any, *, keys: list[str], args: list[Any], writes: bool) -> list[Any]:
        wait = writes and self._acks > 0
        try:
            replies = self._direct(script, keys, args, wait) if self._pool is not None else None
            if replies is None:
                replies = self._through_client(script, keys, args, wait)
        except redis.exceptions.RedisError as err:
            raise StateUnavailable("replay state unavailable") from err
        reply = replies[0]
        if wait and _text(reply[0]) == ADMITTED and int(replies[1]) < self._acks:
            # Fail closed: the claim may vanish in a failover; the client retries with a fresh proof.
            raise StateUnavailable("the replay claim was not acknowledged by a replica")
        return list(reply)

    def _through_client(self, script: Any, keys: list[str], args: list[Any], wait: bool) -> list[Any]:
        """The script's reply (then ``WAIT``'s) through redis-py's ``Script`` (any client; it loads the
        script where the server does not know it) and a pipeline."""
        if not wait:
            return [script(keys=keys, args=args)]
        pipe = self._client.pipeline(transaction=False)
        script(keys=keys, args=args, client=pipe)
        pipe.execute_command("WAIT", self._acks, self._wait_ms)
        return list(pipe.execute())

    def _direct(self, script: Any, keys: list[str], args: list[Any], wait: bool) -> list[Any] | None:
        """``EVALSHA`` of ``script`` (then ``WAIT`` when ``wait``) on a connection of the client's pool,
        both sent at once: the replies, or ``None`` when the server does not know the script (the
        caller then runs it through redis-py, which loads it).

        What ``Script.__call__`` and a pipeline do, without their layers (command dispatch, response
        callbacks, observability hooks, script bookkeeping, redis-py's argument handling before it
        calls ``hiredis.pack_command`` as here: ~90k instructions of a request's Redis call). The
        rest is redis-py's own: the pool's checkout (fork check, a connection with unread data is
        dropped), hiredis reading the replies, and the client's retry policy on a connection or timeout
        error (the connection is closed before each retry; a retried claim carries the same attempt id,
        so it is not taken for a replay). On any other error the connection is closed too (the
        ``WAIT`` reply may be unread), never reused."""
        pool = self._pool
        conn = pool.get_connection()
        packed = hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
        if wait:
            wait_command: tuple[Any, ...] = ("WAIT", self._acks, self._wait_ms)
            packed += hiredis.pack_command(wait_command)

        def exchange() -> list[Any]:
            conn.send_packed_command((packed,))
            return [conn.read_response() for _ in range(2 if wait else 1)]

        try:
            return list(conn.retry.call_with_retry(exchange, lambda _error: conn.disconnect()))
        except redis.exceptions.NoScriptError:
            conn.disconnect()
            return None
        except BaseException:
            conn.disconnect()
            raise
        finally:
            # as redis-py (7+) does after a command when the server announced maintenance
            should_reconnect = getattr(conn, "should_reconnect", None)
            if should_reconnect is not None and should_reconnect():
                conn.disconnect()
            pool.release(conn)

    def _start_epoch(self, run_id: str) -> None:
        now = self._clock()

        def start(began: float) -> None:
            try:
                live = self._revocations.live(now)
            except Exception as err:  # the ledger is SQL; any failure there must fail closed
                raise StateUnavailable("the durable replay ledger is unavailable") from err
            keys = [self.epoch_key] + [f"{self._prefix}revoked:{digest}" for digest, _ in live]
            args = [repr(float(began))] + [max(1, math.ceil(expires - now)) for _, expires in live]
            try:
                self._begin(keys=keys, args=args)
            except redis.exceptions.RedisError as err:
                raise StateUnavailable("replay state unavailable") from err

        try:
            self._ledger.begin_epoch(self._deployment, run_id, now, start)
        except StateUnavailable:
            raise
        except Exception as err:  # the ledger is SQL; any failure there must fail closed
            raise StateUnavailable("the durable replay ledger is unavailable") from err


def _attempt_id() -> str:
    """A fresh id for one admission (its retries carry the same): 128 random bits in hex, as
    ``uuid4().hex`` had 122, without building a ``UUID`` (a third of the instructions)."""
    return os.urandom(16).hex()


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class EpochReplayCache:
    """:class:`~auth.replay.ReplayCache` on :class:`RedisState`: a claim under the epoch rule.

    A value that could have been accepted before the epoch began raises :class:`StateUnavailable`
    (503: retry with a fresh proof or assertion), never ``True``.
    """

    def __init__(self, state: RedisState) -> None:
        self._state = state

    def claim(
        self, namespace: str, key: str, ttl_seconds: int, *, acceptable_from: float | None = None
    ) -> bool:
        check_claim(namespace, ttl_seconds)
        verdict = self._state.admit(claim=Claim(namespace, key, ttl_seconds, acceptable_from))
        if verdict.status == STALE:
            raise StateUnavailable("the replay state was reset after this value could have been used")
        return verdict.status == ADMITTED

    def claim_all(self, claims: Sequence[Claim]) -> int | None:
        """:func:`auth.replay.claim_all` in one round trip; a claim that could have been accepted before
        the epoch began raises :class:`StateUnavailable` (the claims before it are recorded)."""
        for c in claims:
            check_claim(c.namespace, c.ttl)
        status, index = self._state.claim_all(claims)
        if status == STALE:
            raise StateUnavailable("the replay state was reset after this value could have been used")
        return index if status == REPLAYED else None


class CachedRevocationList:
    """:class:`~auth.revocation.RevocationList` durable in SQL with Redis as the cache (RedisState)."""

    def __init__(self, state: RedisState, *, grace_seconds: int = 300) -> None:
        self._state = state
        self._grace = grace_seconds

    def revoke(self, jti: str, expires_at: float, now: float) -> None:
        revocation_digest(jti)
        if not (math.isfinite(expires_at) and math.isfinite(now)):
            raise ValueError("expires_at and now must be finite numbers")
        if expires_at + self._grace <= now:
            return
        self._state.revoke(jti, expires_at + self._grace)

    def is_revoked(self, jti: str) -> bool:
        return self._state.admit(revoked_jti=jti).status == REVOKED
