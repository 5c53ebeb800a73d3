"""``assert_valid_fhir(body)``: a response body is FHIR R4 JSON that strict parsers accept.

Three independent checks, each catching what the others skip:

1. FHIR.js (the npm ``fhir`` package, ``tests/fhirjs/``) validates against the FHIR **R4** base
   StructureDefinitions and required value sets, and refuses unknown elements.
2. fhir.resources (pydantic models of **R4B**, the pinned major the API already uses at its edge): the
   element types and cardinalities. R4B differs from R4 in a few resources (e.g. ``Bundle.issues`` is new
   in R4B; some SubscriptionTopic/Evidence resources are R4B-only); the resources this API serves
   (Observation, Consent, AuditEvent, Bundle, OperationOutcome, CapabilityStatement) have the same shape
   for what we send, so an R4B failure here is an R4 failure too.
3. Our own JSON and Bundle rules that neither tool checks: no empty arrays, objects or strings and no
   ``null`` anywhere (FHIR R4 §2.6.2 "JSON"), and the Bundle invariants bdl-1 (``total`` only in a
   searchset or history), bdl-2 (``entry.search`` only in a searchset), bdl-3 (``entry.request`` in every
   batch, transaction and history entry and nowhere else), bdl-4 (``entry.response`` in every
   batch-response, transaction-response and history entry and nowhere else), bdl-5 (an entry has a
   resource, request or response), bdl-7 (``fullUrl`` unique outside history) and bdl-8 (``fullUrl`` is
   not version-specific).

FHIR.js needs node and ``tests/fhirjs/node_modules`` (``make test`` runs ``npm ci`` there); without them
the checks that need it go through :func:`tests.prerequisites.require` (skip locally, fail in CI).
"""

from __future__ import annotations

import atexit
import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from tests.prerequisites import require

FHIRJS = Path(__file__).resolve().parent / "fhirjs"
_REQUEST_BUNDLES = {"batch", "transaction", "history"}
_RESPONSE_BUNDLES = {"batch-response", "transaction-response", "history"}


class _FhirJs:
    """One long-lived node process running ``validate.js`` (one JSON line in, one out)."""

    def __init__(self) -> None:
        node = shutil.which("node")
        require(
            node and (FHIRJS / "node_modules" / "fhir").is_dir(), "FHIR.js: node and `npm ci` in tests/fhirjs"
        )
        assert node is not None
        self._process = subprocess.Popen(
            [node, str(FHIRJS / "validate.js")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        self._lock = threading.Lock()

    def validate(self, body: dict[str, Any]) -> dict[str, Any]:
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        with self._lock:
            self._process.stdin.write(json.dumps(body) + "\n")
            self._process.stdin.flush()
            line = self._process.stdout.readline()
        assert line, "the FHIR.js validator stopped"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(timeout=10)


_fhirjs: _FhirJs | None = None


def _validator() -> _FhirJs:
    global _fhirjs
    if _fhirjs is None:
        _fhirjs = _FhirJs()
        atexit.register(shutdown)
    return _fhirjs


def shutdown() -> None:
    """Stop the FHIR.js process (at interpreter exit)."""
    global _fhirjs
    if _fhirjs is not None:
        _fhirjs.close()
        _fhirjs = None


def json_problems(value: Any, path: str = "$") -> list[str]:
    """Empty arrays, objects and strings and nulls anywhere in ``value`` (FHIR R4 §2.6.2)."""
    problems: list[str] = []
    if value is None:
        problems.append(f"{path} is null")
    elif isinstance(value, str) and not value.strip():
        problems.append(f"{path} is an empty string")
    elif isinstance(value, list):
        if not value:
            problems.append(f"{path} is an empty array")
        for i, item in enumerate(value):
            problems += json_problems(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        if not value:
            problems.append(f"{path} is an empty object")
        for key, item in value.items():
            problems += json_problems(item, f"{path}.{key}")
    return problems


def bundle_problems(bundle: dict[str, Any]) -> list[str]:
    """The Bundle invariants FHIR.js and fhir.resources do not evaluate (bdl-1..5, 7, 8)."""
    kind = bundle.get("type")
    problems: list[str] = []
    if "total" in bundle and kind not in ("searchset", "history"):
        problems.append("bdl-1: total only in a searchset or history Bundle")
    urls: set[str] = set()
    for i, entry in enumerate(bundle.get("entry", ())):
        at = f"Bundle.entry[{i}]"
        if "search" in entry and kind != "searchset":
            problems.append(f"bdl-2: {at}.search only in a searchset")
        if ("request" in entry) != (kind in _REQUEST_BUNDLES):
            problems.append(f"bdl-3: {at}.request {'missing' if kind in _REQUEST_BUNDLES else 'not allowed'}")
        if ("response" in entry) != (kind in _RESPONSE_BUNDLES):
            problems.append(
                f"bdl-4: {at}.response {'missing' if kind in _RESPONSE_BUNDLES else 'not allowed'}"
            )
        if not {"resource", "request", "response"} & set(entry):
            problems.append(f"bdl-5: {at} has no resource, request or response")
        url = entry.get("fullUrl")
        if isinstance(url, str):
            if "/_history/" in url:
                problems.append(f"bdl-8: {at}.fullUrl is version-specific")
            version = (entry.get("resource") or {}).get("meta", {}).get("versionId")
            key = f"{url}|{version}"
            if kind != "history" and key in urls:
                problems.append(f"bdl-7: {at}.fullUrl repeats")
            urls.add(key)
        if isinstance(entry.get("resource"), dict) and entry["resource"].get("resourceType") == "Bundle":
            problems += bundle_problems(entry["resource"])
    return problems


def fhir_problems(body: Any) -> list[str]:
    """Everything wrong with ``body`` as an R4 resource, by all three checks (empty when valid)."""
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        return ["not a FHIR resource (no resourceType)"]
    problems = json_problems(body)
    if body["resourceType"] == "Bundle":
        problems += bundle_problems(body)
    try:
        get_fhir_model_class(body["resourceType"]).model_validate(body)
    except Exception as exc:  # pydantic's ValidationError, or an unknown resource type (KeyError)
        problems.append(f"fhir.resources (R4B): {str(exc)[:2000]}")
    answer = _validator().validate(body)
    problems += [
        f"FHIR.js {m.get('severity')}: {m.get('location', '')} {m.get('message')}"
        for m in answer.get("messages", ())
        # Errors, and unknown elements; not warnings about codes of systems FHIR.js does not ship
        # (LOINC, SNOMED CT: example/preferred bindings, which R4 does not require).
        if m.get("severity") == "error" or "Unexpected property" in str(m.get("message"))
    ]
    return problems


def assert_valid_fhir(body: Any) -> None:
    """Fail the calling test with every problem found in ``body`` (see the module docstring)."""
    problems = fhir_problems(body)
    assert not problems, "invalid FHIR R4 JSON:\n" + "\n".join(problems)
