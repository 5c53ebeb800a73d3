"""Search parsing never fails with anything but a 400 (``InvalidSearch``), whatever the input.

Names are drawn from the registry with every FHIR modifier and prefix, values from arbitrary text
(Unicode digits, huge years, separators); the parser either returns a query or refuses naming a
parameter that was sent.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sharing_api.errors import InvalidSearch
from sharing_api.fhir.search import (
    FHIR_DATE_PREFIXES,
    FHIR_MODIFIERS,
    OBSERVATION_RESULT,
    OBSERVATION_SEARCH,
    PATIENT_PARAMS,
    Token,
    parse_patient_search,
    parse_search,
    read_subsetting,
)

BASES = [p.name for p in OBSERVATION_SEARCH] + [r.name for r in OBSERVATION_RESULT] + list(PATIENT_PARAMS)
names = st.one_of(
    st.sampled_from(BASES),
    st.builds(lambda b, m: f"{b}:{m}", st.sampled_from(BASES), st.sampled_from(FHIR_MODIFIERS)),
    st.text(max_size=20),
)
values = st.one_of(
    st.text(max_size=40),
    st.builds(lambda p, y: f"{p}{y}-12-31", st.sampled_from(FHIR_DATE_PREFIXES), st.integers(0, 99999)),
    st.sampled_from(["²", "١٢", "0", "9999999999", "true", "count", "a,b,,c", "|", "x|"]),
)
params = st.lists(st.tuples(names, values), max_size=8)


def _nobody(ref: str) -> Token:
    return Token("urn:test", ref)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(params, st.booleans())
def test_observation_search_parses_or_refuses_naming_a_parameter(
    sent: list[tuple[str, str]], strict: bool
) -> None:
    try:
        parse_search(sent, strict=strict, default_count=50, max_count=500, resolve_patient=_nobody)
    except InvalidSearch as exc:
        expression = exc.issues[0].expression
        assert expression is not None
        assert any(expression == name or expression.startswith(name[:64]) for name, _ in sent)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(params)
def test_consent_search_and_read_subsetting_parse_or_refuse(sent: list[tuple[str, str]]) -> None:
    for parse in (lambda p: parse_patient_search("Consent", p), read_subsetting):
        try:
            parse(sent)
        except InvalidSearch as exc:
            expression = exc.issues[0].expression
            assert expression is not None
