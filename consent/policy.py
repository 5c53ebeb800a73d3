"""The sharing decision: may this health worker, at this organisation, for this purpose, read this
patient's measurements held by this controller, and how much of them?

:func:`decide` implements the precedence table in ``docs/sharing-policy.md`` row by row, in the same
order; each row has one test named after it in ``tests/consent/test_policy.py``. It is step 3 of the
read path (product.md, section 4): the caller applies the :class:`Decision`'s narrowing
(``categories``, ``period``) to the query itself, writes the decision into the AuditEvent, and on a
denial answers as ``reveals_existence`` says.

The function is pure: it reads only its arguments and never fails open. The caller hands it the
controller's (tenant's) records; records of other patients, other organisation pairs, withdrawn
records and records outside their period are ignored here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from consent.model import (
    ALWAYS,
    Block,
    Consent,
    PatientId,
    Period,
    PurposeOfUse,
    Reservation,
    SharingAgreement,
    TenantPolicy,
    require_aware,
    require_hpr,
    require_orgnr,
)


class Reason(StrEnum):
    """Why a decision came out as it did; closed vocabulary for the audit log (style.md, item 8).

    One reason per row of the precedence table in ``docs/sharing-policy.md``; the two emergency rows
    share :attr:`EMERGENCY_OVERRIDE`.
    """

    NO_AGREEMENT = "no-agreement"
    AGREEMENT_EXPIRED = "agreement-expired"
    AGREEMENT_NOT_YET_VALID = "agreement-not-yet-valid"
    PURPOSE_NOT_AGREED = "purpose-not-agreed"
    SCOPE_NOT_AGREED = "scope-not-agreed"
    BLOCKED_PRACTITIONER = "blocked-practitioner"
    PRACTITIONER_NOT_NAMED = "practitioner-not-named"
    PERMIT_OWN_ORGANISATION = "permit-own-organisation"
    EMERGENCY_OVERRIDE = "emergency-override"
    RESERVATION = "reservation"
    NO_CONSENT = "no-consent"
    SCOPE_NOT_CONSENTED = "scope-not-consented"
    PERMIT_CONSENT = "permit-consent"
    PERMIT_AGREEMENT = "permit-agreement"


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessRequest:
    """Who asks to read whose data, held by which controller, why, and when.

    Built by the API from the verified token and its tillitsrammeverk attestation (domain.md,
    "Tokens"): ``consumer`` is ``orgnr_parent`` (the legal entity), ``point_of_care`` is
    ``orgnr_child``, ``practitioner_hpr`` the health worker's HPR number (``None`` when no person is
    behind the call), ``purpose`` the attestation's ``purpose_of_use``. ``controller`` is the tenant
    whose data is asked for. ``categories`` are the data categories asked for (``None``: all; an empty
    set is refused as meaningless), in the vocabulary the agreements use. ``at`` is the moment of the
    request, timezone-aware. ``write``: the request changes data (a care plan) rather than reads it;
    the agreements then grant only their ``write_categories`` (row 5).
    """

    controller: str
    consumer: str
    purpose: PurposeOfUse
    patient: PatientId
    at: datetime
    point_of_care: str | None = None
    practitioner_hpr: str | None = None
    categories: frozenset[str] | None = None
    write: bool = False

    def __post_init__(self) -> None:
        require_orgnr(self.controller, "the controller's organisation number")
        require_orgnr(self.consumer, "the consumer's organisation number")
        if self.point_of_care is not None:
            require_orgnr(self.point_of_care, "the point of care's organisation number")
        if self.practitioner_hpr is not None:
            require_hpr(self.practitioner_hpr)
        if self.categories is not None and not self.categories:
            raise ValueError("ask for at least one data category, or for None (all)")
        require_aware(self.at, "AccessRequest.at")

    @property
    def consumer_organisations(self) -> frozenset[str]:
        """The organisation numbers a reservation or consent naming "the consumer" may carry."""
        return frozenset(o for o in (self.consumer, self.point_of_care) if o is not None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The answer to an :class:`AccessRequest`, with what the caller must do with it.

    - ``permit``: whether anything may be read.
    - ``reasons``: the table rows that shaped the answer, in order (e.g. ``(EMERGENCY_OVERRIDE,
      PERMIT_AGREEMENT)``); a denial has exactly one.
    - ``used``: references (``SharingAgreement/<id>``, ``Consent/<id>``) of the records the answer rests
      on, for the AuditEvent's consent entity; overridden reservations are included.
    - ``categories``: the data categories the query must be narrowed to; ``None`` means no narrowing by
      category. A denial carries the empty set, so a caller that forgets ``permit`` still reads nothing.
    - ``period``: the effective-time window the query must be narrowed to, or ``None`` for no bound.
    - ``emergency``: the purpose was ETREAT or BTG; the access log must flag it for review (domain.md).
    - ``reveals_existence``: on a denial, ``False`` means the response must be indistinguishable from
      "no such data" (security-tests.md AZ-01), because the reason is something about the patient;
      ``True`` means the reason concerns only the organisations and may be said plainly.
    """

    permit: bool
    reasons: tuple[Reason, ...]
    used: tuple[str, ...] = ()
    categories: frozenset[str] | None = frozenset()
    period: Period | None = None
    emergency: bool = False
    reveals_existence: bool = True

    def __post_init__(self) -> None:
        if not self.reasons:
            raise ValueError("a decision has at least one reason")
        if not self.permit and (self.categories != frozenset() or len(self.reasons) != 1):
            raise ValueError("a denial narrows to nothing and has exactly one reason")
        if self.permit and self.categories is not None and not self.categories:
            raise ValueError("a permit with no category would read nothing: deny instead")


@dataclass(frozen=True, slots=True)
class _Scope:
    """What may be read so far: categories (``None``: all) and the effective-time window."""

    categories: frozenset[str] | None
    period: Period

    def narrowed(self, categories: frozenset[str] | None, period: Period | None) -> _Scope | None:
        """This scope cut down to ``categories`` and ``period`` (``None``: no cut); ``None`` if empty."""
        if categories is None:
            cats = self.categories
        else:
            cats = categories if self.categories is None else self.categories & categories
        window = self.period if period is None else self.period.intersection(period)
        if (cats is not None and not cats) or window is None:
            return None
        return _Scope(cats, window)


def _narrowed(scope: _Scope, cuts: Iterable[tuple[frozenset[str] | None, Period | None]]) -> _Scope | None:
    """``scope`` cut by each ``(categories, period)`` in turn: records in force together narrow each other."""
    narrowed: _Scope | None = scope
    for categories, period in cuts:
        if narrowed is None:
            break
        narrowed = narrowed.narrowed(categories, period)
    return narrowed


def _references(records: Iterable[SharingAgreement | Reservation | Block | Consent]) -> tuple[str, ...]:
    return tuple(sorted({r.reference for r in records}))


def decide(
    request: AccessRequest,
    *,
    agreements: Iterable[SharingAgreement],
    reservations: Iterable[Reservation],
    blocks: Iterable[Block],
    consents: Iterable[Consent],
    tenant_policy: TenantPolicy,
) -> Decision:
    """Decide ``request`` against the controller's records, by the table in ``docs/sharing-policy.md``.

    The first row that matches ends the evaluation, except the two emergency-override rows, which note
    the override and go on. Rows about the organisations come before rows about the patient, so that a
    consumer without an agreement learns nothing about any patient from the answer.
    """
    at = request.at
    emergency = request.purpose.is_emergency
    patient: PatientId = request.patient
    own_organisation = request.consumer == request.controller

    def deny(reason: Reason, used: tuple[str, ...], *, reveals_existence: bool) -> Decision:
        return Decision(
            permit=False,
            reasons=(reason,),
            used=used,
            emergency=emergency,
            reveals_existence=reveals_existence,
        )

    def permit(reasons: list[Reason], used: tuple[str, ...], scope: _Scope) -> Decision:
        return Decision(
            permit=True,
            reasons=tuple(reasons),
            used=used,
            categories=scope.categories,
            period=None if scope.period.is_unbounded else scope.period,
            emergency=emergency,
        )

    # Rows 1-5: the agreement between controller and consumer. Not asked for the controller's own
    # health workers, who need no agreement with their own organisation (row 8).
    agreed = _Scope(request.categories, ALWAYS)
    used: tuple[str, ...] = ()
    if not own_organisation:
        pair = [a for a in agreements if (a.controller, a.consumer) == (request.controller, request.consumer)]
        if not pair:  # row no-agreement
            return deny(Reason.NO_AGREEMENT, (), reveals_existence=True)
        in_force = [a for a in pair if a.period.contains(at)]
        ended = [a for a in pair if a.period.end is not None and a.period.end <= at]
        if not in_force and ended:  # row agreement-expired
            return deny(Reason.AGREEMENT_EXPIRED, _references(pair), reveals_existence=True)
        if not in_force:  # row agreement-not-yet-valid
            return deny(Reason.AGREEMENT_NOT_YET_VALID, _references(pair), reveals_existence=True)
        covering = [a for a in in_force if request.purpose in a.purposes]
        if not covering:  # row purpose-not-agreed
            return deny(Reason.PURPOSE_NOT_AGREED, _references(in_force), reveals_existence=True)
        used = _references(covering)
        granted = ((a.write_categories if request.write else a.categories, a.data_period) for a in covering)
        scope = _narrowed(agreed, granted)
        if scope is None:  # row scope-not-agreed
            return deny(Reason.SCOPE_NOT_AGREED, used, reveals_existence=True)
        agreed = scope

    # Rows 6-7: blocks (sperringer). Every purpose, the own organisation included.
    blocks_in_force = [b for b in blocks if b.active and b.patient == patient and b.period.contains(at)]
    blocking = [b for b in blocks_in_force if b.practitioner_hpr == request.practitioner_hpr]
    if blocking:  # row blocked-practitioner
        return deny(Reason.BLOCKED_PRACTITIONER, used + _references(blocking), reveals_existence=False)
    if blocks_in_force and request.practitioner_hpr is None:  # row practitioner-not-named
        unchecked = used + _references(blocks_in_force)
        return deny(Reason.PRACTITIONER_NOT_NAMED, unchecked, reveals_existence=False)

    if own_organisation:  # row permit-own-organisation
        return permit([Reason.PERMIT_OWN_ORGANISATION], (), agreed)

    # Rows 9-10: reservations (reservasjon) against everyone or against this consumer.
    override_allowed = emergency and tenant_policy.emergency_overrides_reservation
    reasons: list[Reason] = []
    objecting = [
        r
        for r in reservations
        if r.active
        and r.patient == patient
        and r.period.contains(at)
        and (r.organisation is None or r.organisation in request.consumer_organisations)
    ]
    if objecting and override_allowed:  # row reservation-emergency-override: note it and go on
        reasons.append(Reason.EMERGENCY_OVERRIDE)
        used += _references(objecting)
    elif objecting:  # row reservation
        return deny(Reason.RESERVATION, used + _references(objecting), reveals_existence=False)

    # Rows 11-14: an opt-in tenant needs the patient's consent.
    if tenant_policy.opt_in:
        consenting = [
            c
            for c in consents
            if c.active
            and c.patient == patient
            and c.period.contains(at)
            and (c.consumer is None or c.consumer in request.consumer_organisations)
            and (not c.purposes or request.purpose in c.purposes)
        ]
        consented = _narrowed(agreed, ((c.categories, c.data_period) for c in consenting))
        if consenting and consented is not None:  # row permit-consent
            return permit([*reasons, Reason.PERMIT_CONSENT], used + _references(consenting), consented)
        if override_allowed:  # row consent-emergency-override: the agreement's scope, flagged
            if Reason.EMERGENCY_OVERRIDE not in reasons:
                reasons.append(Reason.EMERGENCY_OVERRIDE)
            return permit([*reasons, Reason.PERMIT_AGREEMENT], used, agreed)
        if not consenting:  # row no-consent
            return deny(Reason.NO_CONSENT, used, reveals_existence=False)
        # row scope-not-consented
        return deny(Reason.SCOPE_NOT_CONSENTED, used + _references(consenting), reveals_existence=False)

    return permit([*reasons, Reason.PERMIT_AGREEMENT], used, agreed)  # row permit-agreement
