"""The precedence table of docs/sharing-policy.md, one test per row, plus boundaries and properties.

Each ``test_row_<id>`` builds the smallest world in which its row is the one that decides. The test
``test_every_table_row_has_a_test`` keeps this file and the table in step.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consent.model import (
    DNR,
    FNR,
    Block,
    Consent,
    PatientId,
    Period,
    PurposeOfUse,
    Reservation,
    SharingAgreement,
    TenantPolicy,
)
from consent.policy import AccessRequest, Decision, Reason, decide

DOC = Path(__file__).resolve().parents[2] / "docs" / "sharing-policy.md"

MUNICIPALITY = "940000009"  # the controller
HOSPITAL = "974000016"  # the consumer's legal entity
WARD = "983000029"  # a point of care of the hospital
OTHER = "912000036"  # an organisation without an agreement
DOCTOR = "565501872"
NURSE = "565501899"
PATIENT = PatientId(FNR, "01819012365")  # synthetic: month + 80
OTHER_PATIENT = PatientId(FNR, "01819012446")

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
LAST_YEAR = Period(datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC))

OPT_OUT = TenantPolicy()
OPT_IN = TenantPolicy(opt_in=True)
OVERRIDE = TenantPolicy(emergency_overrides_reservation=True)
OPT_IN_OVERRIDE = TenantPolicy(opt_in=True, emergency_overrides_reservation=True)


def agreement(
    *,
    id: str = "a1",
    controller: str = MUNICIPALITY,
    consumer: str = HOSPITAL,
    categories: Iterable[str] = ("vital-signs", "survey"),
    purposes: Iterable[PurposeOfUse] = tuple(PurposeOfUse),
    period: Period | None = None,
    data_period: Period | None = None,
) -> SharingAgreement:
    return SharingAgreement(
        id,
        controller,
        consumer,
        frozenset(categories),
        frozenset(purposes),
        period or Period(datetime(2025, 1, 1, tzinfo=UTC)),
        data_period,
    )


def request(
    *,
    consumer: str = HOSPITAL,
    point_of_care: str | None = WARD,
    practitioner_hpr: str | None = DOCTOR,
    purpose: PurposeOfUse = PurposeOfUse.TREAT,
    patient: PatientId = PATIENT,
    categories: Iterable[str] | None = None,
    at: datetime = NOW,
) -> AccessRequest:
    return AccessRequest(
        controller=MUNICIPALITY,
        consumer=consumer,
        point_of_care=point_of_care,
        practitioner_hpr=practitioner_hpr,
        purpose=purpose,
        patient=patient,
        categories=None if categories is None else frozenset(categories),
        at=at,
    )


def ask(
    req: AccessRequest,
    *,
    agreements: Iterable[SharingAgreement] = (),
    reservations: Iterable[Reservation] = (),
    blocks: Iterable[Block] = (),
    consents: Iterable[Consent] = (),
    tenant_policy: TenantPolicy = OPT_OUT,
) -> Decision:
    return decide(
        req,
        agreements=agreements,
        reservations=reservations,
        blocks=blocks,
        consents=consents,
        tenant_policy=tenant_policy,
    )


def assert_hidden_denial(decision: Decision, reason: Reason) -> None:
    """A denial about the patient: it must look like "no such data" and narrow to nothing."""
    assert not decision.permit
    assert decision.reasons == (reason,)
    assert decision.reveals_existence is False
    assert decision.categories == frozenset()


def assert_plain_denial(decision: Decision, reason: Reason) -> None:
    """A denial about the organisations only: it may be said plainly."""
    assert not decision.permit
    assert decision.reasons == (reason,)
    assert decision.reveals_existence is True
    assert decision.categories == frozenset()


# --- one test per row of the table ---------------------------------------------------------------


def test_row_no_agreement() -> None:
    decision = ask(request(consumer=OTHER, point_of_care=None), agreements=[agreement()])
    assert_plain_denial(decision, Reason.NO_AGREEMENT)
    assert decision.used == ()


def test_row_agreement_expired() -> None:
    ended = agreement(period=Period(datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)))
    decision = ask(request(), agreements=[ended])
    assert_plain_denial(decision, Reason.AGREEMENT_EXPIRED)
    assert decision.used == ("SharingAgreement/a1",)


def test_row_agreement_not_yet_valid() -> None:
    future = agreement(period=Period(datetime(2026, 1, 1, tzinfo=UTC)))
    decision = ask(request(), agreements=[future])
    assert_plain_denial(decision, Reason.AGREEMENT_NOT_YET_VALID)


def test_row_purpose_not_agreed() -> None:
    decision = ask(request(purpose=PurposeOfUse.COC), agreements=[agreement(purposes=[PurposeOfUse.TREAT])])
    assert_plain_denial(decision, Reason.PURPOSE_NOT_AGREED)
    assert decision.used == ("SharingAgreement/a1",)


def test_row_scope_not_agreed() -> None:
    decision = ask(request(categories=["survey"]), agreements=[agreement(categories=["vital-signs"])])
    assert_plain_denial(decision, Reason.SCOPE_NOT_AGREED)


def test_row_blocked_practitioner() -> None:
    block = Block("b1", PATIENT, DOCTOR)
    decision = ask(request(), agreements=[agreement()], blocks=[block])
    assert_hidden_denial(decision, Reason.BLOCKED_PRACTITIONER)
    assert decision.used == ("SharingAgreement/a1", "Consent/b1")


def test_row_practitioner_not_named() -> None:
    block = Block("b1", PATIENT, NURSE)
    decision = ask(request(practitioner_hpr=None), agreements=[agreement()], blocks=[block])
    assert_hidden_denial(decision, Reason.PRACTITIONER_NOT_NAMED)
    assert "Consent/b1" in decision.used


def test_row_permit_own_organisation() -> None:
    # No agreement, a reservation against everyone, an opt-in tenant without consent: none of it
    # concerns the controller's own health workers.
    decision = ask(
        request(consumer=MUNICIPALITY, point_of_care=None, categories=["vital-signs"]),
        reservations=[Reservation("r1", PATIENT)],
        tenant_policy=OPT_IN,
    )
    assert decision.permit
    assert decision.reasons == (Reason.PERMIT_OWN_ORGANISATION,)
    assert decision.categories == frozenset({"vital-signs"})
    assert decision.period is None
    assert decision.used == ()


def test_row_reservation_emergency_override() -> None:
    reservation = Reservation("r1", PATIENT)
    decision = ask(
        request(purpose=PurposeOfUse.ETREAT),
        agreements=[agreement()],
        reservations=[reservation],
        tenant_policy=OVERRIDE,
    )
    assert decision.permit
    assert decision.reasons == (Reason.EMERGENCY_OVERRIDE, Reason.PERMIT_AGREEMENT)
    assert decision.emergency
    assert decision.used == ("SharingAgreement/a1", "Consent/r1")
    assert decision.categories == frozenset({"vital-signs", "survey"})


def test_row_reservation() -> None:
    decision = ask(request(), agreements=[agreement()], reservations=[Reservation("r1", PATIENT)])
    assert_hidden_denial(decision, Reason.RESERVATION)
    assert decision.used == ("SharingAgreement/a1", "Consent/r1")


def test_row_permit_consent() -> None:
    consent = Consent(
        "c1",
        PATIENT,
        consumer=HOSPITAL,
        categories=frozenset({"vital-signs"}),
        data_period=Period(datetime(2025, 3, 1, tzinfo=UTC)),
    )
    decision = ask(
        request(),
        agreements=[
            agreement(data_period=Period(datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 5, 1, tzinfo=UTC)))
        ],
        consents=[consent],
        tenant_policy=OPT_IN,
    )
    assert decision.permit
    assert decision.reasons == (Reason.PERMIT_CONSENT,)
    assert decision.categories == frozenset({"vital-signs"})
    assert decision.period == Period(datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 5, 1, tzinfo=UTC))
    assert decision.used == ("SharingAgreement/a1", "Consent/c1")


def test_row_consent_emergency_override() -> None:
    decision = ask(
        request(purpose=PurposeOfUse.BTG),
        agreements=[agreement(categories=["vital-signs"])],
        tenant_policy=OPT_IN_OVERRIDE,
    )
    assert decision.permit
    assert decision.reasons == (Reason.EMERGENCY_OVERRIDE, Reason.PERMIT_AGREEMENT)
    assert decision.emergency
    assert decision.categories == frozenset({"vital-signs"})


def test_row_no_consent() -> None:
    decision = ask(request(), agreements=[agreement()], tenant_policy=OPT_IN)
    assert_hidden_denial(decision, Reason.NO_CONSENT)


def test_row_scope_not_consented() -> None:
    consent = Consent("c1", PATIENT, categories=frozenset({"survey"}))
    decision = ask(
        request(categories=["vital-signs"]),
        agreements=[agreement()],
        consents=[consent],
        tenant_policy=OPT_IN,
    )
    assert_hidden_denial(decision, Reason.SCOPE_NOT_CONSENTED)
    assert "Consent/c1" in decision.used


def test_row_permit_agreement() -> None:
    decision = ask(
        request(categories=["vital-signs", "medication"]),
        agreements=[agreement(data_period=LAST_YEAR)],
        # Records that do not concern this request play no part:
        reservations=[
            Reservation("r-other-patient", OTHER_PATIENT),
            Reservation("r-other-org", PATIENT, OTHER),
        ],
        blocks=[Block("b-nurse", PATIENT, NURSE), Block("b-lifted", PATIENT, DOCTOR, active=False)],
    )
    assert decision.permit
    assert decision.reasons == (Reason.PERMIT_AGREEMENT,)
    assert decision.categories == frozenset({"vital-signs"})  # "medication" is not agreed: dropped
    assert decision.period == LAST_YEAR
    assert decision.used == ("SharingAgreement/a1",)
    assert not decision.emergency


# --- the table and the tests stay in step ----------------------------------------------------------

_ROW = re.compile(r"^\|\s*(\d+)\s*\|\s*`([a-z-]+)`\s*\|")


def _table_rows() -> list[tuple[int, str]]:
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = _ROW.match(line)
        if m:
            rows.append((int(m.group(1)), m.group(2)))
    return rows


def test_every_table_row_has_a_test() -> None:
    rows = _table_rows()
    assert [n for n, _ in rows] == list(range(1, len(rows) + 1)), "rows are numbered 1, 2, 3, ..."
    row_tests = {f"test_row_{row_id.replace('-', '_')}" for _, row_id in rows}
    here = {name for name in dir(sys.modules[__name__]) if name.startswith("test_row_")}
    assert row_tests == here, "docs/sharing-policy.md and the test_row_ tests disagree"


def test_every_reason_is_in_the_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    table = "\n".join(line for line in text.splitlines() if _ROW.match(line))
    for reason in Reason:
        assert f"`{reason}`" in table, f"reason {reason} is not in the precedence table"


def test_table_order_matches_the_code() -> None:
    """The ``# row <id>`` markers in decide() appear in the order of the table."""
    import inspect

    import consent.policy

    source = inspect.getsource(consent.policy.decide)
    in_code = list(dict.fromkeys(re.findall(r"# row ([a-z-]+)", source)))
    assert in_code == [row_id for _, row_id in _table_rows()]


# --- precedence between rows ----------------------------------------------------------------------


@pytest.mark.parametrize("purpose", [PurposeOfUse.ETREAT, PurposeOfUse.BTG])
def test_a_block_is_not_overridden_by_an_emergency(purpose: PurposeOfUse) -> None:
    decision = ask(
        request(purpose=purpose),
        agreements=[agreement()],
        blocks=[Block("b1", PATIENT, DOCTOR)],
        tenant_policy=OPT_IN_OVERRIDE,
    )
    assert_hidden_denial(decision, Reason.BLOCKED_PRACTITIONER)
    assert decision.emergency


def test_a_block_applies_to_the_own_organisation() -> None:
    decision = ask(request(consumer=MUNICIPALITY, point_of_care=None), blocks=[Block("b1", PATIENT, DOCTOR)])
    assert_hidden_denial(decision, Reason.BLOCKED_PRACTITIONER)


def test_no_agreement_is_said_before_anything_about_the_patient() -> None:
    """An organisation without an agreement gets the same answer whether or not the patient blocked it:
    no oracle for who is a patient here and who has blocked whom."""
    blocked = ask(
        request(consumer=OTHER, point_of_care=None),
        agreements=[agreement()],
        blocks=[Block("b1", PATIENT, DOCTOR)],
        reservations=[Reservation("r1", PATIENT)],
    )
    unknown = ask(
        request(consumer=OTHER, point_of_care=None, patient=OTHER_PATIENT), agreements=[agreement()]
    )
    assert blocked == unknown
    assert_plain_denial(blocked, Reason.NO_AGREEMENT)


def test_a_reservation_beats_a_consent() -> None:
    decision = ask(
        request(),
        agreements=[agreement()],
        reservations=[Reservation("r1", PATIENT, HOSPITAL)],
        consents=[Consent("c1", PATIENT, HOSPITAL)],
        tenant_policy=OPT_IN,
    )
    assert_hidden_denial(decision, Reason.RESERVATION)


def test_an_emergency_with_a_consent_uses_the_consent() -> None:
    decision = ask(
        request(purpose=PurposeOfUse.ETREAT),
        agreements=[agreement()],
        reservations=[Reservation("r1", PATIENT)],
        consents=[Consent("c1", PATIENT, categories=frozenset({"survey"}))],
        tenant_policy=OPT_IN_OVERRIDE,
    )
    assert decision.permit
    assert decision.reasons == (Reason.EMERGENCY_OVERRIDE, Reason.PERMIT_CONSENT)
    assert decision.categories == frozenset({"survey"})
    assert decision.used == ("SharingAgreement/a1", "Consent/r1", "Consent/c1")


def test_an_emergency_without_override_is_denied_but_flagged() -> None:
    decision = ask(
        request(purpose=PurposeOfUse.BTG), agreements=[agreement()], reservations=[Reservation("r1", PATIENT)]
    )
    assert_hidden_denial(decision, Reason.RESERVATION)
    assert decision.emergency


def test_an_emergency_needing_no_override_is_flagged_without_the_reason() -> None:
    decision = ask(request(purpose=PurposeOfUse.ETREAT), agreements=[agreement()], tenant_policy=OVERRIDE)
    assert decision.permit
    assert decision.reasons == (Reason.PERMIT_AGREEMENT,)
    assert decision.emergency


def test_a_consent_override_is_not_given_for_treatment() -> None:
    decision = ask(
        request(purpose=PurposeOfUse.TREAT), agreements=[agreement()], tenant_policy=OPT_IN_OVERRIDE
    )
    assert_hidden_denial(decision, Reason.NO_CONSENT)


# --- matching -------------------------------------------------------------------------------------


def test_a_reservation_against_the_point_of_care_applies() -> None:
    decision = ask(request(), agreements=[agreement()], reservations=[Reservation("r1", PATIENT, WARD)])
    assert_hidden_denial(decision, Reason.RESERVATION)


def test_a_reservation_against_another_organisation_does_not_apply() -> None:
    decision = ask(request(), agreements=[agreement()], reservations=[Reservation("r1", PATIENT, OTHER)])
    assert decision.permit


def test_a_withdrawn_reservation_does_not_apply() -> None:
    decision = ask(
        request(), agreements=[agreement()], reservations=[Reservation("r1", PATIENT, active=False)]
    )
    assert decision.permit


def test_a_revoked_consent_denies_at_once() -> None:
    """security-tests.md AZ-04: the next read after a revocation is denied."""
    consent = Consent("c1", PATIENT)
    before = ask(request(), agreements=[agreement()], consents=[consent], tenant_policy=OPT_IN)
    after = ask(
        request(),
        agreements=[agreement()],
        consents=[dataclasses.replace(consent, active=False)],
        tenant_policy=OPT_IN,
    )
    assert before.permit
    assert_hidden_denial(after, Reason.NO_CONSENT)


def test_a_consent_for_another_consumer_or_purpose_does_not_count() -> None:
    consents = [
        Consent("c-other-org", PATIENT, consumer=OTHER),
        Consent("c-coc", PATIENT, purposes=frozenset({PurposeOfUse.COC})),
        Consent("c-other-patient", OTHER_PATIENT),
    ]
    decision = ask(request(), agreements=[agreement()], consents=consents, tenant_policy=OPT_IN)
    assert_hidden_denial(decision, Reason.NO_CONSENT)


def test_a_consent_for_the_point_of_care_counts() -> None:
    consents = [Consent("c1", PATIENT, consumer=WARD, purposes=frozenset({PurposeOfUse.TREAT}))]
    assert ask(request(), agreements=[agreement()], consents=consents, tenant_policy=OPT_IN).permit


def test_an_agreement_the_other_way_does_not_count() -> None:
    reverse = agreement(controller=HOSPITAL, consumer=MUNICIPALITY)
    assert_plain_denial(ask(request(), agreements=[reverse]), Reason.NO_AGREEMENT)


def test_the_patient_is_matched_on_the_exact_identifier() -> None:
    as_dnr = PatientId(DNR, "41819012359")
    decision = ask(request(), agreements=[agreement()], reservations=[Reservation("r1", as_dnr)])
    assert decision.permit


def test_expired_and_future_agreements_say_expired() -> None:
    ended = agreement(id="old", period=LAST_YEAR)
    future = agreement(id="new", period=Period(datetime(2026, 1, 1, tzinfo=UTC)))
    decision = ask(request(), agreements=[future, ended])
    assert_plain_denial(decision, Reason.AGREEMENT_EXPIRED)
    assert decision.used == ("SharingAgreement/new", "SharingAgreement/old")


def test_an_agreement_in_force_wins_over_an_ended_one() -> None:
    assert ask(request(), agreements=[agreement(id="old", period=LAST_YEAR), agreement(id="now")]).permit


def test_agreements_in_force_together_narrow_each_other() -> None:
    first = agreement(
        id="a1", categories=["vital-signs", "survey"], data_period=Period(datetime(2025, 2, 1, tzinfo=UTC))
    )
    second = agreement(
        id="a2", categories=["vital-signs"], data_period=Period(end=datetime(2025, 4, 1, tzinfo=UTC))
    )
    decision = ask(request(), agreements=[first, second])
    assert decision.categories == frozenset({"vital-signs"})
    assert decision.period == Period(datetime(2025, 2, 1, tzinfo=UTC), datetime(2025, 4, 1, tzinfo=UTC))
    assert decision.used == ("SharingAgreement/a1", "SharingAgreement/a2")


def test_agreements_with_disjoint_data_periods_leave_nothing() -> None:
    first = agreement(id="a1", data_period=Period(end=datetime(2025, 2, 1, tzinfo=UTC)))
    second = agreement(id="a2", data_period=Period(datetime(2025, 2, 1, tzinfo=UTC)))
    assert_plain_denial(ask(request(), agreements=[first, second]), Reason.SCOPE_NOT_AGREED)


def test_an_agreement_for_another_purpose_does_not_narrow() -> None:
    coc_only = agreement(id="a2", categories=["survey"], purposes=[PurposeOfUse.COC])
    decision = ask(request(), agreements=[agreement(categories=["vital-signs"]), coc_only])
    assert decision.categories == frozenset({"vital-signs"})


def test_the_decision_does_not_depend_on_record_order() -> None:
    agreements = [agreement(id="a1"), agreement(id="a2", categories=["vital-signs"])]
    reservations = [Reservation("r2", PATIENT), Reservation("r1", PATIENT, HOSPITAL)]
    emergency = request(purpose=PurposeOfUse.BTG)
    forward = ask(emergency, agreements=agreements, reservations=reservations, tenant_policy=OVERRIDE)
    backward = ask(
        emergency, agreements=agreements[::-1], reservations=reservations[::-1], tenant_policy=OVERRIDE
    )
    assert forward == backward
    assert forward.used == ("SharingAgreement/a1", "SharingAgreement/a2", "Consent/r1", "Consent/r2")


# --- period boundaries: [start, end), to the second (security-tests.md AZ-05) ------------------------

START = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
END = datetime(2025, 9, 1, 8, 0, tzinfo=UTC)
WINDOW = Period(START, END)


@pytest.mark.parametrize(
    ("at", "in_force"),
    [(START - SECOND, False), (START, True), (START + SECOND, True), (END - SECOND, True), (END, False)],
    ids=["start-1s", "start", "start+1s", "end-1s", "end"],
)
def test_agreement_period_boundaries(at: datetime, in_force: bool) -> None:
    decision = ask(request(at=at), agreements=[agreement(period=WINDOW)])
    assert decision.permit is in_force


@pytest.mark.parametrize(
    ("at", "in_force"),
    [(START - SECOND, False), (START, True), (END - SECOND, True), (END, False), (END + SECOND, False)],
    ids=["start-1s", "start", "end-1s", "end", "end+1s"],
)
def test_reservation_and_block_period_boundaries(at: datetime, in_force: bool) -> None:
    agreements = [agreement(period=Period(datetime(2025, 1, 1, tzinfo=UTC)))]
    reserved = ask(
        request(at=at), agreements=agreements, reservations=[Reservation("r1", PATIENT, period=WINDOW)]
    )
    blocked = ask(request(at=at), agreements=agreements, blocks=[Block("b1", PATIENT, DOCTOR, period=WINDOW)])
    assert reserved.permit is not in_force
    assert blocked.permit is not in_force


@pytest.mark.parametrize(
    ("at", "in_force"),
    [(START - SECOND, False), (START, True), (END - SECOND, True), (END, False)],
    ids=["start-1s", "start", "end-1s", "end"],
)
def test_consent_period_boundaries(at: datetime, in_force: bool) -> None:
    consent = Consent("c1", PATIENT, period=WINDOW)
    decision = ask(request(at=at), agreements=[agreement()], consents=[consent], tenant_policy=OPT_IN)
    assert decision.permit is in_force


@pytest.mark.parametrize(
    ("effective", "inside"),
    [(START - SECOND, False), (START, True), (END - SECOND, True), (END, False)],
    ids=["start-1s", "start", "end-1s", "end"],
)
def test_the_data_window_a_permit_gives(effective: datetime, inside: bool) -> None:
    """The caller narrows the query to ``decision.period``: an observation at its edges, ±1 s."""
    consent = Consent("c1", PATIENT, data_period=WINDOW)
    decision = ask(
        request(at=END + timedelta(days=1)),
        agreements=[agreement()],
        consents=[consent],
        tenant_policy=OPT_IN,
    )
    assert decision.period is not None
    assert decision.period.contains(effective) is inside


def test_periods_compare_instants_across_the_autumn_clock_change() -> None:
    """02:30 happens twice in Oslo on 2025-10-26; the second one is an hour after the first."""
    oslo = ZoneInfo("Europe/Oslo")
    first = datetime(2025, 10, 26, 2, 30, tzinfo=oslo, fold=0)
    second = datetime(2025, 10, 26, 2, 30, tzinfo=oslo, fold=1)
    period = Period(first, datetime(2025, 10, 26, 2, 45, tzinfo=oslo, fold=0))
    assert period.contains(first)
    assert not period.contains(second)


# --- values refuse nonsense ----------------------------------------------------------------------


def test_naive_datetimes_are_refused() -> None:
    naive = datetime(2025, 1, 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        Period(naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        request(at=naive)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Period(END, START), "end after it starts"),
        (lambda: Period(START, START), "end after it starts"),
        (lambda: agreement(categories=()), "at least one data category"),
        (lambda: agreement(purposes=()), "at least one purpose"),
        (lambda: agreement(consumer=MUNICIPALITY), "no agreement with itself"),
        (lambda: agreement(period=Period(end=END)), "has a start"),
        (lambda: agreement(consumer="12345"), "9 digits"),
        (lambda: request(categories=()), "at least one data category"),
        (lambda: request(practitioner_hpr="HPR-1"), "digits"),
        (lambda: PatientId("urn:oid:2.16.578.1.12.4.1.4.4", "565501872"), "FNR, DNR or FHN"),
        (lambda: Consent("c1", PATIENT, categories=frozenset()), "shares nothing"),
        (lambda: Block("", PATIENT, DOCTOR), "needs an id"),
        (
            lambda: Decision(permit=False, reasons=(Reason.RESERVATION,), categories=None),
            "narrows to nothing",
        ),
        (lambda: Decision(permit=True, reasons=()), "at least one reason"),
    ],
)
def test_broken_values_do_not_exist(build: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


# --- properties -----------------------------------------------------------------------------------

ORGS = [MUNICIPALITY, HOSPITAL, WARD, OTHER]
HPRS = [DOCTOR, NURSE]
PATIENTS = [PATIENT, OTHER_PATIENT]
MOMENTS = [datetime(2025, m, 1, tzinfo=UTC) for m in (1, 3, 5, 7, 9)]
CATEGORIES = ["vital-signs", "survey", "medication"]

ids = st.text(alphabet="abcdef0123456789", min_size=1, max_size=6)
categories = st.frozensets(st.sampled_from(CATEGORIES), min_size=1)
purposes = st.frozensets(st.sampled_from(list(PurposeOfUse)), min_size=1)


@st.composite
def periods(draw: st.DrawFn, *, bounded_start: bool = False) -> Period:
    # Agreements mostly started long ago, so that the rows after the agreement rows get exercised.
    starts = st.sampled_from([MOMENTS[0], MOMENTS[0], *MOMENTS])
    start = draw(starts if bounded_start else st.none() | st.sampled_from(MOMENTS))
    end = draw(st.none() | st.sampled_from(MOMENTS))
    if start is not None and end is not None and not start < end:
        end = None
    return Period(start, end)


@st.composite
def agreements_(draw: st.DrawFn) -> SharingAgreement:
    consumer = draw(st.sampled_from([HOSPITAL, HOSPITAL, HOSPITAL, OTHER]))
    return SharingAgreement(
        draw(ids),
        MUNICIPALITY,
        consumer,
        draw(categories),
        draw(purposes),
        draw(periods(bounded_start=True)),
        draw(st.none() | periods()),
    )


reservations = st.builds(
    Reservation,
    ids,
    st.sampled_from(PATIENTS),
    st.none() | st.sampled_from(ORGS),
    periods(),
    st.booleans(),
)
blocks = st.builds(Block, ids, st.sampled_from(PATIENTS), st.sampled_from(HPRS), periods(), st.booleans())
consents = st.builds(
    Consent,
    ids,
    st.sampled_from(PATIENTS),
    st.none() | st.sampled_from(ORGS),
    st.none() | categories,
    st.frozensets(st.sampled_from(list(PurposeOfUse))),
    periods(),
    st.none() | periods(),
    st.booleans(),
)
tenant_policies = st.builds(TenantPolicy, st.booleans(), st.booleans())
requests = st.builds(
    AccessRequest,
    controller=st.just(MUNICIPALITY),
    consumer=st.sampled_from([HOSPITAL, HOSPITAL, HOSPITAL, MUNICIPALITY, OTHER]),
    point_of_care=st.none() | st.sampled_from([WARD, OTHER]),
    practitioner_hpr=st.none() | st.sampled_from(HPRS),
    purpose=st.sampled_from(list(PurposeOfUse)),
    patient=st.sampled_from(PATIENTS),
    categories=st.none() | categories,
    at=st.sampled_from(MOMENTS) | st.sampled_from(MOMENTS).map(lambda m: m - SECOND),
)


@dataclasses.dataclass(frozen=True)
class World:
    """The controller's records and policy, as decide() receives them."""

    agreements: list[SharingAgreement]
    reservations: list[Reservation]
    blocks: list[Block]
    consents: list[Consent]
    tenant_policy: TenantPolicy

    def decide(self, req: AccessRequest) -> Decision:
        return decide(
            req,
            agreements=self.agreements,
            reservations=self.reservations,
            blocks=self.blocks,
            consents=self.consents,
            tenant_policy=self.tenant_policy,
        )

    def with_(self, extra: Reservation | Block) -> World:
        if isinstance(extra, Reservation):
            return dataclasses.replace(self, reservations=[*self.reservations, extra])
        return dataclasses.replace(self, blocks=[*self.blocks, extra])


worlds = st.builds(
    World,
    st.lists(agreements_(), min_size=1, max_size=3),
    st.lists(reservations, max_size=2),
    st.lists(blocks, max_size=2),
    st.lists(consents, max_size=3),
    tenant_policies,
)


def _within(narrow: Decision, wide: Decision) -> bool:
    """Whether ``narrow`` lets the caller read no more than ``wide`` does."""
    if not narrow.permit:
        return True
    if not wide.permit:
        return False
    if wide.categories is not None and (
        narrow.categories is None or not narrow.categories <= wide.categories
    ):
        return False
    if wide.period is None:
        return True
    return narrow.period is not None and narrow.period.within(wide.period)


@settings(max_examples=400, deadline=None)
@given(req=requests, world=worlds, extra=st.one_of(reservations, blocks))
def test_adding_a_reservation_or_block_never_widens_access(
    req: AccessRequest, world: World, extra: Reservation | Block
) -> None:
    """Monotonicity: a deny stays a deny, and a permit never grows."""
    assert _within(world.with_(extra).decide(req), world.decide(req))


@settings(max_examples=400, deadline=None)
@given(req=requests, world=worlds, block_id=ids)
def test_a_block_of_the_practitioner_always_denies(req: AccessRequest, world: World, block_id: str) -> None:
    req = dataclasses.replace(req, practitioner_hpr=req.practitioner_hpr or DOCTOR)
    assert req.practitioner_hpr is not None
    decision = world.with_(Block(block_id, req.patient, req.practitioner_hpr)).decide(req)
    assert not decision.permit
    assert decision.categories == frozenset()


@settings(max_examples=300, deadline=None)
@given(req=requests, world=worlds)
def test_decisions_are_well_formed(req: AccessRequest, world: World) -> None:
    decision = world.decide(req)
    assert decision.emergency is req.purpose.is_emergency
    if decision.permit:
        assert decision.reasons[-1] in {
            Reason.PERMIT_AGREEMENT,
            Reason.PERMIT_CONSENT,
            Reason.PERMIT_OWN_ORGANISATION,
        }
        if req.categories is not None:
            assert decision.categories is not None
            assert decision.categories <= req.categories
    elif decision.reveals_existence:
        # A plain denial is about the organisations only: the same for any patient.
        other = dataclasses.replace(req, patient=OTHER_PATIENT if req.patient == PATIENT else PATIENT)
        assert world.decide(other) == decision


# -- writes (issue 11: a plan changed by another organisation) -----------------------------------------


def _plan_agreement(writes: Iterable[str]) -> SharingAgreement:
    shared = agreement(categories=("vital-signs", "plan"))
    return dataclasses.replace(shared, write_categories=frozenset(writes))


def test_a_write_needs_a_write_category() -> None:
    read = ask(request(categories=["plan"]), agreements=[_plan_agreement(())])
    assert read.permit
    assert read.categories == frozenset({"plan"})
    write = dataclasses.replace(request(categories=["plan"]), write=True)
    assert_plain_denial(ask(write, agreements=[_plan_agreement(())]), Reason.SCOPE_NOT_AGREED)
    granted = ask(write, agreements=[_plan_agreement(("plan",))])
    assert granted.permit
    assert granted.categories == frozenset({"plan"})
    assert_plain_denial(
        ask(
            dataclasses.replace(request(categories=["vital-signs"]), write=True),
            agreements=[_plan_agreement(("plan",))],
        ),
        Reason.SCOPE_NOT_AGREED,
    )


def test_a_write_is_refused_by_a_block_and_a_reservation_like_a_read() -> None:
    write = dataclasses.replace(request(categories=["plan"]), write=True)
    grant = [_plan_agreement(("plan",))]
    assert_hidden_denial(
        ask(write, agreements=grant, blocks=[Block("b1", PATIENT, DOCTOR)]), Reason.BLOCKED_PRACTITIONER
    )
    assert_hidden_denial(
        ask(write, agreements=grant, reservations=[Reservation("r1", PATIENT)]), Reason.RESERVATION
    )
    own = dataclasses.replace(write, consumer=MUNICIPALITY, point_of_care=None)
    assert ask(own).permit  # the controller writes its own plans without an agreement
    assert ask(own, reservations=[Reservation("r1", PATIENT)]).permit


def test_an_agreement_writes_only_what_it_shares() -> None:
    with pytest.raises(ValueError, match="not shared: plan"):
        dataclasses.replace(agreement(), write_categories=frozenset({"plan"}))
