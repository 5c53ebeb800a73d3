"""The closed vocabulary of the audit log: what happened (``AuditAction``) and how it ended (``Outcome``).

Every AuditEvent the API records names one ``AuditAction``; nothing else can be recorded, so the log
control and the patient's access log can rely on the full list (style.md §8, as in pypi/warehouse
``events/tags.py``). Add a member here, with its FHIR interaction in ``INTERACTIONS``, when the API grows.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "EMERGENCY_PURPOSES",
    "PURPOSES_OF_USE",
    "READ_ACTIONS",
    "AuditAction",
    "Interaction",
    "Outcome",
    "interaction_of",
]


class AuditAction(StrEnum):
    """What a caller did or tried to do. The value is stored in the ``action`` column of the log."""

    OBSERVATION_READ = "observation.read"
    OBSERVATION_SEARCH = "observation.search"
    OBSERVATION_LASTN = "observation.lastn"
    OBSERVATION_HISTORY = "observation.history"
    OBSERVATION_CREATE = "observation.create"
    OBSERVATION_UPDATE = "observation.update"
    BUNDLE_BATCH = "bundle.batch"
    BUNDLE_TRANSACTION = "bundle.transaction"
    CONSENT_CREATE = "consent.create"
    CONSENT_UPDATE = "consent.update"
    CONSENT_READ = "consent.read"
    CONSENT_SEARCH = "consent.search"
    AGREEMENT_CHANGE = "agreement.change"
    TOKEN_ISSUE = "token.issue"  # noqa: S105 (an action name, not a secret)
    TOKEN_REFUSED = "token.refused"  # noqa: S105 (an action name, not a secret)
    REQUEST_REFUSED = "request.refused"
    """An authentication or authorisation failure before any resource was touched (security-tests.md)."""
    ACCESS_DECISION = "access.decision"
    """A separate BALP AuthZconsent record of a sharing decision. No longer written: the decision is an
    entity of its request's own event (one event per request); kept so that older logs still read."""
    AUDIT_SEARCH = "audit.search"
    AUDIT_EXPORT = "audit.export"
    AUDIT_TRIAGE = "audit.triage"
    """An auditor's triage of a log-control rule hit in the console (explained, escalated, reopened)."""
    CONSOLE_LOGIN = "console.login"
    """An auditor's login to the console: accepted, refused (wrong password) or locked (too many)."""
    PATIENT_ACCESS_LOG = "patient.access-log"
    PATIENT_MATCH = "patient.match"
    """``Patient/$match`` or ``Patient/_search``: an opaque id handed out for the attested patient."""
    OBSERVATION_EVALUATE = "observation.evaluate"
    """``Observation/$evaluate``: the latest measurements against the patient's plan (issue 11)."""
    CAREPLAN_CREATE = "careplan.create"
    CAREPLAN_UPDATE = "careplan.update"
    CAREPLAN_READ = "careplan.read"
    CAREPLAN_HISTORY = "careplan.history"
    CAREPLAN_SEARCH = "careplan.search"
    GOAL_CREATE = "goal.create"
    GOAL_UPDATE = "goal.update"
    GOAL_READ = "goal.read"
    GOAL_HISTORY = "goal.history"


class Outcome(StrEnum):
    """``AuditEvent.outcome`` (FHIR R4, value set ``audit-event-outcome``)."""

    SUCCESS = "0"
    MINOR_FAILURE = "4"
    """The action failed for a reason such as a refusal or bad input (HTTP 4xx)."""
    SERIOUS_FAILURE = "8"
    """The action failed inside the server (HTTP 5xx)."""
    MAJOR_FAILURE = "12"
    """The action was terminated, e.g. the server could not go on."""

    @property
    def display(self) -> str:
        return _OUTCOME_DISPLAY[self]


_OUTCOME_DISPLAY = {
    Outcome.SUCCESS: "Success",
    Outcome.MINOR_FAILURE: "Minor failure",
    Outcome.SERIOUS_FAILURE: "Serious failure",
    Outcome.MAJOR_FAILURE: "Major failure",
}

PURPOSES_OF_USE = {
    "TREAT": "treatment",
    "ETREAT": "Emergency Treatment",
    "COC": "coordination of care",
    "BTG": "break the glass",
}
"""The HL7 v3 PurposeOfUse codes the trust framework allows, with their v3-ActReason displays (domain.md)."""

EMERGENCY_PURPOSES = frozenset({"ETREAT", "BTG"})
"""Purposes that are always flagged in log control (domain.md, sharing policy)."""


class Interaction(StrEnum):
    """How an action is shaped as an AuditEvent: the IHE BALP pattern it follows."""

    READ = "read"  # BALP PatientRead: type rest, action R
    QUERY = "query"  # BALP PatientQuery: type rest, action E, raw query in entity.query
    CREATE = "create"  # BALP PatientCreate: type rest, action C
    UPDATE = "update"  # BALP PatientUpdate: type rest, action U
    BATCH = "batch"  # FHIR batch/transaction: type rest, action E
    SECURITY = "security"  # token issue and refusals: DICOM User Authentication / Security Alert


INTERACTIONS: dict[AuditAction, tuple[Interaction, str]] = {
    AuditAction.OBSERVATION_READ: (Interaction.READ, "read"),
    AuditAction.OBSERVATION_HISTORY: (Interaction.READ, "history-instance"),
    AuditAction.OBSERVATION_SEARCH: (Interaction.QUERY, "search-type"),
    AuditAction.OBSERVATION_LASTN: (Interaction.QUERY, "operation"),
    AuditAction.OBSERVATION_CREATE: (Interaction.CREATE, "create"),
    AuditAction.OBSERVATION_UPDATE: (Interaction.UPDATE, "update"),
    AuditAction.BUNDLE_BATCH: (Interaction.BATCH, "batch"),
    AuditAction.BUNDLE_TRANSACTION: (Interaction.BATCH, "transaction"),
    AuditAction.CONSENT_CREATE: (Interaction.CREATE, "create"),
    AuditAction.CONSENT_UPDATE: (Interaction.UPDATE, "update"),
    AuditAction.CONSENT_READ: (Interaction.READ, "read"),
    AuditAction.CONSENT_SEARCH: (Interaction.QUERY, "search-type"),
    AuditAction.AGREEMENT_CHANGE: (Interaction.UPDATE, "update"),
    AuditAction.TOKEN_ISSUE: (Interaction.SECURITY, "110114"),  # DICOM "User Authentication"
    AuditAction.TOKEN_REFUSED: (Interaction.SECURITY, "110114"),
    AuditAction.REQUEST_REFUSED: (Interaction.SECURITY, "110113"),  # DICOM "Security Alert"
    AuditAction.ACCESS_DECISION: (Interaction.SECURITY, "110113"),
    AuditAction.AUDIT_SEARCH: (Interaction.QUERY, "search-type"),
    AuditAction.AUDIT_EXPORT: (Interaction.QUERY, "operation"),
    AuditAction.AUDIT_TRIAGE: (Interaction.UPDATE, "update"),
    AuditAction.CONSOLE_LOGIN: (Interaction.SECURITY, "110114"),  # DICOM "User Authentication"
    AuditAction.PATIENT_ACCESS_LOG: (Interaction.QUERY, "search-type"),
    AuditAction.PATIENT_MATCH: (Interaction.QUERY, "operation"),
    AuditAction.OBSERVATION_EVALUATE: (Interaction.QUERY, "operation"),
    AuditAction.CAREPLAN_CREATE: (Interaction.CREATE, "create"),
    AuditAction.CAREPLAN_UPDATE: (Interaction.UPDATE, "update"),
    AuditAction.CAREPLAN_READ: (Interaction.READ, "read"),
    AuditAction.CAREPLAN_HISTORY: (Interaction.READ, "history-instance"),
    AuditAction.CAREPLAN_SEARCH: (Interaction.QUERY, "search-type"),
    AuditAction.GOAL_CREATE: (Interaction.CREATE, "create"),
    AuditAction.GOAL_UPDATE: (Interaction.UPDATE, "update"),
    AuditAction.GOAL_READ: (Interaction.READ, "read"),
    AuditAction.GOAL_HISTORY: (Interaction.READ, "history-instance"),
}
"""Each action's BALP pattern and its FHIR ``restful-interaction`` code; for ``SECURITY`` the DICOM code of
``AuditEvent.type`` (110114 User Authentication, 110113 Security Alert)."""

READ_ACTIONS = frozenset(
    {
        AuditAction.OBSERVATION_READ,
        AuditAction.OBSERVATION_SEARCH,
        AuditAction.OBSERVATION_LASTN,
        AuditAction.OBSERVATION_HISTORY,
        AuditAction.OBSERVATION_EVALUATE,
        AuditAction.CAREPLAN_READ,
        AuditAction.CAREPLAN_HISTORY,
        AuditAction.CAREPLAN_SEARCH,
        AuditAction.GOAL_READ,
        AuditAction.GOAL_HISTORY,
    }
)
"""Actions that read another controller's patient data (measurements and plans): what log control checks
against agreements (a plan read is recorded with its data category ``plan``)."""


def interaction_of(action: AuditAction) -> tuple[Interaction, str]:
    """The BALP pattern and interaction code of ``action``."""
    return INTERACTIONS[action]
