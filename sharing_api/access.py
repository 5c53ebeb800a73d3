"""Deciding a patient-data read: the caller, the tenant and the patient -> a sharing decision and the
narrowing of the query it implies (product.md §4 step 3-4). Web-free; the routes call it.

The decision narrows the SQL itself (categories, effective-time window): denied data is never read,
not read and then filtered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from auth.caller import Caller
from consent.model import Block, Consent, PatientId, PurposeOfUse, Reservation, TenantPolicy
from consent.policy import AccessRequest, Decision, decide
from sharing_api.fhir.dates import DateFormatError, parse_range, to_micros
from sharing_api.store.observations import ReadScope
from sharing_api.store.policy import PolicyStore
from sharing_api.store.tenants import TenantRecord


@dataclass(frozen=True, slots=True)
class ReadDecision:
    decision: Decision
    scope: ReadScope


def scope_of(decision: Decision) -> ReadScope:
    """The query narrowing a decision implies; a denial reads nothing."""
    if not decision.permit:
        return ReadScope(nothing=True)
    period = decision.period
    return ReadScope(
        categories=decision.categories,
        start=to_micros(period.start) if period and period.start else None,
        end=to_micros(period.end) if period and period.end else None,
    )


def version_visible(data: bytes, scope: ReadScope) -> bool:
    """Whether one stored version (its own categories and effective time) lies inside ``scope``.

    Earlier versions are not indexed, so ``_history`` and ``vread`` check each version here: a version
    corrected into the permitted window must not reveal what it said before (AZ-05).
    """
    if scope.nothing:
        return False
    resource = orjson.loads(data)
    if scope.categories is not None:
        codes = {c.get("code") for cat in resource.get("category") or [] for c in cat.get("coding") or []}
        if not codes & scope.categories:
            return False
    if scope.start is None and scope.end is None:
        return True
    try:
        if "effectivePeriod" in resource:
            period = resource["effectivePeriod"]
            start = parse_range(period["start"])[0]
            end = parse_range(period["end"])[1] if "end" in period else start + 1
        else:
            start, end = parse_range(
                resource.get("effectiveDateTime") or resource.get("effectiveInstant") or ""
            )
    except (DateFormatError, KeyError, TypeError):
        return False
    return (scope.start is None or start >= scope.start) and (scope.end is None or end <= scope.end)


class AccessPolicy:
    """Loads the controller's records for one request and asks ``consent.decide``."""

    def __init__(self, store: PolicyStore):
        self.store = store
        #: told every decision (the ``/metrics`` counter of decisions by reason); set by ``create_app``
        self.observer: Callable[[Decision], None] | None = None

    def decide_read(
        self,
        caller: Caller,
        tenant: TenantRecord,
        patient: tuple[str, str],
        *,
        categories: frozenset[str] | None = None,
        write: bool = False,
    ) -> ReadDecision:
        """The sharing decision for ``caller`` on ``patient``'s data at ``tenant``: every category the
        agreements share (``categories`` ``None``), or only ``categories``; ``write`` for a change
        (the agreements' write categories, docs/sharing-policy.md row 5)."""
        consumer = caller.organisation or ""
        purpose = caller.purpose_of_use or PurposeOfUse.TREAT
        request = AccessRequest(
            controller=tenant.orgnr,
            consumer=consumer,
            purpose=PurposeOfUse(str(purpose)),
            patient=PatientId(patient[0], patient[1]),
            at=datetime.now(UTC),
            point_of_care=caller.point_of_care if caller.point_of_care != consumer else None,
            practitioner_hpr=caller.practitioner_hpr,
            categories=categories,
            write=write,
        )
        agreements, directives = self.store.decision_records(tenant.orgnr, consumer, patient)
        decision = decide(
            request,
            agreements=agreements,
            reservations=[d for d in directives if isinstance(d, Reservation)],
            blocks=[d for d in directives if isinstance(d, Block)],
            consents=[d for d in directives if isinstance(d, Consent)],
            tenant_policy=TenantPolicy(
                opt_in=tenant.opt_in, emergency_overrides_reservation=tenant.emergency_override
            ),
        )
        if self.observer is not None:
            self.observer(decision)
        return ReadDecision(decision, scope_of(decision))
