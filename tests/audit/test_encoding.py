"""The fast canonical encoder writes exactly the RFC 8785 bytes of ``canonical.canonical_json``."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sharing_api.audit.canonical import canonical_json
from sharing_api.audit.encoding import canonical_event
from sharing_api.audit.events import build_audit_event
from tests.audit.factories import facts

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
