"""The emitter: what the rest of the code calls when an event of a topic happens.

``services.notifications.emit(tenant, topic, patient, reference, conn=...)`` puts one notification per
active subscription to ``topic`` naming ``patient`` into the outbox, inside the caller's write
transaction (``conn``), so the event and its notifications commit together or not at all. Who may
receive it is decided at delivery (:mod:`sharing_api.subscriptions.delivery`), not here.

New measurements are hooked in :meth:`Notifications.observations_written` (the publisher calls it in
every write transaction): a *created* Observation of a patient someone follows is tested with
:attr:`Notifications.outside_plan` ``(tenant, patient, observation)``, a predicate the composition
root injects (default: never; the care plan's threshold check is wired there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from sqlalchemy import Connection

from sharing_api.fhir.validation import ValidObservation
from sharing_api.store.observations import Stored
from sharing_api.subscriptions.store import SubscriptionStore
from sharing_api.subscriptions.topics import OBSERVATION_OUTSIDE_PLAN, TOPICS, Topic

OutsidePlan = Callable[[str, tuple[str, str], Mapping[str, Any]], bool]
"""``(tenant, patient (system, value), observation JSON as stored) -> True`` when the measurement
breaches the patient's active plan."""


def never(tenant: str, patient: tuple[str, str], observation: Mapping[str, Any]) -> bool:
    """The default predicate: no plan, so nothing is outside one."""
    return False


class Notifications:
    def __init__(self, store: SubscriptionStore):
        self.store = store
        #: set by the composition root; evaluated inside the publishing transaction, so keep it quick
        self.outside_plan: OutsidePlan = never

    def emit(
        self,
        tenant: str,
        topic: Topic | str,
        patient: tuple[str, str],
        reference: str,
        *,
        conn: Connection | None = None,
    ) -> int:
        """Notify the followers of ``patient`` at ``tenant`` of ``reference`` (a versioned reference such
        as ``CarePlan/<id>/_history/<n>``); how many notifications were queued. Without ``conn`` it
        commits on its own (then an event committed just before could be lost in a crash between)."""
        chosen = TOPICS[topic] if isinstance(topic, str) else topic
        if conn is None:
            with self.store.writing() as own:
                return self._emit(own, tenant, chosen, [(patient, reference)])
        return self._emit(conn, tenant, chosen, [(patient, reference)])

    def _emit(
        self, conn: Connection, tenant: str, topic: Topic, events: Iterable[tuple[tuple[str, str], str]]
    ) -> int:
        events = list(events)
        followers = self.store.following(conn, tenant, topic.url, {p for p, _ in events})
        queued = 0
        for patient, reference in events:
            for sub in followers:
                if sub.patient == patient:
                    self.store.enqueue(conn, sub, reference)
                    queued += 1
        return queued

    def observations_written(
        self, conn: Connection, tenant: str, writes: list[tuple[ValidObservation, Stored]]
    ) -> None:
        """The publisher's hook: queue ``observation-outside-plan`` notifications for new measurements
        of followed patients that breach the plan. One query finds the followers of the whole write."""
        created = [(valid, stored) for valid, stored in writes if stored.created]
        if not created:
            return
        topic = OBSERVATION_OUTSIDE_PLAN
        followed = {
            s.patient for s in self.store.following(conn, tenant, topic.url, {v.patient for v, _ in created})
        }
        events = [
            (valid.patient, f"Observation/{stored.id}/_history/{stored.version_id}")
            for valid, stored in created
            if valid.patient in followed
            and self.outside_plan(tenant, valid.patient, orjson.loads(stored.data))
        ]
        if events:
            self._emit(conn, tenant, topic, events)
