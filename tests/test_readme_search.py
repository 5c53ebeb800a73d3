"""The README's "FHIR search" list is the search-parameter registry, no more and no less."""

from __future__ import annotations

from pathlib import Path

from sharing_api.fhir.search import (
    DATE_PREFIXES,
    FHIR_DATE_PREFIXES,
    FHIR_MODIFIERS,
    RESULT_PARAMETERS,
    SEARCH_PARAMETERS,
)

README = Path(__file__).resolve().parents[1] / "README.md"


def expected() -> str:
    rows = ["| resource | parameter | type | modifiers | prefixes / values |", "|---|---|---|---|---|"]
    for resource, params in SEARCH_PARAMETERS.items():
        for p in params:
            mods = ", ".join([f"`:{m}`" for m in p.modifiers] + [f"`.{c}`" for c in p.chains]) or "none"
            rows.append(f"| {resource} | `{p.name}` | {p.type} | {mods} | {' '.join(p.prefixes) or '-'} |")
    for resource, results in RESULT_PARAMETERS.items():
        for r in results:
            rows.append(f"| {resource} | `{r.name}` | result | none | {' '.join(r.values) or '-'} |")
    applied = {m for params in SEARCH_PARAMETERS.values() for p in params for m in p.modifiers}
    modifiers = ", ".join(f"`:{m}`" for m in FHIR_MODIFIERS if m not in applied)
    prefixes = ", ".join(f"`{p}`" for p in FHIR_DATE_PREFIXES if p not in DATE_PREFIXES)
    refused = (
        "Refused with a 400 `OperationOutcome` naming the parameter, whatever `Prefer` says: every other "
        f"modifier FHIR R4 defines ({modifiers}) and the date prefix {prefixes}."
    )
    return "\n".join(rows) + "\n" + refused


def test_the_readme_lists_exactly_what_the_registry_supports_and_refuses() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("<!-- search-support:start -->", 1)[1].split("<!-- search-support:end -->", 1)[0]
    table, _, prose = section.strip().partition("\n\n")
    want_table, _, want_prose = expected().rpartition("\n")
    assert table.strip() == want_table
    assert " ".join(prose.split()) == want_prose
