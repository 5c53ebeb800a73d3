"""``_summary`` and ``_elements``: a subset of a stored resource, tagged ``SUBSETTED`` (FHIR R4 "Search",
3.1.1.5.9 and 3.1.1.5.10; the tag from "Resource", 2.15.0.9 / v3 ObservationValue).

Which elements are "summary" and which are mandatory comes from the R4 StructureDefinitions as
fhir.resources carries them (``summary_element_property``, required fields), not from a list kept here.
Only the top level is subsetted; ``id`` and ``meta`` are always kept, and so are mandatory elements
(servers SHOULD return them).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
ALWAYS = frozenset({"resourceType", "id", "meta"})


@cache
def _elements_of(resource_type: str) -> tuple[frozenset[str], frozenset[str], dict[str, str]]:
    """(summary elements, mandatory elements, choice element -> its ``x[x]`` group) of ``resource_type``."""
    model = get_fhir_model_class(resource_type)
    summary, mandatory, choices = set(), set(), {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        key = info.alias or name
        if extra.get("summary_element_property"):
            summary.add(key)
        if info.is_required() or extra.get("element_required") or extra.get("one_of_many_required"):
            mandatory.add(key)
        group = extra.get("one_of_many")
        if isinstance(group, str):
            choices[key] = group
    return frozenset(summary), frozenset(mandatory), choices


def _keeps(key: str, wanted: frozenset[str], choices: dict[str, str]) -> bool:
    base = key.removeprefix("_")  # primitive extensions follow their element
    return base in wanted or (
        base in choices and (choices[base] in wanted or f"{choices[base]}[x]" in wanted)
    )


def subset(data: bytes, summary: str | None, elements: tuple[str, ...]) -> bytes:
    """``data`` (stored JSON) reduced per ``_summary`` (``true``/``text``/``data``) or ``_elements``;
    unchanged when neither asks for less."""
    if summary is None and not elements:
        return data
    resource: dict[str, Any] = orjson.loads(data)
    summary_set, mandatory, choices = _elements_of(str(resource["resourceType"]))
    if summary == "data":
        out = {k: v for k, v in resource.items() if k != "text"}
    else:
        if summary == "true":
            wanted = summary_set | mandatory
        elif summary == "text":
            wanted = mandatory | {"text"}
        else:
            wanted = mandatory | frozenset(elements)
        out = {k: v for k, v in resource.items() if k in ALWAYS or _keeps(k, wanted, choices)}
    meta = dict(out.get("meta") or {})
    tags = [t for t in meta.get("tag") or [] if t.get("code") != "SUBSETTED"]
    meta["tag"] = [*tags, SUBSETTED]
    out["meta"] = meta
    return orjson.dumps(out)
