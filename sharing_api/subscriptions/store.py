"""Subscriptions per tenant and the durable outbox of their notifications (SQL, both databases).

An event is put in the outbox by :meth:`SubscriptionStore.enqueue` inside the transaction of the write
that caused it, so a notification is never lost: not on a crash between the write and the delivery,
not on a restart. Delivery workers in any number of processes take due entries by a lease
(:meth:`claim`: one conditional UPDATE, so exactly one worker holds an entry at a time) and record the
outcome in the same transaction as its audit event.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, insert, select, update

from sharing_api.store.observations import render
from sharing_api.store.schema import notification_outbox, subscriptions

ACTIVE, ERROR, OFF = "active", "error", "off"
PENDING, DELIVERED, FAILED, DROPPED = "pending", "delivered", "failed", "dropped"


@dataclass(frozen=True, slots=True)
class Subscriber:
    """Who subscribed, as the token that created the subscription said: the sharing decision at every
    delivery is made for this organisation, health worker and purpose."""

    client_id: str
    consumer: str
    point_of_care: str | None
    practitioner_hpr: str | None
    purpose: str


@dataclass(frozen=True, slots=True)
class StoredSubscription:
    tenant: str
    id: str
    topic: str
    status: str
    patient: tuple[str, str]
    subscriber: Subscriber
    endpoint: str
    payload: str
    end_at: int | None
    events: int
    error: str | None
    updated: int
    data: bytes

    def resource(self) -> dict[str, Any]:
        """The Subscription as served: the accepted resource with the current status (and error)."""
        out: dict[str, Any] = orjson.loads(self.data)
        out["status"] = self.status
        if self.error:
            out["error"] = self.error
        return out


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    id: int
    tenant: str
    subscription_id: str
    event_number: int
    focus: str
    attempts: int
    created: int


def _stored(row: Any) -> StoredSubscription:
    return StoredSubscription(
        tenant=row.tenant,
        id=row.id,
        topic=row.topic,
        status=row.status,
        patient=(row.patient_system, row.patient_value),
        subscriber=Subscriber(
            row.client_id, row.consumer, row.point_of_care, row.practitioner_hpr, row.purpose
        ),
        endpoint=row.endpoint,
        payload=row.payload,
        end_at=row.end_at,
        events=row.events,
        error=row.error,
        updated=row.updated,
        data=row.data,
    )


class SubscriptionStore:
    def __init__(self, engine: Engine, clock: Callable[[], int]):
        self.engine = engine
        self.clock = clock
        """Microseconds since the epoch."""

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            yield conn

    # -- subscriptions ----------------------------------------------------------------------------

    def create_in(
        self,
        conn: Connection,
        tenant: str,
        *,
        topic: str,
        patient: tuple[str, str],
        subscriber: Subscriber,
        endpoint: str,
        payload: str,
        end_at: int | None,
        resource: dict[str, Any],
    ) -> StoredSubscription:
        sub_id = str(uuid.uuid4())
        now = self.clock()
        data = render("Subscription", {**resource, "status": ACTIVE}, sub_id, 1, now)
        values = {
            "tenant": tenant,
            "id": sub_id,
            "topic": topic,
            "status": ACTIVE,
            "patient_system": patient[0],
            "patient_value": patient[1],
            "client_id": subscriber.client_id,
            "consumer": subscriber.consumer,
            "point_of_care": subscriber.point_of_care,
            "practitioner_hpr": subscriber.practitioner_hpr,
            "purpose": subscriber.purpose,
            "endpoint": endpoint,
            "payload": payload,
            "end_at": end_at,
            "events": 0,
            "error": None,
            "created": now,
            "updated": now,
            "data": data,
        }
        conn.execute(insert(subscriptions).values(**values))
        stored = self.get(tenant, sub_id, conn)
        assert stored is not None
        return stored

    def get(self, tenant: str, sub_id: str, conn: Connection | None = None) -> StoredSubscription | None:
        s = subscriptions
        stmt = select(s).where(s.c.tenant == tenant, s.c.id == sub_id)
        if conn is not None:
            row = conn.execute(stmt).first()
        else:
            with self.engine.connect() as own:
                row = own.execute(stmt).first()
        return _stored(row) if row is not None else None

    def of_consumer(
        self, tenant: str, consumer: str, *, status: str | None = None, topic: str | None = None
    ) -> list[StoredSubscription]:
        s = subscriptions
        stmt = select(s).where(s.c.tenant == tenant, s.c.consumer == consumer)
        if status is not None:
            stmt = stmt.where(s.c.status == status)
        if topic is not None:
            stmt = stmt.where(s.c.topic == topic)
        with self.engine.connect() as conn:
            return [_stored(r) for r in conn.execute(stmt.order_by(s.c.created, s.c.id))]

    def set_status(
        self, conn: Connection, tenant: str, sub_id: str, status: str, error: str | None = None
    ) -> None:
        s = subscriptions
        conn.execute(
            update(s)
            .where(s.c.tenant == tenant, s.c.id == sub_id)
            .values(status=status, error=error, updated=self.clock())
        )

    def following(
        self, conn: Connection, tenant: str, topic: str, patients: Iterable[tuple[str, str]]
    ) -> list[StoredSubscription]:
        """The active subscriptions to ``topic`` at ``tenant`` naming one of ``patients`` (one query)."""
        wanted = set(patients)
        if not wanted:
            return []
        s = subscriptions
        rows = conn.execute(
            select(s).where(
                s.c.tenant == tenant,
                s.c.topic == topic,
                s.c.status == ACTIVE,
                s.c.patient_value.in_(sorted({p[1] for p in wanted})),
            )
        )
        return [sub for sub in map(_stored, rows) if sub.patient in wanted]

    # -- the outbox -------------------------------------------------------------------------------

    def enqueue(self, conn: Connection, sub: StoredSubscription, focus: str) -> int:
        """One notification of ``focus`` for ``sub``, in the caller's transaction; its event number
        (``events-since-subscription-start``), counted per subscription under its row lock."""
        s = subscriptions
        number = conn.execute(
            update(s)
            .where(s.c.tenant == sub.tenant, s.c.id == sub.id)
            .values(events=s.c.events + 1)
            .returning(s.c.events)
        ).scalar_one()
        now = self.clock()
        conn.execute(
            insert(notification_outbox).values(
                tenant=sub.tenant,
                subscription_id=sub.id,
                event_number=number,
                focus=focus,
                created=now,
                state=PENDING,
                attempts=0,
                next_attempt=now,
                lease_until=0,
            )
        )
        return int(number)

    def due(self, now: int, limit: int = 50) -> list[OutboxEntry]:
        """Pending entries whose next attempt is due and that no worker holds, oldest first."""
        o = notification_outbox
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    o.c.id,
                    o.c.tenant,
                    o.c.subscription_id,
                    o.c.event_number,
                    o.c.focus,
                    o.c.attempts,
                    o.c.created,
                )
                .where(o.c.state == PENDING, o.c.next_attempt <= now, o.c.lease_until <= now)
                .order_by(o.c.next_attempt, o.c.id)
                .limit(limit)
            ).all()
        return [OutboxEntry(*row) for row in rows]

    def claim(self, entry: OutboxEntry, now: int, lease: int) -> bool:
        """Hold ``entry`` until ``now + lease`` unless another worker holds it or it changed."""
        o = notification_outbox
        with self.writing() as conn:
            taken = conn.execute(
                update(o)
                .where(
                    o.c.id == entry.id,
                    o.c.state == PENDING,
                    o.c.attempts == entry.attempts,
                    o.c.lease_until <= now,
                )
                .values(lease_until=now + lease)
            ).rowcount
        return taken == 1

    def settle(
        self,
        conn: Connection,
        entry: OutboxEntry,
        *,
        state: str,
        attempts: int,
        next_attempt: int,
        result: str,
    ) -> None:
        o = notification_outbox
        conn.execute(
            update(o)
            .where(o.c.id == entry.id)
            .values(
                state=state, attempts=attempts, next_attempt=next_attempt, lease_until=0, last_result=result
            )
        )

    def entries(self, tenant: str, sub_id: str) -> list[dict[str, Any]]:
        """The outbox entries of one subscription, oldest first (for operators and tests)."""
        o = notification_outbox
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(o).where(o.c.tenant == tenant, o.c.subscription_id == sub_id).order_by(o.c.id)
            ).all()
        return [dict(r._mapping) for r in rows]
