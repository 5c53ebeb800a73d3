"""Log control (product.md §2): emergency access, denied attempts, unusual volume, reads outside an
agreement."""

from __future__ import annotations

from datetime import datetime, timedelta

from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.control import FindingKind
from sharing_api.audit.events import SharingDecision
from sharing_api.audit.log import AuditLog
from tests.audit.factories import FNR, HOSPITAL, T0, TENANT, facts

GP_OFFICE = "974589095"
DAY = timedelta(days=1)


def record_day(log: AuditLog) -> None:
    with log.engine.connect().execution_options(write=True) as conn, conn.begin():
        # a doctor at the hospital reads 12 patients, one of them in an emergency
        for n in range(12):
            log.record(conn, facts(n, purpose_of_use="BTG" if n == 5 else "TREAT"))
        # a GP reads one patient twice; the second time after the GP's agreement ended (T0 + 1h)
        for n, offset in ((100, timedelta(minutes=10)), (101, timedelta(hours=2))):
            log.record(
                conn,
                facts(
                    n,
                    recorded=T0 + offset,
                    organisation=GP_OFFICE,
                    practitioner_hpr="5555555",
                    patient=(FNR, "01018012345"),
                ),
            )
        # a refused read (blocked health worker) and a refused token
        log.record(
            conn,
            facts(
                200,
                action=AuditAction.OBSERVATION_READ,
                outcome=Outcome.MINOR_FAILURE,
                decision=SharingDecision(permit=False, reasons=("DENY_BLOCKED",), used=("Consent/b1",)),
                resources=(),
            ),
        )
        log.record(
            conn,
            facts(
                201,
                action=AuditAction.TOKEN_REFUSED,
                outcome=Outcome.MINOR_FAILURE,
                patient=None,
                decision=None,
            ),
        )
        # the controller's own staff need no agreement
        log.record(conn, facts(300, organisation=TENANT, practitioner_hpr="7777777"))
        # outside the reporting period
        log.record(conn, facts(400, recorded=T0 - DAY, purpose_of_use="ETREAT"))


def test_findings_of_a_day(log: AuditLog) -> None:
    record_day(log)
    agreements = [(HOSPITAL, T0 - 30 * DAY, None), (GP_OFFICE, T0 - DAY, T0 + timedelta(hours=1))]
    report = log.report(TENANT, T0, T0 + DAY, volume_threshold=10, agreements=agreements)
    assert report.totals == {"emergency": 1, "denied": 2, "volume": 1, "outside_agreement": 1}
    (emergency,) = report.of(FindingKind.EMERGENCY)
    assert (emergency.purpose, emergency.patient) == ("BTG", facts(5).patient[1])  # type: ignore[index]
    assert emergency.seq is not None
    denied = report.of(FindingKind.DENIED)
    assert [d.action for d in denied] == ["observation.read", "token.refused"]
    (volume,) = report.of(FindingKind.VOLUME)
    assert (volume.agent_hpr, volume.organisation) == ("9144897", HOSPITAL)
    assert "12 distinct patients" in volume.detail  # the refused read does not count
    (outside,) = report.of(FindingKind.OUTSIDE_AGREEMENT)
    assert (outside.organisation, outside.recorded) == (GP_OFFICE, T0 + timedelta(hours=2))
    as_json = report.to_json()
    assert as_json["totals"] == report.totals
    assert len(as_json["findings"]) == 5


def test_agreements_as_a_callable(log: AuditLog) -> None:
    record_day(log)

    def valid(orgnr: str, moment: datetime) -> bool:
        return orgnr == HOSPITAL or moment < T0 + timedelta(hours=1)

    report = log.report(TENANT, T0, T0 + DAY, agreements=valid)
    assert [f.recorded for f in report.of(FindingKind.OUTSIDE_AGREEMENT)] == [T0 + timedelta(hours=2)]
    assert report.of(FindingKind.VOLUME) == []  # threshold 50
    assert log.report(TENANT, T0, T0 + DAY).totals.get("outside_agreement") is None


def test_no_agreement_at_all_flags_every_foreign_read(log: AuditLog) -> None:
    record_day(log)
    report = log.report(TENANT, T0, T0 + DAY, agreements=[], max_findings=3)
    assert report.totals["outside_agreement"] == 14
    assert len(report.of(FindingKind.OUTSIDE_AGREEMENT)) == 3
