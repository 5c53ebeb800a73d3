"""Batch and transaction Bundles of Observations (FHIR R4 http, PMD ``pmd-Bundle-Observation`` profile).

Bundle-level rules refuse the whole Bundle (nothing stored): type, entry count, a unique ``fullUrl`` on
every entry, ``request.method`` POST or PUT, Observations only. Content errors of one Observation fail
that entry in a batch, and the whole Bundle in a transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from sharing_api.errors import InvalidResource, Issue

PMD_ENTRY_ID_EXTENSION = (
    "http://hl7.no/fhir/vkpobservation/StructureDefinition/PmdBundleResponseEntryIdExtension"
)
_BY_ID = re.compile(r"^(?:.*/)?Observation/([A-Za-z0-9\-.]{1,64})$")
_STATUS_TEXT = {
    200: "200 OK",
    201: "201 Created",
    400: "400 Bad Request",
    404: "404 Not Found",
    409: "409 Conflict",
    412: "412 Precondition Failed",
    422: "422 Unprocessable Entity",
}


@dataclass(frozen=True, slots=True)
class Entry:
    """One request of a Bundle: POST creates; PUT updates by id, or upserts by business identifier."""

    index: int
    full_url: str
    method: str
    resource: dict[str, Any]
    target_id: str | None
    if_none_exist: str | None


def parse_bundle(bundle: Any, *, max_entries: int) -> tuple[str, list[Entry]]:
    """The Bundle's type (``batch`` or ``transaction``) and its entries, or ``InvalidResource``."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InvalidResource("expected a Bundle of type batch or transaction", "Bundle.resourceType")
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        raise InvalidResource("Bundle.type must be batch or transaction", "Bundle.type")
    raw_entries = bundle.get("entry") or []
    if not isinstance(raw_entries, list):
        raise InvalidResource("Bundle.entry must be a list", "Bundle.entry")
    if len(raw_entries) > max_entries:
        raise InvalidResource(
            f"at most {max_entries} entries per Bundle (got {len(raw_entries)})", "Bundle.entry"
        )
    issues: list[Issue] = []
    seen: dict[str, int] = {}
    entries: list[Entry] = []
    for i, raw in enumerate(raw_entries):
        at = f"Bundle.entry[{i}]"
        if not isinstance(raw, dict):
            issues.append(Issue("an entry must be an object", at))
            continue
        full_url = raw.get("fullUrl")
        if not isinstance(full_url, str) or not full_url:
            issues.append(Issue("every entry needs a fullUrl (echoed in the response)", f"{at}.fullUrl"))
        elif full_url in seen:
            issues.append(Issue(f"fullUrl repeats entry {seen[full_url]}", f"{at}.fullUrl"))
        else:
            seen[full_url] = i
        request = raw.get("request")
        method = request.get("method") if isinstance(request, dict) else None
        if method not in ("POST", "PUT"):
            issues.append(Issue("request.method must be POST or PUT", f"{at}.request.method"))
        resource = raw.get("resource")
        if not isinstance(resource, dict) or resource.get("resourceType") != "Observation":
            kind_found = resource.get("resourceType") if isinstance(resource, dict) else None
            issues.append(
                Issue(f"only Observations may be sent (got {kind_found!r})", f"{at}.resource.resourceType")
            )
        if issues:
            continue
        assert isinstance(request, dict)
        assert isinstance(resource, dict)
        assert isinstance(full_url, str)
        url = str(request.get("url") or "")
        match = _BY_ID.match(url) if method == "PUT" else None
        entries.append(
            Entry(
                index=i,
                full_url=full_url,
                method=str(method),
                resource=resource,
                target_id=match.group(1) if match else None,
                if_none_exist=request.get("ifNoneExist")
                if isinstance(request.get("ifNoneExist"), str)
                else None,
            )
        )
    if issues:
        raise InvalidResource(issues[0].diagnostics, issues=issues)
    return str(kind), entries


def response_entry(
    full_url: str,
    status: int,
    *,
    location: str | None = None,
    version: int | None = None,
    last_modified: str | None = None,
    outcome: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``batch-response`` entry that echoes the request's ``fullUrl`` (PMD ``pmd-Bundle-Response``)."""
    response: dict[str, Any] = {
        "extension": [{"url": PMD_ENTRY_ID_EXTENSION, "valueUri": full_url}],
        "status": _STATUS_TEXT.get(status, str(status)),
    }
    if location:
        response["location"] = location
    if version is not None:
        response["etag"] = f'W/"{version}"'
    if last_modified:
        response["lastModified"] = last_modified
    if outcome:
        response["outcome"] = outcome
    return {"fullUrl": full_url, "response": response}


def response_bundle(kind: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``batch-response``/``transaction-response`` Bundle; no ``entry`` element when there are none
    (FHIR JSON has no empty arrays, R4 §2.6.2)."""
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": kind}
    if entries:
        bundle["entry"] = entries
    return bundle


def history_entry(
    base: str, obs_id: str, version: int, last_modified: str, resource_type: str = "Observation"
) -> bytes:
    """The JSON of one history entry up to (not including) its resource: ``fullUrl``, the ``request``
    that made the version and the ``response`` it got (bdl-3, bdl-4: both are mandatory in history).
    Version 1 was a create (POST), every later one an update (PUT) of that id."""
    request = (
        {"method": "POST", "url": resource_type}
        if version == 1
        else {"method": "PUT", "url": f"{resource_type}/{obs_id}"}
    )
    response = {
        "status": _STATUS_TEXT[201 if version == 1 else 200],
        "etag": f'W/"{version}"',
        "lastModified": last_modified,
    }
    return orjson.dumps(
        {"fullUrl": f"{base}/{resource_type}/{obs_id}", "request": request, "response": response}
    )[:-1]
