"""The records a sharing decision is made from: agreements between organisations and patients' directives.

domain.md, "Sharing policy (consent/)":

- an organisation reads another controller's data only under a :class:`SharingAgreement` between the two
  (which data categories, which purposes, validity period);
- the patient may object to sharing (a :class:`Reservation`, with everyone or with one organisation) and
  may block named health workers (a :class:`Block`, *sperring*);
- a controller may run in opt-in mode (:class:`TenantPolicy`), where sharing needs an explicit
  :class:`Consent`;
- ETREAT and BTG are the emergency purposes (:class:`PurposeOfUse`).

Plain, frozen values with their invariants checked on construction (a broken value raises ``ValueError``
and never exists). Everything here is standard library only: ``consent/`` depends on nothing of ours or
of the web (product.md, section 3). The decision itself is in :mod:`consent.policy`; the FHIR ``Consent``
form of the patient's directives is in :mod:`consent.fhir_consent`.

Time: every datetime is timezone-aware; a :class:`Period` includes its start and excludes its end.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

# Naming systems (domain.md, "Identifiers").
FNR = "urn:oid:2.16.578.1.12.4.1.4.1"
DNR = "urn:oid:2.16.578.1.12.4.1.4.2"
FHN = "urn:oid:2.16.578.1.12.4.1.4.3"
HPR = "urn:oid:2.16.578.1.12.4.1.4.4"
ORGNR = "urn:oid:2.16.578.1.12.4.1.4.101"

PATIENT_SYSTEMS = frozenset({FNR, DNR, FHN})
"""A patient is named by fødselsnummer, D-nummer or felles hjelpenummer, as VKP's ``subject`` is."""

PURPOSE_OF_USE_SYSTEM = "urn:oid:2.16.840.1.113883.1.11.20448"
"""HL7 v3 PurposeOfUse, as the tillitsrammeverk attestation names it (domain.md, "Tokens")."""


def require_aware(moment: datetime, what: str) -> None:
    """Raise ``ValueError`` unless ``moment`` is timezone-aware: naive times cannot be compared safely."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {moment!r}")


def _require_digits(value: str, length: int | None, what: str) -> None:
    wrong_length = length is not None and len(value) != length
    if not value or not value.isascii() or not value.isdigit() or wrong_length:
        size = f"{length} " if length is not None else ""
        raise ValueError(f"{what} must be {size}digits, got {value!r}")


def require_orgnr(value: str, what: str = "organisation number") -> None:
    """Raise ``ValueError`` unless ``value`` has the shape of an organisasjonsnummer (nine digits).

    The control digit is checked where people type numbers in (:mod:`consent.fhir_consent`); values
    that reach the policy come from verified tokens and stored records.
    """
    _require_digits(value, 9, what)


def require_hpr(value: str, what: str = "HPR number") -> None:
    """Raise ``ValueError`` unless ``value`` is an HPR number (digits only)."""
    _require_digits(value, None, what)


@dataclass(frozen=True, slots=True)
class Period:
    """A span of time, ``[start, end)``: the start is included, the end is not.

    ``start=None`` means "since always", ``end=None`` "until further notice". Both bounds, when given,
    are aware datetimes, stored in UTC, and ``start < end`` (a period is never empty).
    """

    start: datetime | None = None
    end: datetime | None = None

    def __post_init__(self) -> None:
        # Kept in UTC: Python compares two datetimes sharing a tzinfo by wall-clock time, which goes
        # wrong in the hour Norway's clocks are turned back.
        if self.start is not None:
            require_aware(self.start, "Period.start")
            object.__setattr__(self, "start", self.start.astimezone(UTC))
        if self.end is not None:
            require_aware(self.end, "Period.end")
            object.__setattr__(self, "end", self.end.astimezone(UTC))
        if self.start is not None and self.end is not None and not self.start < self.end:
            raise ValueError(f"a period must end after it starts: {self.start} >= {self.end}")

    @property
    def is_unbounded(self) -> bool:
        """True when the period has neither start nor end: it holds every instant."""
        return self.start is None and self.end is None

    def contains(self, moment: datetime) -> bool:
        """Whether ``moment`` lies in ``[start, end)``."""
        require_aware(moment, "moment")
        return (self.start is None or self.start <= moment) and (self.end is None or moment < self.end)

    def intersection(self, other: Period) -> Period | None:
        """The instants in both periods, or ``None`` when they share none."""
        starts = [s for s in (self.start, other.start) if s is not None]
        ends = [e for e in (self.end, other.end) if e is not None]
        start = max(starts) if starts else None
        end = min(ends) if ends else None
        if start is not None and end is not None and not start < end:
            return None
        return Period(start, end)

    def within(self, other: Period) -> bool:
        """Whether every instant of this period is also in ``other``."""
        return self.intersection(other) == self


ALWAYS = Period()
"""The unbounded period."""


class PurposeOfUse(StrEnum):
    """Why a health worker looks, from the attestation's ``care_relationship.purpose_of_use``.

    Codes of HL7 v3 PurposeOfUse (:data:`PURPOSE_OF_USE_SYSTEM`) that the tillitsrammeverk uses
    (domain.md, "Tokens").
    """

    TREAT = "TREAT"
    """Treatment."""
    ETREAT = "ETREAT"
    """Emergency treatment."""
    COC = "COC"
    """Coordination of care."""
    BTG = "BTG"
    """Break the glass."""

    @property
    def is_emergency(self) -> bool:
        """ETREAT and BTG: may override a reservation, always flagged for log control (domain.md)."""
        return self in EMERGENCY_PURPOSES


EMERGENCY_PURPOSES = frozenset({PurposeOfUse.ETREAT, PurposeOfUse.BTG})


@dataclass(frozen=True, slots=True)
class PatientId:
    """A patient, named by a national identifier: FNR, DNR or FHN (domain.md, "Identifiers").

    Records match a request only on the exact ``(system, value)`` pair; linking a D-nummer to a later
    fødselsnummer is the caller's business, done before asking for a decision.
    """

    system: str
    value: str

    def __post_init__(self) -> None:
        if self.system not in PATIENT_SYSTEMS:
            raise ValueError(f"a patient is named by FNR, DNR or FHN, not by {self.system!r}")
        _require_digits(self.value, None, "a patient identifier")


@dataclass(frozen=True, slots=True)
class SharingAgreement:
    """The controller lets the consumer read the patients' data it holds: these categories, for these
    purposes, while ``period`` runs (domain.md, "Sharing policy").

    ``period`` is when the agreement is in force and has a start. ``data_period``, when given, bounds
    the *data* the consumer may see (the measurements' effective time); ``None`` leaves data of any time
    open. Agreements are between legal entities (organisasjonsnummer of the juridisk enhet).

    ``write_categories`` are the categories the consumer may also *change* (issue 11: a treatment plan,
    category ``plan``, that the hospital and the GP update in turn); each is one of ``categories``.
    Reading needs only ``categories``; a write request is narrowed by ``write_categories`` instead.
    """

    id: str
    controller: str
    consumer: str
    categories: frozenset[str]
    purposes: frozenset[PurposeOfUse]
    period: Period
    data_period: Period | None = None
    write_categories: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("an agreement needs an id")
        require_orgnr(self.controller, "the controller's organisation number")
        require_orgnr(self.consumer, "the consumer's organisation number")
        if self.controller == self.consumer:
            raise ValueError("an organisation needs no agreement with itself")
        if not self.categories:
            raise ValueError("an agreement shares at least one data category")
        if not self.purposes:
            raise ValueError("an agreement names at least one purpose of use")
        if self.period.start is None:
            raise ValueError("an agreement's period has a start")
        if not self.write_categories <= self.categories:
            unread = ", ".join(sorted(self.write_categories - self.categories))
            raise ValueError(f"an agreement lets write only categories it shares; not shared: {unread}")

    @property
    def reference(self) -> str:
        """How a decision names this record in ``Decision.used``."""
        return f"SharingAgreement/{self.id}"


@dataclass(frozen=True, slots=True)
class Reservation:
    """The patient objects to sharing (reservasjon): with everyone, or with one organisation.

    ``organisation=None`` is an objection to sharing with every other organisation; otherwise the
    objection names one organisation number, matched against the consumer's legal entity and point of
    care. A reservation governs *sharing*: it does not stop the controller's own health workers
    (docs/sharing-policy.md). ``active=False`` is a withdrawn reservation; it and a reservation outside
    its ``period`` are ignored.
    """

    id: str
    patient: PatientId
    organisation: str | None = None
    period: Period = ALWAYS
    active: bool = True

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("a reservation needs an id")
        if self.organisation is not None:
            require_orgnr(self.organisation, "the organisation a reservation names")

    @property
    def applies_to_everyone(self) -> bool:
        return self.organisation is None

    @property
    def reference(self) -> str:
        """How a decision names this record in ``Decision.used`` (stored as a FHIR ``Consent``)."""
        return f"Consent/{self.id}"


@dataclass(frozen=True, slots=True)
class Block:
    """The patient blocks a named health worker (sperring), identified by HPR number.

    The data source must enforce it (domain.md, tillitsrammeverk business rules); no purpose, not even
    an emergency, overrides it. ``active=False`` is a lifted block.
    """

    id: str
    patient: PatientId
    practitioner_hpr: str
    period: Period = ALWAYS
    active: bool = True

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("a block needs an id")
        require_hpr(self.practitioner_hpr, "the blocked health worker's HPR number")

    @property
    def reference(self) -> str:
        """How a decision names this record in ``Decision.used`` (stored as a FHIR ``Consent``)."""
        return f"Consent/{self.id}"


@dataclass(frozen=True, slots=True)
class Consent:
    """The patient's explicit consent to sharing, needed where the controller runs in opt-in mode.

    ``consumer=None`` consents to sharing with any organisation under an agreement; otherwise with the
    named organisation (legal entity or point of care). ``categories=None`` covers every category the
    agreement shares; ``purposes`` empty covers every purpose the agreement names. ``data_period``
    bounds the data's effective time, ``period`` is when the consent is in force. ``active=False`` is a
    withdrawn consent.
    """

    id: str
    patient: PatientId
    consumer: str | None = None
    categories: frozenset[str] | None = None
    purposes: frozenset[PurposeOfUse] = frozenset()
    period: Period = ALWAYS
    data_period: Period | None = None
    active: bool = True

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("a consent needs an id")
        if self.consumer is not None:
            require_orgnr(self.consumer, "the organisation a consent names")
        if self.categories is not None and not self.categories:
            raise ValueError("a consent with no data category shares nothing: leave categories out for all")

    @property
    def reference(self) -> str:
        """How a decision names this record in ``Decision.used`` (stored as a FHIR ``Consent``)."""
        return f"Consent/{self.id}"


PatientDirective = Reservation | Block | Consent
"""What a patient's FHIR ``Consent`` resource turns into (:mod:`consent.fhir_consent`)."""


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    """How one controller (tenant) wants sharing decided.

    ``opt_in``: sharing needs the patient's explicit :class:`Consent` *(choice, domain.md: configurable
    per tenant)*; the default ``False`` is the national rule (share unless the patient objects).
    ``emergency_overrides_reservation``: ETREAT and BTG may override a reservation, and in opt-in mode
    the lack of a consent; the default ``False`` is the stricter choice.
    """

    opt_in: bool = False
    emergency_overrides_reservation: bool = False
