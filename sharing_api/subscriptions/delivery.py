"""Delivering notifications: the outbox worker, the sharing decision at delivery time, the signed POST.

:class:`DeliveryWorker` takes due outbox entries (a lease, so several processes may run it), decides
afresh whether the subscriber may still receive this event (agreement, reservation, block: the policy
of the moment of delivery, not of subscribing), and POSTs the notification Bundle to the rest-hook
endpoint with ``Authorization: DPoP <token>`` and a ``DPoP`` proof (:class:`Sender`). A 2xx answer
delivers it; anything else is retried with exponential backoff and jitter (:class:`Backoff`) until the
last attempt, after which the entry is ``failed`` and the Subscription's status ``error``. Every attempt
and every refusal is one AuditEvent in the controller's log, in the transaction that records the entry's
new state. :meth:`DeliveryWorker.step` is one pass at a given moment: the background thread calls it
with the wall clock, tests with a clock of their own.

The token is an RFC 9068 access token from our own issuer key (verifiable against our JWKS), with
``aud`` the endpoint URL, ``client_id`` :data:`NOTIFIER_CLIENT_ID`, the controller's org.nr as
``orgnr_parent`` and ``cnf.jkt`` binding it to this worker's DPoP key (RFC 9449 §6.1); the proof
carries ``htm`` POST, ``htu`` the endpoint and ``ath`` the token's hash.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import requests
from joserfc.jwk import ECKey
from sqlalchemy import Connection

from auth.client import dpop_proof
from auth.keys import SigningKeySet
from auth.tokens import issue_access_token
from consent.model import PatientId, PurposeOfUse
from consent.policy import AccessRequest, Decision
from sharing_api.access import AccessPolicy, scope_of, version_visible
from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.events import AuditFacts, SharingDecision
from sharing_api.auditing import Auditor
from sharing_api.fhir.dates import format_instant
from sharing_api.store.tenants import TenantDirectory, TenantRecord
from sharing_api.subscriptions.egress import EgressPolicy
from sharing_api.subscriptions.notification import notification_bundle
from sharing_api.subscriptions.store import (
    ACTIVE,
    DELIVERED,
    DROPPED,
    ERROR,
    FAILED,
    OFF,
    PENDING,
    OutboxEntry,
    StoredSubscription,
    SubscriptionStore,
)
from sharing_api.subscriptions.topics import TOPICS, Topic

log = logging.getLogger("dho_share.subscriptions")

NOTIFIER_CLIENT_ID = "dho-share-notifier"
"""``client_id`` (and ``sub``) of the tokens notifications carry."""
NOTIFY_SCOPE = "dho-share/subscription.notify"
TOKEN_LIFETIME = 60
FHIR_JSON = "application/fhir+json"

ResourceLoader = Callable[[str, str], bytes | None]
"""``(tenant, versioned reference) -> stored JSON`` of a focus resource, ``None`` if unknown; registered
in :attr:`DeliveryWorker.loaders` by resource type (the reference's first segment)."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: attempt ``n`` (1-based) failed -> wait between half and all of
    ``min(cap, base * 2**(n-1))`` seconds ("equal jitter"), so retries of many subscriptions spread out."""

    base: float
    cap: float
    max_attempts: int

    def delay(self, attempts: int, rng: Callable[[], float]) -> float:
        ceiling = min(self.cap, self.base * 2.0 ** (attempts - 1))
        return float(ceiling / 2 + rng() * ceiling / 2)


def _without_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class Sender:
    """Signs a token and proof for one POST and sends it; never follows a redirect."""

    def __init__(
        self,
        keyset: Callable[[], SigningKeySet],
        *,
        issuer: str,
        timeout: float,
        clock: Callable[[], float],
        egress: EgressPolicy | None = None,
    ):
        self.keyset = keyset
        #: Which addresses may be contacted (public only, by default: no SSRF into our own network).
        self.egress = egress or EgressPolicy()
        self.issuer = issuer
        self.timeout = timeout
        self.clock = clock
        #: This process's DPoP key: every token it sends is bound to it (``cnf.jkt``).
        self.key = ECKey.generate_key("P-256", private=True)

    def post(self, endpoint: str, body: bytes, *, controller: str) -> tuple[int | None, str]:
        """``(status, what happened)``; status ``None`` when no HTTP answer came (or none was asked for:
        an endpoint that resolves to an address :class:`EgressPolicy` refuses is not contacted)."""
        refused = self.egress.refusal(endpoint)
        if refused is not None:
            return None, f"not sent: {refused}"
        now = self.clock()
        audience = _without_query(endpoint)
        token = issue_access_token(
            self.keyset(),
            issuer=self.issuer,
            client_id=NOTIFIER_CLIENT_ID,
            scopes=[NOTIFY_SCOPE],
            jkt=self.key.thumbprint(),
            now=now,
            lifetime=TOKEN_LIFETIME,
            audience=audience,
            orgnr_parent=controller,
        ).token
        headers = {
            "Content-Type": f"{FHIR_JSON}; charset=utf-8",
            "Authorization": f"DPoP {token}",
            "DPoP": dpop_proof(self.key, method="POST", url=endpoint, now=now, access_token=token),
        }
        try:
            answer = requests.post(
                endpoint, data=body, headers=headers, timeout=self.timeout, allow_redirects=False
            )
        except requests.RequestException as exc:
            return None, f"no answer ({type(exc).__name__})"
        answer.close()
        return answer.status_code, f"HTTP {answer.status_code}"


class DeliveryWorker:
    """One pass over the due outbox entries: :meth:`step`."""

    def __init__(
        self,
        store: SubscriptionStore,
        *,
        tenants: TenantDirectory,
        access: AccessPolicy,
        auditor: Auditor,
        sender: Sender,
        backoff: Backoff,
        loaders: Mapping[str, ResourceLoader],
        base_url: str,
        lease_seconds: float = 60.0,
        rng: Callable[[], float] = random.random,
    ):
        self.store = store
        self.tenants = tenants
        self.access = access
        self.auditor = auditor
        self.sender = sender
        self.backoff = backoff
        self.loaders = loaders
        self.base_url = base_url
        self.lease_seconds = lease_seconds
        self.rng = rng

    def step(self, now: float) -> int:
        """Deliver (or retry, or drop) every entry due at ``now`` (epoch seconds); how many were handled."""
        at = int(now * 1_000_000)
        handled = 0
        for entry in self.store.due(at):
            if not self.store.claim(entry, at, int(self.lease_seconds * 1_000_000)):
                continue  # another worker holds it
            self._handle(entry, now)
            handled += 1
        return handled

    # -- one entry --------------------------------------------------------------------------------

    def _handle(self, entry: OutboxEntry, now: float) -> None:
        at = int(now * 1_000_000)
        sub = self.store.get(entry.tenant, entry.subscription_id)
        tenant = self.tenants.get(entry.tenant)
        topic = TOPICS.get(sub.topic) if sub is not None else None
        if sub is None or tenant is None or topic is None or sub.status != ACTIVE:
            with self.store.writing() as conn:
                self._settle(conn, entry, DROPPED, entry.attempts, at, "the subscription is not active")
            return
        if sub.end_at is not None and sub.end_at <= at:
            with self.store.writing() as conn:
                self.store.set_status(conn, sub.tenant, sub.id, OFF)
                self._settle(conn, entry, DROPPED, entry.attempts, at, "the subscription has ended")
            return
        decision = self._decide(sub, tenant, topic, now)
        loader = self.loaders.get(entry.focus.split("/", 1)[0])
        data = loader(sub.tenant, entry.focus) if loader is not None else None
        refusal = self._refusal(decision, topic, data, needs_data=sub.payload == "full-resource")
        if refusal is not None:
            with self.store.writing() as conn:
                self._settle(conn, entry, DROPPED, entry.attempts, at, refusal)
                self._audit(conn, sub, entry, decision, Outcome.MINOR_FAILURE, f"not delivered: {refusal}")
            return
        body = notification_bundle(
            base=f"{self.base_url}/{sub.tenant}/fhir",
            subscription_id=sub.id,
            topic=sub.topic,
            event_number=entry.event_number,
            timestamp=format_instant(entry.created),
            focus=entry.focus,
            resource=data if sub.payload == "full-resource" else None,
        )
        status, result = self.sender.post(sub.endpoint, body, controller=sub.tenant)
        attempts = entry.attempts + 1
        said = f"attempt {attempts} of {self.backoff.max_attempts}: {result}"
        with self.store.writing() as conn:
            if status is not None and 200 <= status < 300:
                self._settle(conn, entry, DELIVERED, attempts, at, result)
                self._audit(conn, sub, entry, decision, Outcome.SUCCESS, f"delivered, {said}")
            elif attempts >= self.backoff.max_attempts:
                self._settle(conn, entry, FAILED, attempts, at, result)
                error = (
                    f"notification {entry.event_number} not delivered after {attempts} attempts ({result})"
                )
                self.store.set_status(conn, sub.tenant, sub.id, ERROR, error)
                self._audit(conn, sub, entry, decision, Outcome.SERIOUS_FAILURE, f"failed, {said}; gave up")
            else:
                wait = self.backoff.delay(attempts, self.rng)
                self._settle(conn, entry, PENDING, attempts, at + int(wait * 1_000_000), result)
                self._audit(conn, sub, entry, decision, Outcome.MINOR_FAILURE, f"failed, {said}; will retry")
        log.info("notification %s of subscription %s: %s", entry.event_number, sub.id, said)

    def _decide(self, sub: StoredSubscription, tenant: TenantRecord, topic: Topic, now: float) -> Decision:
        who = sub.subscriber
        request = AccessRequest(
            controller=tenant.orgnr,
            consumer=who.consumer,
            purpose=PurposeOfUse(who.purpose),
            patient=PatientId(*sub.patient),
            at=datetime.fromtimestamp(now, UTC),
            point_of_care=who.point_of_care if who.point_of_care != who.consumer else None,
            practitioner_hpr=who.practitioner_hpr,
            categories=topic.categories,
        )
        return self.access.decide(request, tenant)

    @staticmethod
    def _refusal(decision: Decision, topic: Topic, data: bytes | None, *, needs_data: bool) -> str | None:
        """Why this event may not go to this subscriber now, or ``None`` when it may."""
        if not decision.permit:
            return f"the sharing policy refuses ({decision.reasons[0]})"
        if data is None:
            return "the resource is not known" if needs_data else None
        if topic.resource == "Observation" and not version_visible(data, scope_of(decision)):
            return "the measurement lies outside what the agreement shares"
        return None

    def _settle(
        self, conn: Connection, entry: OutboxEntry, state: str, attempts: int, next_at: int, result: str
    ) -> None:
        self.store.settle(conn, entry, state=state, attempts=attempts, next_attempt=next_at, result=result)

    def _audit(
        self,
        conn: Connection,
        sub: StoredSubscription,
        entry: OutboxEntry,
        decision: Decision,
        outcome: Outcome,
        description: str,
    ) -> None:
        who = sub.subscriber
        facts = AuditFacts(
            action=AuditAction.SUBSCRIPTION_NOTIFY,
            outcome=outcome,
            recorded=datetime.now(UTC),
            tenant=sub.tenant,
            client_id=who.client_id,
            organisation=who.consumer,
            point_of_care=who.point_of_care,
            practitioner_hpr=who.practitioner_hpr,
            purpose_of_use=who.purpose,
            patient=sub.patient,
            query=f"POST {_without_query(sub.endpoint)}".encode(),
            data_categories=tuple(sorted(decision.categories or ())),
            resources=(entry.focus, f"Subscription/{sub.id}"),
            decision=SharingDecision(
                permit=decision.permit, reasons=tuple(str(r) for r in decision.reasons), used=decision.used
            ),
            correlation_id=f"notification-{entry.id}-{entry.attempts + 1}",
            description=description[:200],
            server=self.base_url,
        )
        self.auditor.record_in(conn, facts)
