"""The fast canonical encoder writes exactly the RFC 8785 bytes of ``canonical.canonical_json``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.canonical import canonical_json
from sharing_api.audit.encoding import _orjson_is_canonical, canonical_event
from sharing_api.audit.events import (
    AuditFacts,
    Coded,
    DecisionRef,
    SharingDecision,
    build_audit_event,
    plain_facts,
)
from sharing_api.audit.pseudonym import PidHasher
from tests.audit.factories import HOSPITAL, facts

texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)  # no lone surrogates
scalars = st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | texts
floats = st.floats(allow_nan=False, allow_infinity=False)


def json_values(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=6) | st.dictionaries(texts, inner, max_size=6),
        max_leaves=40,
    )


@settings(max_examples=500)
@given(json_values(scalars))
def test_same_bytes_as_rfc8785_for_event_like_values(value: Any) -> None:
    assert canonical_event(value) == canonical_json(value)


@settings(max_examples=200)
@given(json_values(scalars | floats))
def test_same_bytes_with_floats_and_any_keys(value: Any) -> None:
    assert canonical_event(value) == canonical_json(value)


def test_same_bytes_for_built_events() -> None:
    event = build_audit_event(facts(query=b"\x00\xff<script>", practitioner_name="Ærlig 𝄞 \u2028"))
    assert canonical_event(event) == canonical_json(event)


@pytest.mark.parametrize("bad", [{"a": 2**53}, {"a": float("nan")}, {"a": "\ud800"}, {"a": object()}])
def test_what_jcs_cannot_represent_is_refused(bad: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        canonical_event(bad)


PID_HASH = PidHasher(b"k" * 32)("01017012345")
FULL = facts(
    practitioner_pid_hash=PID_HASH,
    point_of_care_name="Legevakt",
    practitioner_authorization=Coded(system="urn:oid:2.16.578.1.12.4.1.1.9060", code="LE", display="Lege"),
)
"""Facts with every field set, so every value the builder copies is in the event."""


class Text(str):
    """A ``str`` subclass: ``orjson`` writes it, but the walk does not vouch for it."""


def _variants() -> list[AuditFacts]:
    shapes = [
        {},
        {"practitioner_hpr": None},
        {"practitioner_hpr": None, "organisation": None},
        {"point_of_care": HOSPITAL},
        {"client_id": None, "organisation": None, "practitioner_hpr": None, "patient": None},
        {"decision": SharingDecision(permit=False, reasons=("NO_AGREEMENT",))},
    ]
    return [
        replace(FULL, action=action, outcome=outcome, **shape)
        for action in AuditAction
        for outcome in Outcome
        for shape in shapes
    ]


def test_built_events_of_plain_facts_need_no_walk() -> None:
    """What ``plain_facts`` vouches for is what the walk accepts, and the bytes are the same."""
    for built in _variants():
        assert plain_facts(built)
        event = build_audit_event(built)
        assert _orjson_is_canonical(event)
        assert orjson.dumps(event, option=orjson.OPT_SORT_KEYS) == canonical_json(event)


texts_without_tokens = texts.filter(lambda t: "eyJ" not in t)


@settings(max_examples=200)
@given(
    name=texts_without_tokens,
    display=texts_without_tokens,
    description=texts_without_tokens,
    resource=texts_without_tokens,
    user_selected=st.booleans(),
)
def test_any_text_in_plain_facts_gives_the_rfc8785_bytes(
    name: str, display: str, description: str, resource: str, user_selected: bool
) -> None:
    built = replace(
        FULL,
        practitioner_name=name or None,
        organisation_name=name or None,
        description=description or None,
        resources=(f"Observation/{resource}",),
        purpose_of_use_details=Coded(system="urn:x", code=display or "c", display=display or None),
        decision_ref=DecisionRef(id=display or "d", user_selected=user_selected, description=name or None),
    )
    assume(plain_facts(built))
    event = build_audit_event(built)
    assert _orjson_is_canonical(event)
    assert orjson.dumps(event, option=orjson.OPT_SORT_KEYS) == canonical_json(event)


def _unplain(value: Any) -> Any:
    """``value`` with a ``Text`` (or, for a flag, an int) where the builder expects exactly a ``str``."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        return Text(value)
    if isinstance(value, tuple) and value and isinstance(value[-1], str):
        return (*value[:-1], Text(value[-1]))
    return None


def _changed_fields() -> list[tuple[str, AuditFacts]]:
    """FULL with one copied value at a time made non-plain, in the facts and in each of their parts."""
    out = []
    for name in AuditFacts.__slots__:
        value = getattr(FULL, name)
        if isinstance(value, (Coded, DecisionRef, SharingDecision)):
            for part in type(value).__slots__:
                changed = _unplain(getattr(value, part))
                if changed is not None:
                    out.append((f"{name}.{part}", replace(FULL, **{name: replace(value, **{part: changed})})))
            continue
        changed = _unplain(value)
        if changed is not None and not isinstance(value, (AuditAction, Outcome)):
            out.append((name, replace(FULL, **{name: changed})))
    return out


@pytest.mark.parametrize(
    ("field", "changed"), _changed_fields(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_a_value_of_another_type_is_walked(field: str, changed: AuditFacts) -> None:
    assert not plain_facts(changed), field
    event = build_audit_event(changed)
    assert canonical_event(event) == canonical_json(event)


def test_every_field_is_checked() -> None:
    """Every field of the facts and of their parts is set in FULL and made non-plain above (a new field
    too, so that ``plain_facts`` cannot fall behind the builder unnoticed)."""
    parts = (Coded, DecisionRef, SharingDecision)
    expected = set()
    for name in AuditFacts.__slots__:
        value = getattr(FULL, name)
        assert value not in (None, ()), f"FULL leaves {name} unset"
        if isinstance(value, parts):
            expected |= {f"{name}.{p}" for p in type(value).__slots__ if getattr(value, p) not in (None, ())}
        elif name not in (
            "action",
            "outcome",
            "recorded",
            "attested_at",
            "query",
        ):  # converted by the builder
            expected.add(name)
    assert {field for field, _ in _changed_fields()} == expected
