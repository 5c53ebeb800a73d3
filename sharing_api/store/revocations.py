"""Durable state behind the Redis caches: revoked tokens and replay epochs (auth/replaystate.py).

Implements :class:`auth.replaystate.DurableRevocations` and :class:`auth.replaystate.EpochLedger` on
SQL, so that Redis never holds the only copy of a revocation (issue 13 item 1) and a Redis that comes
back empty or fails over is recognised as a reset, not as a first start.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from sharing_api.store.schema import replay_epochs, revoked_tokens


def deployment_name(redis_url: str, prefix: str) -> str:
    """A stable name for one deployment's Redis (its URL and key prefix), without the password."""
    return hashlib.sha256(f"{redis_url}\x00{prefix}".encode()).hexdigest()


class RevocationLedger:
    """Revoked ``jti`` digests and replay epochs in SQL."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, digest: str, expires_at: float) -> None:
        """Insert (or extend) the revocation of ``digest``; expired rows are pruned on the way."""
        until = math.ceil(expires_at)
        with self._engine.begin() as conn:
            conn.execute(delete(revoked_tokens).where(revoked_tokens.c.expires_at < until - 7 * 24 * 3600))
            found = conn.execute(
                select(revoked_tokens.c.expires_at).where(revoked_tokens.c.jti_sha256 == digest)
            ).scalar_one_or_none()
            if found is None:
                conn.execute(insert(revoked_tokens).values(jti_sha256=digest, expires_at=until))
            elif found < until:
                conn.execute(
                    update(revoked_tokens)
                    .where(revoked_tokens.c.jti_sha256 == digest)
                    .values(expires_at=until)
                )

    def live(self, now: float) -> Sequence[tuple[str, float]]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(revoked_tokens.c.jti_sha256, revoked_tokens.c.expires_at).where(
                    revoked_tokens.c.expires_at > now
                )
            ).all()
        return [(str(digest), float(expires)) for digest, expires in rows]

    def begin_epoch(self, deployment: str, run_id: str, now: float, start: Callable[[float], None]) -> float:
        """See :meth:`auth.replaystate.EpochLedger.begin_epoch`; the start is rounded up to a second.

        Any epoch after the deployment's first is a reset, even on the same ``run_id`` (an epoch key
        that vanished from a running server, e.g. after ``FLUSHALL``, lost the claims with it).
        ``start`` runs inside the write transaction (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: the new
        row's unique-key lock or the existing row's lock), so concurrent starters queue: a worker that
        loses the race for the first epoch starts its reset epoch only after the first one is in Redis
        (where the Redis script keeps it), never before it.
        """
        began = math.ceil(now)
        failure: BaseException | None = None
        with self._engine.connect().execution_options(write=True) as conn, conn.begin():
            known = conn.execute(
                select(replay_epochs.c.deployment).where(replay_epochs.c.deployment == deployment)
            ).first()
            first = False
            if known is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(replay_epochs).values(deployment=deployment, run_id=run_id, began_at=0)
                        )
                    first = True
                except IntegrityError:  # another worker recorded the first epoch at the same moment
                    pass
            if not first:
                conn.execute(
                    update(replay_epochs)
                    .where(replay_epochs.c.deployment == deployment)
                    .values(run_id=run_id, began_at=began)
                )
            result = 0.0 if first else float(began)
            try:
                start(result)
            except BaseException as err:  # commit the record anyway: the epoch may be in Redis
                failure = err
        if failure is not None:
            raise failure
        return result
