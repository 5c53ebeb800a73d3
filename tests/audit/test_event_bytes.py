"""The request path's event bytes (``events.event_bytes``, ``log.facts_row``) are the general builder's.

Every expectation here is derived from ``build_audit_event`` and the RFC 8785 serialisation of
``canonical.canonical_json`` (or ``log.entry_row``, which uses them), never written out by hand.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consent.policy import Decision, Reason
from sharing_api.audit import events
from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.canonical import canonical_json
from sharing_api.audit.events import (
    AuditFacts,
    Coded,
    DecisionRef,
    SharingDecision,
    build_audit_event,
    event_bytes,
)
from sharing_api.audit.log import DERIVED_COLUMNS, AuditLog, entry_row, facts_row
from sharing_api.auditing import Auditor, RequestInfo, audit_facts
from tests.audit.factories import FNR, TENANT, facts
from tests.audit.test_caller_facts import HASHER, _caller
from tests.audit.test_encoding import FULL, _changed_fields
from tests.audit.test_events import SHAPES

SEARCH = RequestInfo(
    "POST",
    f"/{TENANT}/fhir/Observation/_search",
    b"patient=urn%3Aoid%3A2.16.578.1.12.4.1.4.1%7C13116900216&code=http%3A%2F%2Floinc.org%7C8867-4",
    "req-search",
    "10.1.2.3",
    "https://dho.example",
)
READ = RequestInfo(
    "GET", f"/{TENANT}/fhir/Observation/o-1", None, "req-read", "10.1.2.3", "https://dho.example"
)
TOKEN = RequestInfo("POST", "/token", None, "req-token", None, "https://dho.example")
PERMIT = Decision(
    permit=True,
    reasons=(Reason.PERMIT_AGREEMENT,),
    used=("SharingAgreement/ag-1", "Consent/c-9"),
    categories=frozenset({"vital-signs"}),
)
DENY = Decision(permit=False, reasons=(Reason.NO_AGREEMENT,), categories=frozenset())
PATIENT = (FNR, "13116900216")


def general(f: AuditFacts) -> bytes:
    """The stored bytes as the general builder makes them."""
    return canonical_json(build_audit_event(f))


def requests() -> list[AuditFacts]:
    """Facts as the routes make them (``audit_facts``): reads, searches, refusals, errors and requests
    without a token, of two health workers and a system client, in turn, so that each caller's kept
    parts are used again after another caller's."""
    doctor = _caller("9144897", "01017012345", "jti-a", user_selected=True)
    nurse = _caller("9144898", "02027012345", "jti-b", authorization="SP")
    system = replace(doctor, practitioner_hpr=None, pid=None, token_jti="jti-s", attestation=None)
    made = []
    for n in range(2):
        for who in (doctor, nurse, system):
            hits = tuple(f"Observation/{n}-{i}" for i in range(12 * n))
            kinds: list[dict[str, Any]] = [
                {
                    "action": AuditAction.OBSERVATION_SEARCH,
                    "request": SEARCH,
                    "resources": hits,
                    "decision": PERMIT,
                },
                {
                    "action": AuditAction.OBSERVATION_READ,
                    "request": READ,
                    "resources": hits[:1],
                    "decision": PERMIT,
                },
                {"action": AuditAction.OBSERVATION_SEARCH, "request": SEARCH, "decision": DENY},
                {
                    "action": AuditAction.OBSERVATION_CREATE,
                    "outcome": Outcome.SERIOUS_FAILURE,
                    "request": READ,
                    "description": "the store failed",
                },
                {
                    "action": AuditAction.REQUEST_REFUSED,
                    "outcome": Outcome.MINOR_FAILURE,
                    "request": SEARCH,
                    "description": "the proof was used before",
                },
            ]
            for kind in kinds:
                decision = kind.get("decision")
                permitted = decision is None or decision.permit
                made.append(
                    audit_facts(
                        **{"outcome": Outcome.SUCCESS if permitted else Outcome.MINOR_FAILURE, **kind},
                        tenant=TENANT,
                        caller=who,
                        patient=PATIENT if n else None,
                        categories=sorted(decision.categories or ()) if decision else (),
                        pid_hash=HASHER,
                    )
                )
    for action in (AuditAction.TOKEN_REFUSED, AuditAction.REQUEST_REFUSED):  # no token, no caller
        made.append(
            audit_facts(
                action=action, outcome=Outcome.MINOR_FAILURE, tenant=TENANT, caller=None, request=TOKEN
            )
        )
    return made


def test_the_routes_facts_give_the_general_builders_bytes() -> None:
    events._serialized_callers.clear()
    for f in requests() + requests():
        assert event_bytes(f) == general(f)
        assert facts_row(f) == entry_row(f.tenant, build_audit_event(f))
    kept = [parts for _, parts in events._serialized_callers.values()]
    # each caller's user agents as recipients and (a create) as authors; nobody's as recipients
    assert len(kept) == 3 * 2 + 1
    assert all(parts is not None for parts in kept)  # so their bytes came from the kept parts


@pytest.mark.parametrize("action", list(AuditAction))
@pytest.mark.parametrize("outcome", list(Outcome))
@pytest.mark.parametrize("shape", SHAPES)
def test_every_action_outcome_and_shape_of_caller(
    action: AuditAction, outcome: Outcome, shape: dict[str, Any]
) -> None:
    for n in (7, 8):  # the second request of the caller uses what the first kept
        f = facts(n, action=action, outcome=outcome, **{**shape, "token_jti": shape.get("token_jti", "jti")})
        assert event_bytes(f) == general(f)


@pytest.mark.parametrize(
    ("field", "changed"), _changed_fields(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_a_value_of_another_type_gives_the_general_bytes(field: str, changed: AuditFacts) -> None:
    """Not plain (a ``str`` subclass, an int for a flag): equal to a plain value, as ``1 == True``, but
    never given that value's kept bytes."""
    assert event_bytes(FULL) == general(FULL)
    assert event_bytes(changed) == general(changed), field


def test_what_has_no_canonical_form_is_refused_as_before() -> None:
    for bad in (replace(FULL, description="\ud800"), replace(FULL, practitioner_name="\ud800")):
        with pytest.raises(ValueError, match="non-UTF-8"):
            general(bad)
        with pytest.raises(ValueError, match="non-UTF-8"):
            event_bytes(bad)


def test_a_number_where_text_goes_gives_the_general_bytes() -> None:
    f = replace(FULL, decision=SharingDecision(permit=True, reasons=(1.5,), used=()))  # type: ignore[arg-type]
    assert event_bytes(f) == general(f)


texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=30).filter(lambda t: "eyJ" not in t)


@settings(max_examples=150)
@given(caller_text=texts, request_text=texts, user_selected=st.booleans(), hits=st.integers(0, 3))
def test_any_text_of_the_caller_and_of_the_request(
    caller_text: str, request_text: str, user_selected: bool, hits: int
) -> None:
    f = replace(
        FULL,
        practitioner_name=caller_text or None,
        organisation_name=caller_text or None,
        purpose_of_use_details=Coded(system="urn:x", code=caller_text or "c", display=caller_text or None),
        decision_ref=DecisionRef(id="d", user_selected=user_selected, description=caller_text or None),
        description=request_text or None,
        correlation_id=request_text,
        resources=tuple(f"Observation/{request_text}{i}" for i in range(hits)),
        patient=(FNR, request_text or "p"),
    )
    assert event_bytes(f) == general(f)


def test_the_stored_rows_are_the_general_builders(log: AuditLog) -> None:
    """On both databases: what ``Auditor.record`` (its own transaction) and ``record_in`` store is, byte
    for byte and column for column, ``entry_row`` of the general builder's event."""
    made = requests()
    auditor = Auditor(log)
    for i, f in enumerate(made):
        if i % 2:
            auditor.record(f)
        else:
            with log.engine.connect().execution_options(write=True) as conn, conn.begin():
                auditor.record_in(conn, f)
    stored = list(log.stored_entries(TENANT))
    assert len(stored) == len(made)
    for entry, f in zip(sorted(stored, key=lambda e: e.id), made, strict=True):
        expected = entry_row(TENANT, build_audit_event(f))
        assert entry.event == expected["event"] == general(f)
        assert {c: getattr(entry, c) for c in DERIVED_COLUMNS} == {c: expected[c] for c in DERIVED_COLUMNS}


class _Unreadable:
    """Stands for a request's field: any use of it (truth, comparison, iteration, an attribute) fails."""

    def _used(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the caller's parts read a field of the request")

    __bool__ = __eq__ = __hash__ = __iter__ = __len__ = __str__ = __getattr__ = _used  # type: ignore[assignment]


@pytest.mark.parametrize("field", events._REQUEST_FIELDS)
def test_the_callers_parts_read_the_callers_fields_alone(field: str) -> None:
    """What ``event_bytes`` keeps per caller may depend on ``_CALLER_FIELDS`` only: a field of the
    request that the parts read would be served from another request's bytes. Each request field in turn
    is made unusable; the parts must come out the same (a field passed through untouched would show in
    the comparison, which fails on it)."""
    for action in (AuditAction.OBSERVATION_SEARCH, AuditAction.OBSERVATION_CREATE):
        whole = replace(FULL, action=action)
        role = events._user_role(events.interaction_of(action)[0])
        poisoned = object.__new__(AuditFacts)
        for name in AuditFacts.__slots__:
            object.__setattr__(poisoned, name, _Unreadable() if name == field else getattr(whole, name))
        assert events._caller_parts(poisoned, role) == events._caller_parts(whole, role)
