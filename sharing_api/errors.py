"""Errors of the FHIR API, each knowing its wire form: an ``OperationOutcome`` and an HTTP status.

::

    FhirError                      (500 exception)
    ├── InvalidResource            (400 invalid)       bad content; names the element in ``expression``
    ├── UnprocessableResource      (422 processing)    valid FHIR that breaks a business rule
    ├── InvalidSearch              (400 invalid)       bad search parameter or cursor
    ├── PiiInUrl                   (400 security)      a national identity number in a GET URL
    ├── SecurityLabelRefused       (400 security)      a client-sent meta.security / server-owned tag
    ├── NotAcceptable              (406 not-supported) a format or FHIR version we do not serve
    ├── Forbidden                  (403 forbidden)
    ├── NotFound                   (404 not-found)
    ├── Gone                       (410 deleted)
    ├── Conflict                   (409 conflict)
    ├── PreconditionFailed         (412 duplicate)
    ├── PreconditionRequired       (428 required)      an update that must say which version it changes
    ├── PayloadTooLarge            (413 too-costly)
    ├── UnsupportedMediaType       (415 not-supported)
    ├── MethodNotAllowed           (405 not-supported)
    ├── ServiceUnavailable         (503 transient)     a dependency is down; fail closed
    └── AccessRefused              (401/403/429/503)   authentication/authorisation, with challenge headers
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class Issue:
    """One ``OperationOutcome.issue``: what is wrong and where (a FHIRPath ``expression``)."""

    diagnostics: str
    expression: str | None = None
    code: str = "invalid"
    severity: str = "error"

    def rebased(self, path: str) -> Issue:
        """This issue with an ``Observation...`` expression moved under ``path`` (a Bundle entry)."""
        if self.expression is None or not self.expression.startswith("Observation"):
            return self
        return Issue(self.diagnostics, path + self.expression[len("Observation") :], self.code, self.severity)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = [self.expression]
        return out


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    """An ``OperationOutcome`` resource holding ``issues``."""
    return {"resourceType": "OperationOutcome", "issue": [i.as_json() for i in issues]}


class FhirError(Exception):
    """Base of every error the API turns into an ``OperationOutcome``."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "exception"
    audited: ClassVar[bool] = False
    """Recorded in the tenant's audit log as a refused request (an attempt worth an auditor's eye)."""

    def __init__(self, diagnostics: str, expression: str | None = None, *, issues: list[Issue] | None = None):
        super().__init__(diagnostics)
        self.issues = issues or [Issue(diagnostics, expression, self.code)]
        self.headers: dict[str, str] = {}

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


class InvalidResource(FhirError):
    status = 400
    code = "invalid"


class UnprocessableResource(FhirError):
    status = 422
    code = "processing"


class InvalidSearch(FhirError):
    status = 400
    code = "invalid"


class PiiInUrl(FhirError):
    status = 400
    code = "security"


class SecurityLabelRefused(FhirError):
    """A client tried to set what only the server sets (security labels); audited as a refusal."""

    status = 400
    code = "security"
    audited = True


class NotAcceptable(FhirError):
    status = 406
    code = "not-supported"


class Forbidden(FhirError):
    status = 403
    code = "forbidden"


class NotFound(FhirError):
    status = 404
    code = "not-found"


class Gone(FhirError):
    status = 410
    code = "deleted"


class Conflict(FhirError):
    status = 409
    code = "conflict"


class PreconditionFailed(FhirError):
    status = 412
    code = "duplicate"


class PreconditionRequired(FhirError):
    """RFC 6585 §3: the update must be conditional (``If-Match``), so that no change is lost unseen."""

    status = 428
    code = "required"


class PayloadTooLarge(FhirError):
    status = 413
    code = "too-costly"


class UnsupportedMediaType(FhirError):
    status = 415
    code = "not-supported"


class MethodNotAllowed(FhirError):
    status = 405
    code = "not-supported"


class ServiceUnavailable(FhirError):
    status = 503
    code = "transient"


class AccessRefused(FhirError):
    """An authentication or authorisation failure from ``auth``, with its status and challenge headers."""

    def __init__(self, diagnostics: str, *, status: int, headers: dict[str, str]):
        code = {401: "login", 403: "forbidden", 429: "throttled", 503: "transient"}.get(status, "security")
        super().__init__(diagnostics, issues=[Issue(diagnostics, None, code)])
        self.status = status  # type: ignore[misc]
        self.headers = headers
